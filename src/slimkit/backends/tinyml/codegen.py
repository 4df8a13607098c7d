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


def _constants(k: int, op: Op) -> tuple[str, dict[str, str]]:
    """The op's constant arrays as C definitions and their names."""
    out, names = [], {}
    for key, ctype in (("weight", "int8_t"), ("bias", "int32_t"), ("multiplier", "int32_t"), ("shift", "int32_t")):
        value = op.attrs.get(key)
        if isinstance(value, np.ndarray):
            names[key] = f"op{k}_{key}"
            out.append(_array(ctype, names[key], value))
    return "".join(out), names


def _call(k: int, op: Op, graph: IntGraph, plan: MemoryPlan, names: dict[str, str]) -> str:
    ts, a = graph.tensors, op.attrs
    t_in, t_out = ts[op.inputs[0]], ts[op.output]
    src, dst = f"A + {plan.offsets[op.inputs[0]]}", f"A + {plan.offsets[op.output]}"
    clamp = f"{_int(a.get('act_min', -128))}, {_int(a.get('act_max', 127))}"
    if op.kind == "conv":
        c, h, w = a["in_shape"]
        _, ho, wo = t_out.shape
        geometry = (f"{a['weight'].shape[2]}, {a['weight'].shape[3]}, {a['stride'][0]}, {a['stride'][1]}, "
                    f"{a['padding'][0]}, {a['padding'][1]}, {a['dilation'][0]}, {a['dilation'][1]}")
        consts = f"{names['weight']}, {names['bias']}, {names['multiplier']}, {names['shift']}"
        if k in plan.temporaries:
            return (f"sk_depthwise_in_place({src}, {c}, {h}, {w}, {t_in.zero_point}, {consts}, "
                    f"A + {plan.offsets[plan.temporaries[k]]}, {ho}, {wo}, {geometry}, {t_out.zero_point}, {clamp});")
        return (f"sk_conv2d({src}, {c}, {h}, {w}, {t_in.zero_point}, {consts}, {dst}, {int(t_out.dtype == 'int32')}, "
                f"{t_out.shape[0]}, {ho}, {wo}, {geometry}, {a['groups']}, {t_out.zero_point}, {clamp});")
    if op.kind == "linear":
        n_out, n_in = a["weight"].shape
        consts = f"{names['weight']}, {names['bias']}, {names['multiplier']}, {names['shift']}"
        return (f"sk_conv2d({src}, {n_in}, 1, 1, {t_in.zero_point}, {consts}, {dst}, {int(t_out.dtype == 'int32')}, "
                f"{n_out}, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, {t_out.zero_point}, {clamp});")
    if op.kind == "maxpool":
        c, h, w = a["in_shape"]
        return (f"sk_maxpool2d({src}, {c}, {h}, {w}, {dst}, {t_out.shape[1]}, {t_out.shape[2]}, {a['kernel'][0]}, "
                f"{a['kernel'][1]}, {a['stride'][0]}, {a['stride'][1]}, {a['padding'][0]}, {a['padding'][1]});")
    if op.kind == "avgpool":
        c, h, w = a["in_shape"]
        ho, wo = (t_out.shape[1], t_out.shape[2]) if len(t_out.shape) == 3 else (1, 1)
        return (f"sk_avgpool2d({src}, {c}, {h}, {w}, {t_in.zero_point}, {dst}, {ho}, {wo}, {a['kernel'][0]}, "
                f"{a['kernel'][1]}, {a['stride'][0]}, {a['stride'][1]}, {a['multiplier']}, {a['shift']}, "
                f"{t_out.zero_point});")
    if op.kind == "add":
        t_b = ts[op.inputs[1]]
        return (f"sk_add({src}, {t_in.zero_point}, {a['multiplier_a']}, {a['shift_a']}, A + {plan.offsets[op.inputs[1]]}, "
                f"{t_b.zero_point}, {a['multiplier_b']}, {a['shift_b']}, {dst}, {t_out.numel}, {a['multiplier']}, "
                f"{a['shift']}, {t_out.zero_point}, {clamp});")
    if op.kind == "requantize":
        return (f"sk_requantize_tensor({src}, {t_in.zero_point}, {dst}, {t_out.numel}, {a['multiplier']}, "
                f"{a['shift']}, {t_out.zero_point}, {clamp});")
    if op.kind == "relu":
        return f"sk_clamp_tensor({src}, {dst}, {t_out.numel}, {clamp});"
    raise ValueError(f"no C kernel for op kind {op.kind!r}")


def _kernels_used(graph: IntGraph, plan: MemoryPlan) -> set[str]:
    kinds = {"conv": "CONV", "linear": "CONV", "maxpool": "MAXPOOL", "avgpool": "AVGPOOL", "add": "ADD",
             "requantize": "REQUANTIZE", "relu": "CLAMP"}
    return {"DEPTHWISE_IN_PLACE" if k in plan.temporaries else kinds[op.kind] for k, op in enumerate(graph.ops)}


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
        consts, names = _constants(k, op)
        parts.append(f"/* op {k}: {op.kind} ({op.source}) */\n{consts}")
        calls.append(f"    /* {k}: {op.kind} {op.source} */\n    {_call(k, op, graph, plan, names)}")
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
