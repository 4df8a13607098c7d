"""TinyML: int8 models as generated C, checked bit for bit, with their memory and on-device learning.

    .venv/bin/python benchmarks/tinyml.py [--sections models memory fuzz ondevice] [--threads 1]

- models: the shipped recipes `digits-cnn-tinyml` and `mnist-lenet5-tinyml` (baseline trained
  with the task's settings, static int8 with 8-bit weights, the `tinyml` step): accuracy of the
  float model, of the int8 model in eager PyTorch and of the generated C compiled with the host
  gcc on the whole test split, rows bit-identical to the Python integer reference, MACs, flash
  (the Cortex-M4 object's text + data from arm-none-eabi-gcc -Os, and the constants alone),
  arena (one region per tensor, the greedy plan, the bytes a run touched) and the fit per target.
- memory: zoo MobileNets at 32x32 (small-input layout, random weights, int8 calibrated on
  shapes-cnn rows; memory does not depend on the weights' values): arena bytes with one region
  per tensor, the greedy plan without in-place ops, with them, and with the first layers run patch
  by patch (stage and grid chosen for the smallest arena), each measured as the highest arena byte
  a run of the compiled C changed (a guard zone beyond the plan, two fill patterns), beside the sum
  of the two largest tensors; MACs executed with the patches' recomputed halos; outputs on
  `--memory-rows` test rows bit-identical to the reference in every configuration.
- fuzz: `--fuzz-models` random CNNs (every kernel and option drawn at random, random weights,
  static int8 on random rows), each compiled with AddressSanitizer and UndefinedBehaviorSanitizer
  and run on 64 random rows whole and with its longest patchable stage on a 3x3 grid: rows
  bit-identical to the reference, runs that wrote beyond the plan.
- ondevice: digits-cnn int8 (the recipe's baseline and quantization) moved to MNIST resized to
  8x8 (other writers: a domain shift), `--shots` labelled rows per class drawn per seed, each mode
  of on-device training (TinyTL) for `--od-epochs` epochs of SGD with momentum: SRAM one training
  step needs (counted over the integer graph), trained parameters, MNIST-8x8 test accuracy before
  and after, and digits test accuracy after.
- tflm (run only when named; needs `--tf-python`, a Python with tensorflow and the tflite-micro
  wheel): the shipped recipes' float baselines also converted by TensorFlow's TFLiteConverter (full
  int8, same calibration rows) and run by the TFLite Micro interpreter: accuracy, arena, bytes
  (`benchmarks/tflm_peer.py` is its side).

Host gcc: no speed figures (a microcontroller's would differ by orders of magnitude).
Writes OUT/tinyml_SECTION.md and .json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import run_section_loop, shipped  # noqa: E402


def _toolchain() -> str:
    import subprocess

    from slimkit.backends.tinyml.build import ARM_CC, host_compiler

    def version(cc: str | None) -> str:
        if cc is None:
            return "not installed"
        try:
            return subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "not installed"

    return f"host: {version(host_compiler())}; ARM: {version(ARM_CC)}"


def _run_shipped(name: str, seed: int, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A shipped recipe run with ``seed`` into ``folder``: its results and its steps by technique."""
    from slimkit.recipes.runner import run_recipe

    recipe = shipped(f"{name}.yaml")
    recipe["seed"] = seed
    results = run_recipe(recipe, folder).results
    return results, {s["technique"]: s for s in results["steps"]}


# --- models -------------------------------------------------------------------------------------

def models_section(args, tmp: Path, progress) -> dict[str, Any]:
    rows = {}
    for name in args.recipes:
        progress(f"{name}: running the shipped recipe")
        results, steps = _run_shipped(name, args.seed, tmp / name)
        info = steps["tinyml"]["info"]
        rows[name] = {"task": results["task"], "float_quality": steps["baseline"]["metrics"]["quality"],
                      "int8_quality": steps["quantize"]["metrics"]["quality"], **info}
    return {"rows": rows, "seed": args.seed, "toolchain": _toolchain()}


def render_models(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# TinyML: shipped models as generated C", "", f"`{command}`; {stamp}; {res['toolchain']}.", "",
             "| recipe | float acc. | int8 eager acc. | C acc. | rows bit-exact | MACs | flash (ARM text+data) | "
             "constants | arena | one region per tensor | bytes a run touched | SRAM (arena + I/O) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        flash = f"{r['flash_bytes']:,}" if r["flash_measured"] else "no ARM compiler"
        lines.append(f"| {name} | {r['float_quality']:.4f} | {r['int8_eager_quality']:.4f} | {r['c_quality']:.4f} | "
                     f"{r['bit_exact_rows']} / {r['test_rows']} | {r['macs']:,} | {flash} | "
                     f"{r.get('constant_bytes', 0):,} | {r['arena_bytes']:,} | {r['naive_arena_bytes']:,} | "
                     f"{r['arena_high_water']:,} | {r['sram_bytes']:,} |")
    lines += ["", "Fit per target (SRAM = arena + the caller's input and output buffers; flash = the ARM object):", "",
              "| recipe | " + " | ".join(f["target"] for f in next(iter(res["rows"].values()))["fit"]) + " |",
              "|---|" + "---|" * len(next(iter(res["rows"].values()))["fit"])]
    for name, r in res["rows"].items():
        lines.append(f"| {name} | " + " | ".join("fits" if f["fits"] else f["why"] for f in r["fit"]) + " |")
    lines += ["", "- C accuracy is the compiled C's outputs on the whole test split; every row's outputs equal the "
                  "Python integer reference's bit for bit (a mismatch fails the step).",
              f"- No-float check: {next(iter(res['rows'].values()))['no_float_check']}."]
    return "\n".join(lines) + "\n"


# --- memory -------------------------------------------------------------------------------------

def _compiled_run(graph, codes, folder: Path, in_place: bool = True):
    from slimkit.backends.tinyml import build
    from slimkit.backends.tinyml.codegen import write_sources
    from slimkit.backends.tinyml.planner import plan_memory

    plan = plan_memory(graph, in_place=in_place)
    write_sources(graph, plan, folder, "m")
    ran = build.run_harness(build.compile_harness(folder, "m"), graph, codes, high_water=True)
    return plan, ran


def memory_section(args, tmp: Path, progress) -> dict[str, Any]:
    import numpy as np
    import torch

    from slimkit.backends.tinyml.graph import lower
    from slimkit.backends.tinyml.patch import choose_patching
    from slimkit.backends.tinyml.planner import plan_memory
    from slimkit.backends.tinyml.reference import quantize_input, run_reference
    from slimkit.core.registry import MODELS, load_builtins
    from slimkit.data.shapes import load_shapes_splits
    from slimkit.techniques.quantization.ptq import quantize_static

    load_builtins()
    data = load_shapes_splits()
    calib, test = data.train.inputs[0][:512], data.test.inputs[0][:args.memory_rows]
    rows = {}
    for name in args.memory_models:
        progress(f"{name}: quantizing and planning")
        torch.manual_seed(0)
        net = MODELS.get(name)(num_classes=10, small_input=True).eval()
        q, _ = quantize_static(net, [(calib[i:i + 64],) for i in range(0, len(calib), 64)], weight_max=127)
        graph = lower(q, calib[:1], calibration=calib)
        codes = quantize_input(graph, test)
        reference = run_reference(graph, codes)
        sizes = sorted((t.nbytes for t in graph.tensors.values()), reverse=True)
        row: dict[str, Any] = {"macs": graph.macs(), "naive": plan_memory(graph).naive, "two_largest": sizes[0] + sizes[1]}
        for label, g, in_place in (("greedy", graph, False), ("in_place", graph, True)):
            plan, ran = _compiled_run(g, codes, tmp / name / label, in_place)
            row[label] = {"arena": plan.peak, "high_water": ran.high_water,
                          "bit_exact": bool(np.array_equal(ran.outputs, reference))}
        progress(f"{name}: choosing the patch stage and grid")
        choice = choose_patching(graph)
        if choice is not None:
            plan, ran = _compiled_run(choice.graph, codes, tmp / name / "patched")
            row["patched"] = {"arena": plan.peak, "high_water": ran.high_water, "ops": choice.ops, "grid": choice.grid,
                              "executed_macs": choice.executed_macs, "candidates": len(choice.tried),
                              "bit_exact": bool(np.array_equal(ran.outputs, reference))}
        rows[name] = row
    return {"rows": rows, "test_rows": int(len(test)), "toolchain": _toolchain()}


def render_memory(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# TinyML: peak SRAM of the activation arena", "", f"`{command}`; {stamp}; {res['toolchain']}.", "",
             "Arena bytes (measured: the highest arena byte a run of the compiled C changed, two fill patterns, a "
             "guard zone beyond the plan); MobileNets in the small-input layout at 32x32, batch 1, int8.", "",
             "| model | MACs | one region per tensor | two largest tensors | greedy | + in-place | + patches (stage, grid) "
             "| MACs with patches | arena vs in-place | bit-exact |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        p = r.get("patched")
        exact = all(r[k]["bit_exact"] for k in ("greedy", "in_place")) and (p is None or p["bit_exact"])
        patched = f"{p['high_water']:,} ({p['ops']} ops, {p['grid']}x{p['grid']})" if p else "no gain"
        lines.append(f"| {name} | {r['macs']:,} | {r['naive']:,} | {r['two_largest']:,} | {r['greedy']['high_water']:,} | "
                     f"{r['in_place']['high_water']:,} | {patched} | "
                     + (f"{p['executed_macs']:,} (+{100 * (p['executed_macs'] / r['macs'] - 1):.1f}%) | "
                        f"{r['in_place']['high_water'] / p['high_water']:.2f}x smaller" if p else "— | —")
                     + f" | {'yes' if exact else 'NO'} ({res['test_rows']} rows) |")
    lines += ["", "- greedy: TFLite Micro's rule (largest tensor first, lowest free offset); in-place: ReLU, requantize "
                  "and add over a dying input, depthwise convolution channel by channel through a one-channel "
                  "temporary; patches: MCUNetV2's patch-based inference of the first layers (halos recomputed).",
              "- Planned and measured bytes agree in every row (the high water equals the plan)." if all(
                  r[k]["arena"] == r[k]["high_water"] for r in res["rows"].values() for k in ("greedy", "in_place"))
              else "- Planned and measured bytes differ in some row: see the JSON."]
    return "\n".join(lines) + "\n"


# --- fuzz ---------------------------------------------------------------------------------------

def fuzz_section(args, tmp: Path, progress) -> dict[str, Any]:
    import numpy as np

    from slimkit.backends.tinyml import build
    from slimkit.backends.tinyml.codegen import write_sources
    import torch

    from slimkit.backends.tinyml.fuzz import random_cnn
    from slimkit.backends.tinyml.graph import lower
    from slimkit.backends.tinyml.patch import patch_graph, stage_error
    from slimkit.backends.tinyml.planner import plan_memory
    from slimkit.backends.tinyml.reference import quantize_input, run_reference
    from slimkit.techniques.quantization.ptq import quantize_static

    counts = {"models": 0, "exact": 0, "patched": 0, "patched_exact": 0, "overruns": 0}
    kinds: dict[str, int] = {}
    failures = []
    for seed in range(args.fuzz_models):
        if seed % 20 == 0:
            progress(f"fuzz: model {seed} of {args.fuzz_models}")
        net, shape = random_cnn(seed)
        x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(seed))
        q = quantize_static(net, [(x[i:i + 16],) for i in range(0, 64, 16)])[0].eval()
        graph = lower(q, x[:1], calibration=x)
        for op in graph.ops:
            k = op.kind + ("-depthwise" if op.kind == "conv" and op.attrs["groups"] == op.attrs["in_shape"][0] > 1 else "")
            kinds[k] = kinds.get(k, 0) + 1
        codes = quantize_input(graph, x)
        reference = run_reference(graph, codes)
        variants = [("whole", graph)]
        stages = [n for n in range(1, len(graph.ops)) if not stage_error(graph, n)]
        if stages:
            variants.append(("patched", patch_graph(graph, stages[-1], 3)))
        for label, g in variants:
            plan = plan_memory(g)
            folder = tmp / f"{seed}-{label}"
            write_sources(g, plan, folder, "m")
            ran = build.run_harness(build.compile_harness(folder, "m", sanitize=True), g, codes, high_water=True)
            exact = bool(np.array_equal(ran.outputs, reference))
            counts["models" if label == "whole" else "patched"] += 1
            counts["exact" if label == "whole" else "patched_exact"] += exact
            counts["overruns"] += ran.high_water > plan.peak
            if not exact:
                failures.append({"seed": seed, "variant": label})
    return {**counts, "kinds": kinds, "failures": failures, "rows": 64, "toolchain": _toolchain()}


def render_fuzz(res: dict[str, Any], command: str, stamp: str) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(res["kinds"].items()))
    return "\n".join([
        "# TinyML: fuzzed random CNNs, bit-exact", "", f"`{command}`; {stamp}; {res['toolchain']}.", "",
        "| variant | models | bit-exact on all rows | runs past the planned arena |", "|---|---|---|---|",
        f"| whole maps | {res['models']} | {res['exact']} | — |",
        f"| longest patchable stage, 3x3 tiles | {res['patched']} | {res['patched_exact']} | — |",
        f"| (either) | | | {res['overruns']} |", "",
        f"- {res['rows']} random rows per model; every harness built with -fsanitize=address,undefined "
        f"-fno-sanitize-recover=all (an out-of-bounds access or signed overflow aborts the run).",
        f"- Ops generated: {kinds}.",
        f"- Failures: {res['failures'] or 'none'}.", ""])


# --- ondevice -----------------------------------------------------------------------------------

def ondevice_section(args, tmp: Path, progress) -> dict[str, Any]:
    import torch

    from slimkit.api.verbs import user_context
    from slimkit.backends.tinyml.graph import lower
    from slimkit.backends.tinyml.ondevice import MODES, train_on_device, training_memory
    from slimkit.data.mnist import load_mnist_as_digits
    from slimkit.recipes.runner import run_recipe
    from slimkit.tasks import build_task
    from slimkit.train.config import TrainConfig

    from slimkit.core.step import rebuild_model
    from slimkit.core.io import read_json

    progress("digits-cnn: the shipped recipe's baseline and int8 model")
    recipe = shipped("digits-cnn-tinyml.yaml")
    recipe["steps"] = recipe["steps"][:1]
    run_dir = tmp / "digits"
    run_recipe(recipe, run_dir)
    task = build_task("digits-cnn")
    state = read_json(run_dir / "run-state.json")
    q = rebuild_model(task.build_model, [(r["technique"], r.get("structure")) for r in state["steps"]],
                      str(run_dir / state["steps"][-1]["artifact"])).eval()
    mnist = load_mnist_as_digits()

    def accuracy(model, split):
        with torch.no_grad():
            return float((model(split.inputs[0]).argmax(1) == split.targets).float().mean())

    graph = lower(q, task.data.test.inputs[0][:1])
    cfg = TrainConfig(epochs=args.od_epochs, batch_size=8, lr=args.od_lr, optimizer="sgd", momentum=0.9,
                      keep_best=False)
    memory = {m: training_memory(graph, q, m, "sgd-momentum").to_dict() for m in MODES}
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        few = torch.cat([torch.nonzero(mnist.train.targets == c).flatten()[
            torch.randperm(int((mnist.train.targets == c).sum()), generator=g)[:args.shots]] for c in range(10)])
        data = [(mnist.train.inputs[0][few], mnist.train.targets[few])]
        for mode in MODES:
            progress(f"seed {seed}: on-device training, {mode}")
            tuned = copy.deepcopy(q)
            started = time.perf_counter()
            train_on_device(tuned, user_context(tuned, data, seed=seed), mode, cfg)
            runs[mode].append({"mnist8": accuracy(tuned, mnist.test), "digits": accuracy(tuned, task.data.test),
                               "seconds": time.perf_counter() - started})
    return {"memory": memory, "runs": runs, "before": {"mnist8": accuracy(q, mnist.test),
                                                       "digits": accuracy(q, task.data.test)},
            "shots": args.shots, "epochs": args.od_epochs, "lr": args.od_lr, "seeds": args.seeds,
            "arena": memory["bias"]["arena_bytes"]}


def render_ondevice(res: dict[str, Any], command: str, stamp: str) -> str:
    def ms(values: list[float]) -> str:
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"

    lines = ["# TinyML: on-device learning (TinyTL) on a shifted domain", "", f"`{command}`; {stamp}.", "",
             f"digits-cnn int8 (trained on scikit-learn's digits) adapted to MNIST resized to 8x8 with {res['shots']} "
             f"labelled rows per class (drawn per seed, seeds {', '.join(map(str, res['seeds']))}), {res['epochs']} "
             f"epochs of SGD (momentum 0.9, lr {res['lr']}, batch 8); accuracy on the MNIST-8x8 test rows (mean ± sd "
             f"over seeds) and on digits' test rows after.", "",
             "| trained | parameters | SRAM per step (B) | kept for backward | float32 gradients peak | parameter state | "
             "MNIST-8x8 acc. | digits acc. after |", "|---|---|---|---|---|---|---|---|",
             f"| nothing (the int8 model) | 0 | {res['arena']:,} (inference arena) | — | — | — | "
             f"{res['before']['mnist8']:.4f} | {res['before']['digits']:.4f} |"]
    for mode, m in res["memory"].items():
        runs = res["runs"][mode]
        lines.append(f"| {mode} | {m['trained_params']:,} | {m['total_bytes']:,} | {m['saved_bytes']:,} | "
                     f"{m['gradient_bytes']:,} | {m['param_bytes']:,} | {ms([r['mnist8'] for r in runs])} | "
                     f"{ms([r['digits'] for r in runs])} |")
    lines += ["", "- SRAM per step: trained parameters' float32 masters, gradients and momentum, plus the larger of "
                  "(inference arena + what the forward pass keeps) and (what it keeps + float32 activation gradients "
                  "live during the backward pass); frozen int8 weights stay in flash. Counted over the integer graph "
                  "the C runs, batch 1.", ""]
    return "\n".join(lines)


# --- tflm (peer) --------------------------------------------------------------------------------

def _plain_layers(model) -> list[dict[str, Any]]:
    """A fused Sequential CNN as plain layers for the Keras replica (PyTorch layouts)."""
    import torch.nn as nn

    from slimkit.techniques.fusion.fuse import FusedConvAct, FusedLinearAct

    def leaves(module):  # forward order of a Sequential CNN, fused layer-activation pairs kept whole
        for child in module.children():
            if isinstance(child, (FusedConvAct, FusedLinearAct)) or not list(child.children()):
                yield child
            else:
                yield from leaves(child)

    layers = []
    for m in leaves(model):
        act = None
        if isinstance(m, (FusedConvAct, FusedLinearAct)):
            act, m = m.activation, getattr(m, m.layer_name)
        if isinstance(m, nn.Conv2d):
            layers.append({"kind": "conv", "weight": m.weight.tolist(), "bias": m.bias.tolist(), "stride": list(m.stride),
                           "padding": list(m.padding), "groups": m.groups, "activation": act})
        elif isinstance(m, nn.Linear):
            layers.append({"kind": "dense", "weight": m.weight.tolist(), "bias": m.bias.tolist(), "activation": act})
        elif isinstance(m, nn.MaxPool2d):
            layers.append({"kind": "maxpool", "kernel": m.kernel_size, "stride": m.stride})
        elif isinstance(m, nn.Flatten):
            layers.append({"kind": "flatten"})
        elif isinstance(m, nn.ReLU) and layers:
            layers[-1]["activation"] = "relu"
        elif not isinstance(m, (nn.Identity, nn.Dropout)):
            raise ValueError(f"tflm: no Keras replica for {type(m).__name__}")
    return layers


def tflm_section(args, tmp: Path, progress) -> dict[str, Any]:
    import subprocess

    import torch

    from slimkit.core.io import load_state_dict
    from slimkit.data.batches import calibration_batches
    from slimkit.tasks import build_task
    from slimkit.techniques.fusion.fuse import fuse_model

    if not Path(args.tf_python).exists():
        return {"skipped": f"no Python with TensorFlow and tflite-micro at {args.tf_python}", "rows": {}}
    rows = {}
    for name in args.recipes:
        progress(f"{name}: slimkit's recipe")
        results, steps = _run_shipped(name, args.seed, tmp / name)
        info = steps["tinyml"]["info"]
        task = build_task(results["task"])
        model = task.build_model()
        model.load_state_dict(load_state_dict(tmp / name / "steps" / "00-baseline" / "model.safetensors"))
        fused = fuse_model(model.eval())[0]
        q_cfg = shipped(f"{name}.yaml")["steps"][0]["quantize"]  # the calibration rows slimkit's quantize drew
        calibration = torch.cat([b[0] for b in calibration_batches(task.data.train, q_cfg.get("calibration_samples", 512),
                                                                   64, args.seed)])
        test = task.data.test.inputs[0]
        with torch.no_grad():
            float_out = fused(test)
        spec = {"input_shape": list(test.shape[1:]), "layers": _plain_layers(fused), "calibration": calibration.tolist(),
                "test": test.tolist(), "targets": task.data.test.targets.tolist(), "torch_float_outputs": float_out.tolist()}
        (tmp / f"{name}.json").write_text(json.dumps(spec))
        progress(f"{name}: TensorFlow Lite conversion and TFLite Micro")
        proc = subprocess.run([args.tf_python, str(Path(__file__).parent / "tflm_peer.py"), str(tmp / f"{name}.json"),
                               str(tmp / f"{name}.out.json")], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"tflm_peer.py failed:\n{proc.stderr[-3000:]}")
        rows[name] = {"slimkit": {k: info[k] for k in ("c_quality", "int8_eager_quality", "arena_bytes", "constant_bytes",
                                                       "flash_bytes", "bit_exact_rows", "test_rows")},
                      "float_quality": steps["baseline"]["metrics"]["quality"],
                      "tflm": json.loads((tmp / f"{name}.out.json").read_text())}
    return {"rows": rows, "seed": args.seed, "toolchain": _toolchain()}


def render_tflm(res: dict[str, Any], command: str, stamp: str) -> str:
    if res.get("skipped"):
        return f"# TinyML against TensorFlow Lite Micro\n\nSkipped: {res['skipped']}.\n"
    lines = ["# TinyML against TensorFlow Lite Micro", "", f"`{command}`; {stamp}.", "",
             "The same trained float model (the recipe's baseline, BatchNorm folded), quantized by each tool from the "
             "same 512 calibration rows and run on the whole test split: slimkit's `quantize` + `tinyml` (the "
             "generated C, compiled with the host gcc) against TensorFlow's TFLiteConverter (full int8, per-channel) "
             "run by the TFLite Micro interpreter. Arena: the activation tensors (TFLite Micro: its planner's head; "
             "its total adds the persistent tail of tensor and op structs); model bytes: weights, biases and "
             "requantization constants (slimkit: the constant arrays; TFLite: the .tflite flatbuffer, which adds the "
             "graph).", "",
             "| model | float acc. | slimkit C acc. | TFLite Micro acc. | slimkit arena | TFLM arena head | TFLM arena "
             "total | slimkit constants | .tflite bytes | slimkit flash (Cortex-M4 object) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        s, t = r["slimkit"], r["tflm"]
        lines.append(f"| {name} | {r['float_quality']:.4f} | {s['c_quality']:.4f} | {t['accuracy']:.4f} | "
                     f"{s['arena_bytes']:,} | {t['arena_head']:,} | {t['arena_total']:,} | {s['constant_bytes']:,} | "
                     f"{t['tflite_bytes']:,} | {s['flash_bytes']:,} |")
    first = next(iter(res["rows"].values()))["tflm"]
    lines += ["", f"- TensorFlow {first['tensorflow']}; the Keras replica's float outputs differ from PyTorch's by at most "
                  + ", ".join(f"{r['tflm']['float_max_abs_diff']:.2g} ({n})" for n, r in res["rows"].items()) + ".",
              "- TFLite Micro's interpreter and kernels add their own code to the flash (not measured here: it is "
              "not built for ARM in this benchmark); slimkit's figure is the whole object, code included.", ""]
    return "\n".join(lines)


SECTIONS = {
    "models": lambda a: f"--recipes {' '.join(a.recipes)} --seed {a.seed}",
    "memory": lambda a: f"--memory-models {' '.join(a.memory_models)} --memory-rows {a.memory_rows}",
    "fuzz": lambda a: f"--fuzz-models {a.fuzz_models}",
    "tflm": lambda a: f"--recipes {' '.join(a.recipes)} --seed {a.seed} --tf-python {a.tf_python}",
    "ondevice": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --shots {a.shots} --od-epochs {a.od_epochs} "
                          f"--od-lr {a.od_lr}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=[s for s in SECTIONS if s != "tflm"], choices=list(SECTIONS))
    parser.add_argument("--tf-python", default="/work/tfvenv/bin/python",
                        help="tflm: a Python with tensorflow and tflite-micro installed")
    parser.add_argument("--recipes", nargs="+", default=["digits-cnn-tinyml", "mnist-lenet5-tinyml"])
    parser.add_argument("--seed", type=int, default=0, help="models: the recipes' seed")
    parser.add_argument("--memory-models", nargs="+", default=["mobilenetv2_035", "mobilenetv2_050", "mobilenetv1_025"])
    parser.add_argument("--memory-rows", type=int, default=64)
    parser.add_argument("--fuzz-models", type=int, default=200)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="ondevice: few-shot draws")
    parser.add_argument("--shots", type=int, default=10, help="ondevice: labelled rows per class")
    parser.add_argument("--od-epochs", type=int, default=30)
    parser.add_argument("--od-lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    run_section_loop("tinyml.py", "tinyml", args, SECTIONS, globals())


if __name__ == "__main__":
    main()
