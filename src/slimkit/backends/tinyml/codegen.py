"""C99 source for an ``IntGraph``: weights as ``const`` arrays (flash), one static arena (SRAM)
at the offsets of a ``MemoryPlan``, and one function that runs the kernels in order.

``write_sources(graph, plan, folder, name)`` writes ``<name>.h`` (the API and the input's
quantization), ``<name>.c`` (constants, arena, ``<name>_invoke``) and ``slimkit_kernels.h``; no
malloc, no floating point, no library beyond ``<string.h>``'s memcpy/memmove. ``harness.c``, a
``main`` that streams input rows through the model (and can measure how much of the arena a run
touches), is written beside them for the host tests.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import numpy as np

from slimkit.backends.tinyml.graph import IntGraph, Op
from slimkit.backends.tinyml.planner import MemoryPlan
from slimkit.core.io import atomic_write_text

KERNELS = "slimkit_kernels.h"


def c_identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit():
        ident = f"m_{ident}"
    return ident


def _int(v: int) -> str:
    v = int(v)
    return "(-2147483647 - 1)" if v == -(2 ** 31) else str(v)


def _array(ctype: str, name: str, values: np.ndarray, per_line: int = 24) -> str:
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    lines = [", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(flat)}] = {{\n    {body}\n}};\n"


def _constants(prefix: str, op: Op) -> tuple[str, dict[str, str]]:
    """The op's constant arrays as C definitions and their names."""
    out, names = [], {}
    for key, ctype in (("weight", "int8_t"), ("bias", "int32_t"), ("multiplier", "int32_t"), ("shift", "int32_t")):
        value = op.attrs.get(key)
        if isinstance(value, np.ndarray):
            names[key] = f"{prefix}_{key}"
            out.append(_array(ctype, names[key], value))
    return "".join(out), names


def _window(shape: tuple[int, ...]) -> str:
    """The whole map of a CHW (or flat: 1 x 1) tensor as an ``sk_window`` literal."""
    h, w = (shape[1], shape[2]) if len(shape) == 3 else (1, 1)
    return f"(sk_window){{0, 0, {h}, {w}}}"


def _params(prefix: str, op: Op, graph: IntGraph) -> str:
    """The op's parameter struct (``static const``), named ``<prefix>_p``."""
    ts, a = graph.tensors, op.attrs
    t_in, t_out = ts[op.inputs[0]], ts[op.output]
    if op.kind in ("conv", "linear"):
        if op.kind == "conv":
            c, h, w = a["in_shape"]
            _, kh, kw = a["weight"].shape[1:]
            ho, wo = t_out.shape[1], t_out.shape[2]
            geometry = (a["groups"], kh, kw, *a["stride"], *a["padding"], *a["dilation"], h, w, ho, wo)
        else:
            c = a["weight"].shape[1]
            geometry = (1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1)
        fields = [c, a["weight"].shape[0], *geometry, t_in.zero_point, t_out.zero_point, a["act_min"], a["act_max"]]
        return (f"static const sk_conv_params {prefix}_p = {{{', '.join(_int(v) for v in fields)}, {prefix}_weight, "
                f"{prefix}_bias, {prefix}_multiplier, {prefix}_shift}};\n")
    if op.kind in ("maxpool", "avgpool"):
        c, h, w = a["in_shape"]
        padding = a.get("padding", (0, 0))
        fields = [c, *a["kernel"], *a["stride"], *padding, h, w, t_in.zero_point, a.get("multiplier", 0),
                  a.get("shift", 0), t_out.zero_point]
        return f"static const sk_pool_params {prefix}_p = {{{', '.join(_int(v) for v in fields)}}};\n"
    if op.kind == "add":
        t_b = ts[op.inputs[1]]
        fields = [t_in.zero_point, a["multiplier_a"], a["shift_a"], t_b.zero_point, a["multiplier_b"], a["shift_b"],
                  a["multiplier"], a["shift"], t_out.zero_point, a["act_min"], a["act_max"]]
        return f"static const sk_add_params {prefix}_p = {{{', '.join(_int(v) for v in fields)}}};\n"
    if op.kind in ("relu", "requantize"):
        fields = [t_in.zero_point, a.get("multiplier", 0), a.get("shift", 0), t_out.zero_point, a["act_min"],
                  a["act_max"]]
        return f"static const sk_map_params {prefix}_p = {{{', '.join(_int(v) for v in fields)}}};\n"
    raise ValueError(f"no C kernel for op kind {op.kind!r}")


def _whole_call(k: int, op: Op, graph: IntGraph, plan: MemoryPlan) -> str:
    """The kernel call of a top-level op on whole maps."""
    t_out = graph.tensors[op.output]
    src, dst, p = f"A + {plan.offsets[op.inputs[0]]}", f"A + {plan.offsets[op.output]}", f"&op{k}_p"
    if op.kind in ("conv", "linear"):
        if k in plan.temporaries:
            return f"sk_depthwise_in_place({p}, {src}, A + {plan.offsets[plan.temporaries[k]]});"
        # a linear layer is a 1x1 convolution of its input read as a cin x 1 x 1 map
        in_win, out = (_window(op.attrs["in_shape"]), _window(t_out.shape)) if op.kind == "conv" else (_window(()),) * 2
        return f"sk_conv2d({p}, {src}, {in_win}, {dst}, {int(t_out.dtype == 'int32')}, {out}, {out});"
    if op.kind in ("maxpool", "avgpool"):
        out = _window(t_out.shape)
        return f"sk_{op.kind}2d({p}, {src}, {_window(op.attrs['in_shape'])}, {dst}, {out}, {out});"
    if op.kind == "add":
        return f"sk_add({p}, {src}, A + {plan.offsets[op.inputs[1]]}, {dst}, {t_out.numel});"
    if op.kind in ("relu", "requantize"):
        return f"sk_map({p}, {src}, {dst}, {t_out.numel});"
    raise ValueError(f"no C kernel for op kind {op.kind!r}")


def _stage_code(k: int, op: Op, graph: IntGraph, plan: MemoryPlan) -> tuple[str, str]:
    """A patch stage: its sub-ops' constants and parameters, the per-tile window table, and the
    loop that runs every sub-op tile by tile (intermediates in the stage's scratch, the stage's
    output written window by window into its whole map)."""
    a, ts = op.attrs, graph.tensors
    columns = a["columns"]  # tensor -> column of the window table
    tiles = a["windows"]  # (tiles, columns, 4)
    scratch = plan.offsets[plan.temporaries[k]]
    defs = [f"static const sk_window op{k}_windows[{tiles.shape[0]}][{tiles.shape[1]}] = {{\n"
            + ",\n".join("    {" + ", ".join("{" + ", ".join(map(str, win)) + "}" for win in tile) + "}"
                         for tile in tiles.tolist()) + "\n};\n"]

    def buffer(name: str) -> tuple[str, str]:
        if name == op.inputs[0]:
            return f"A + {plan.offsets[name]}", _window(ts[name].shape)
        if name == op.output:
            return f"A + {plan.offsets[name]}", _window(ts[name].shape)
        return f"A + {scratch + a['scratch_offsets'][name]}", f"w[{columns[name]}]"

    body = []
    for j, sub in enumerate(a["ops"]):
        prefix = f"op{k}_{j}"
        consts, _ = _constants(prefix, sub)
        defs.append(f"/* op {k}.{j}: {sub.kind} ({sub.source}) */\n{consts}{_params(prefix, sub, graph)}")
        (src, src_w), (dst, dst_w) = buffer(sub.inputs[0]), buffer(sub.output)
        win = f"w[{columns[sub.output]}]"
        channels = ts[sub.output].shape[0]
        if sub.kind == "conv":
            call = f"sk_conv2d(&{prefix}_p, {src}, {src_w}, {dst}, 0, {dst_w}, {win});"
        elif sub.kind in ("maxpool", "avgpool"):
            call = f"sk_{sub.kind}2d(&{prefix}_p, {src}, {src_w}, {dst}, {dst_w}, {win});"
        elif sub.kind == "add":
            other, other_w = buffer(sub.inputs[1])
            call = f"sk_add_window(&{prefix}_p, {channels}, {src}, {src_w}, {other}, {other_w}, {dst}, {dst_w}, {win});"
        else:
            call = f"sk_map_window(&{prefix}_p, {channels}, {src}, {src_w}, {dst}, {dst_w}, {win});"
        body.append(f"        {call} /* {sub.kind} {sub.source} */")
    loop = (f"    for (int t = 0; t < {tiles.shape[0]}; ++t) {{\n        const sk_window *w = op{k}_windows[t];\n"
            + "\n".join(body) + "\n    }")
    return "".join(defs), loop


_KERNELS = {"conv": "CONV", "linear": "CONV", "maxpool": "MAXPOOL", "avgpool": "AVGPOOL", "add": "ADD",
            "requantize": "MAP", "relu": "MAP"}


def _kernels_used(graph: IntGraph, plan: MemoryPlan) -> set[str]:
    used = set()
    for k, op in enumerate(graph.ops):
        if op.kind == "patch_stage":
            used |= {_KERNELS[s.kind] + ("_WINDOW" if s.kind in ("add", "relu", "requantize") else "")
                     for s in op.attrs["ops"]}
        else:
            used.add("DEPTHWISE_IN_PLACE" if k in plan.temporaries else _KERNELS[op.kind])
    return used


def output_ctype(graph: IntGraph) -> str:
    return "int32_t" if graph.output_tensor.dtype == "int32" else "int8_t"


def header_source(graph: IntGraph, plan: MemoryPlan, name: str) -> str:
    p, up = name, name.upper()
    t_in, t_out = graph.input_tensor, graph.output_tensor
    return f"""/* {name}: generated by slimkit (int8, C99, no heap, no floating point in the inference path). */
#ifndef {up}_H
#define {up}_H

#include <stdint.h>

#define {up}_INPUT_SHAPE "{'x'.join(map(str, t_in.shape))}"
#define {up}_INPUT_BYTES {t_in.numel}
#define {up}_OUTPUT_LEN {t_out.numel}
#define {up}_ARENA_BYTES {plan.peak}
/* input codes: q = round(x / {up}_INPUT_SCALE) + {up}_INPUT_ZERO_POINT, clamped to [-128, 127]
   (the scale is for the code that prepares inputs; the model itself uses none) */
#define {up}_INPUT_SCALE {t_in.scale!r}f
#define {up}_INPUT_ZERO_POINT {t_in.zero_point}
/* output codes: real value = {up}_OUTPUT_SCALE * (q - {up}_OUTPUT_ZERO_POINT) */
#define {up}_OUTPUT_SCALE {t_out.scale!r}f
#define {up}_OUTPUT_ZERO_POINT {t_out.zero_point}

void {p}_invoke(const int8_t *input, {output_ctype(graph)} *output);
int8_t *{p}_arena(void);

#endif
"""


def model_source(graph: IntGraph, plan: MemoryPlan, name: str) -> str:
    p, up = name, name.upper()
    parts = [f'/* {name}: generated by slimkit; see {name}.h */\n',
             "".join(f"#define SK_WITH_{k}\n" for k in sorted(_kernels_used(graph, plan))),
             f'#include "{KERNELS}"\n#include "{name}.h"\n\n']
    calls = []
    for k, op in enumerate(graph.ops):
        if op.kind == "patch_stage":
            defs, loop = _stage_code(k, op, graph, plan)
            parts.append(defs)
            calls.append(f"    /* {k}: the first {len(op.attrs['ops'])} ops, patch by patch ({op.attrs['grid']}x"
                         f"{op.attrs['grid']} tiles) */\n{loop}")
            continue
        consts, _ = _constants(f"op{k}", op)
        parts.append(f"/* op {k}: {op.kind} ({op.source}) */\n{consts}{_params(f'op{k}', op, graph)}")
        calls.append(f"    /* {k}: {op.kind} {op.source} */\n    {_whole_call(k, op, graph, plan)}")
    t_in, t_out = graph.input_tensor, graph.output_tensor
    parts.append(f"""
#ifndef SLIMKIT_ARENA_EXTRA
#define SLIMKIT_ARENA_EXTRA 0 /* the test harness adds guard bytes to measure what a run touches */
#endif
static int32_t arena_words[({up}_ARENA_BYTES + SLIMKIT_ARENA_EXTRA + 3) / 4];
#define A ((int8_t *)arena_words)

int8_t *{p}_arena(void)
{{
    return A;
}}

void {p}_invoke(const int8_t *input, {output_ctype(graph)} *output)
{{
    memcpy(A + {plan.offsets[graph.input]}, input, {t_in.nbytes});
{chr(10).join(calls)}
    memcpy(output, A + {plan.offsets[graph.output]}, {t_out.nbytes});
}}
""")
    return "".join(parts)


def harness_source(graph: IntGraph, name: str) -> str:
    up = name.upper()
    return f"""/* Host test harness: input rows ({up}_INPUT_BYTES int8 each) on stdin, output rows on stdout.
   With --high-water, each row runs twice over an arena filled with two patterns, and the
   highest arena byte any run changed is reported on stderr. */
#include <stdio.h>
#include <string.h>
#include "{name}.h"

#ifndef SLIMKIT_ARENA_EXTRA
#define SLIMKIT_ARENA_EXTRA 0
#endif

int main(int argc, char **argv)
{{
    static int8_t input[{up}_INPUT_BYTES];
    static {output_ctype(graph)} output[{up}_OUTPUT_LEN];
    const int measure = argc > 1 && strcmp(argv[1], "--high-water") == 0;
    const size_t total = (size_t){up}_ARENA_BYTES + SLIMKIT_ARENA_EXTRA;
    size_t high = 0;
    while (fread(input, 1, sizeof input, stdin) == sizeof input) {{
        if (measure) {{
            const int patterns[2] = {{0xA5, 0x5A}};
            for (int k = 0; k < 2; ++k) {{
                int8_t *arena = {name}_arena();
                memset(arena, patterns[k], total);
                {name}_invoke(input, output);
                for (size_t i = total; i > high; --i) {{
                    if ((unsigned char)arena[i - 1] != (unsigned char)patterns[k]) {{
                        high = i;
                        break;
                    }}
                }}
            }}
        }} else {{
            {name}_invoke(input, output);
        }}
        if (fwrite(output, sizeof output, 1, stdout) != 1) {{
            return 1;
        }}
    }}
    if (measure) {{
        fprintf(stderr, "high_water %lu\\n", (unsigned long)high);
    }}
    return 0;
}}
"""


def write_sources(graph: IntGraph, plan: MemoryPlan, folder: Path, name: str = "slimkit_model") -> list[Path]:
    """Write the model's C sources into ``folder`` (atomically, file by file); their paths,
    the files that ship first (header, source, kernels), the host harness last."""
    name = c_identifier(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kernels = resources.files("slimkit.backends.tinyml").joinpath(KERNELS).read_text()
    files = {f"{name}.h": header_source(graph, plan, name), f"{name}.c": model_source(graph, plan, name),
             KERNELS: kernels, "harness.c": harness_source(graph, name)}
    paths = []
    for filename, text in files.items():
        atomic_write_text(folder / filename, text)
        paths.append(folder / filename)
    return paths
