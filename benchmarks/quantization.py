"""Int8 post-training quantization: slimkit against ONNX Runtime's and OpenVINO/NNCF's own
quantizers, on the same trained model and the same calibration images, in one run.

    .venv/bin/python benchmarks/quantization.py [--tasks digits-cnn mnist-lenet5] [--rounds 3]
                                                [--threads 2] [--repeats 200] [--batch-n 256]

Per task, the baseline is trained with the task's budget and exported once to ONNX (FP32). Then:

- slimkit: the `quantize` step's algorithm (static, min-max, per-channel weights, 512 calibration
  images; embedding tables int8 per row), exported as a QDQ graph, deployed on ONNX Runtime and
  on OpenVINO;
- ONNX Runtime: `quantize_static` on the same FP32 ONNX file (after its `quant_pre_process`), QDQ,
  per-channel int8 weights, uint8 activations, min-max, `reduce_range` on x86 CPUs without VNNI
  (ONNX Runtime's own advice there), run on ONNX Runtime and on OpenVINO;
- token models (MiniLM) also get the dynamic int8 rows: slimkit's `quantize: {method: dynamic}` per
  token, per tensor, and per tensor after SmoothQuant (the `--smoothquant` alpha, calibrated on the
  same examples), and ONNX Runtime's `quantize_dynamic`, on ONNX Runtime;
- NNCF: `nncf.quantize` of the same ONNX file read by OpenVINO (its defaults: performance preset,
  fast bias correction), saved as IR and run on OpenVINO;
- the FP32 model on both runtimes.

The calibration images are the ones the `quantize` step draws (seeded), handed to every quantizer.
Every (artifact, runtime) is timed in a process of its own (this script with `--worker`), the
configurations in a rotated order each round; latency figures are medians over rounds of each
process's median. Quality is each artifact's accuracy on the test split; size is the bytes of the
files that ship. Writes OUT/quantization.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import run_and_write  # noqa: E402

CALIBRATION_SAMPLES, CALIBRATION_BATCH, SEED = 512, 64, 0
RUNTIMES = {"onnxruntime": "ORT", "openvino": "OV"}


# ---------------------------------------------------------------------------------------------
# artifacts


class Artifacts(dict):
    """{"config@runtime": {quantizer, runtime, files, quantize_seconds}}: what gets timed."""

    def add(self, config: str, quantizer: str, files: list[Path], seconds: float | None,
            runtimes: list[str]) -> None:
        for runtime in runtimes:
            self[f"{config}@{runtime}"] = {"quantizer": quantizer, "runtime": runtime,
                                           "files": [str(f) for f in files], "quantize_seconds": seconds}


def fp32_artifacts(task: Any, model: Any, folder: Path) -> tuple[Artifacts, Path]:
    """The FP32 model as eager weights, an ONNX file and OpenVINO IR (the rows every table
    starts with), and the ONNX file's path (what peer quantizers start from)."""
    from slimkit.backends.onnxruntime import export_onnx
    from slimkit.backends.openvino import save_ir
    from slimkit.core.io import save_state_dict

    example = task.data.test.example_inputs(1)
    out = Artifacts()
    out.add("fp32", "none (FP32)", [save_state_dict(folder / "fp32.safetensors", model.state_dict())], None, ["eager"])
    fp32_onnx = export_onnx(model, example, folder / "fp32.onnx")
    out.add("fp32", "none (FP32)", [fp32_onnx], None, ["onnxruntime"])
    out.add("fp32", "none (FP32)", save_ir(model, example, folder / "fp32.xml"), None, ["openvino"])
    return out, fp32_onnx


def build_artifacts(task: Any, model: Any, batches: list, folder: Path,
                    weight_max: int, smoothquant: float | None) -> tuple[dict[str, dict[str, Any]], Any]:
    """Every quantizer's artifact for ``model`` ({"quantizer@runtime": {files, runtime, quantizer,
    quantize_seconds}}) and slimkit's quantized model (its eager fake-quant reference)."""
    from slimkit.backends.onnxruntime import export_onnx
    from slimkit.backends.openvino import save_ir

    example = task.data.test.example_inputs(1)
    out, fp32_onnx = fp32_artifacts(task, model, folder)
    add = out.add

    started = time.perf_counter()
    q = slimkit_quantize(model, batches, weight_max, smoothquant=smoothquant, mask_input=task.data.train.mask_input)
    seconds = time.perf_counter() - started
    label = "slimkit static int8" + (f" + SmoothQuant {smoothquant}" if smoothquant is not None else "")
    add("slimkit", label, [export_onnx(q, example, folder / "slimkit.onnx")], seconds, ["onnxruntime"])
    add("slimkit", label, save_ir(q, example, folder / "slimkit.xml"), seconds, ["openvino"])

    text = is_text(task)
    names = input_names(fp32_onnx)
    if text:  # ONNX Runtime's advice for transformers is dynamic quantization; its static one is run too
        add("ort-dynamic", "ONNX Runtime quantize_dynamic", *ort_quantize_dynamic(fp32_onnx, folder), ["onnxruntime"])
        from slimkit.techniques.quantization.dynamic import quantize_dynamic
        from slimkit.techniques.quantization.step import QuantizeConfig, quantize_embeddings

        variants = [("token", None), ("tensor", None)] + ([("tensor", smoothquant)] if smoothquant is not None else [])
        for granularity, alpha in variants:  # the `quantize` step's method: dynamic (ONNX Runtime only:
            started = time.perf_counter()    # OpenVINO computes MatMulInteger in float)
            dq = quantize_embeddings(quantize_dynamic(model, granularity=granularity, weight_max=weight_max,
                                                      smoothquant=alpha, batches=batches)[0], QuantizeConfig())[0]
            seconds = time.perf_counter() - started
            name = f"slimkit-dynamic-{granularity}" + ("-sq" if alpha is not None else "")
            add(name, f"slimkit dynamic int8, per {granularity}" + (f" + SmoothQuant {alpha}" if alpha else ""),
                [export_onnx(dq, example, folder / f"{name}.onnx")], seconds, ["onnxruntime"])
    add("ort-quantizer", "ONNX Runtime quantize_static",
        *ort_quantize(fp32_onnx, names, batches, folder, weight_max), ["onnxruntime", "openvino"])
    add("nncf", "OpenVINO + NNCF PTQ" + (" (transformer)" if text else ""),
        *nncf_quantize(fp32_onnx, names, batches, folder, text), ["openvino"])
    return out, q


def is_text(task: Any) -> bool:
    from slimkit.backends.base import is_token_input

    return any(is_token_input(t) for t in task.data.test.example_inputs(1))


def input_names(onnx_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def slimkit_quantize(model: Any, batches: list, weight_max: int, bias_correction: bool = True,
                     smoothquant: float | None = None, mask_input: int | None = None) -> Any:
    """What the ``quantize`` step does (static, min-max; ``smoothquant: alpha`` if given; embedding
    tables int8 per row), on ``batches`` (``mask_input``: the split's, as the step passes it)."""
    from slimkit.techniques.quantization.ptq import quantize_static
    from slimkit.techniques.quantization.step import QuantizeConfig, quantize_embeddings

    q = quantize_static(model, batches, weight_max=weight_max, bias_correction=bias_correction,
                        smoothquant=smoothquant, mask_input=mask_input)[0]
    return quantize_embeddings(q, QuantizeConfig())[0]


def ort_quantize(fp32_onnx: Path, names: list[str], batches: list, folder: Path,
                 weight_max: int) -> tuple[list[Path], float]:
    """ONNX Runtime's static quantizer on the FP32 file, calibrated on ``batches``: (files, seconds)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{n: t.numpy() for n, t in zip(names, b)} for b in batches])

        def get_next(self):
            return next(self.items, None)

    pre, path = folder / "ort-pre.onnx", folder / "ort-quantizer.onnx"
    started = time.perf_counter()
    preprocess(fp32_onnx, pre)
    quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=weight_max < 127, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    seconds = time.perf_counter() - started
    pre.unlink()
    return [path], seconds


def preprocess(src: Path, dst: Path) -> None:
    """ONNX Runtime's recommended step before quantizing (shape inference, graph optimisation);
    its symbolic shape inference gives up on the exported MiniLM graph, so that part is skipped
    there (the ONNX shape inference and the optimisation still run)."""
    from onnxruntime.quantization import quant_pre_process

    cwd = os.getcwd()
    os.chdir(dst.parent)  # it leaves temporary files in the working directory
    try:
        quant_pre_process(str(src), str(dst))
    except Exception:  # noqa: BLE001 - "Incomplete symbolic shape inference"
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    finally:
        os.chdir(cwd)


def ort_quantize_dynamic(fp32_onnx: Path, folder: Path) -> tuple[list[Path], float]:
    """ONNX Runtime's dynamic quantizer (int8 weights, activations quantized per call): (files, seconds)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre, path = folder / "ort-pre.onnx", folder / "ort-dynamic.onnx"
    started = time.perf_counter()
    preprocess(fp32_onnx, pre)
    quantize_dynamic(str(pre), str(path), weight_type=QuantType.QInt8)
    seconds = time.perf_counter() - started
    pre.unlink()
    return [path], seconds


def nncf_quantize(fp32_onnx: Path, names: list[str], batches: list, folder: Path,
                  transformer: bool) -> tuple[list[Path], float]:
    """NNCF's post-training quantization of the FP32 file read by OpenVINO, saved as IR: (files, seconds)."""
    import nncf
    import openvino as ov

    samples = [{n: t[i:i + 1].numpy() for n, t in zip(names, b)} for b in batches for i in range(len(b[0]))]
    started = time.perf_counter()
    quantized = nncf.quantize(ov.Core().read_model(str(fp32_onnx)), nncf.Dataset(samples), subset_size=len(samples),
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    xml = folder / "nncf.xml"
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")], time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# one (artifact, runtime) in its own process


def worker(job_path: str) -> None:
    """Load the artifact on its runtime, time batch 1 and batch N, predict the test split."""
    import torch

    from slimkit.backends.onnxruntime import load_onnx
    from slimkit.backends.openvino import load_ir
    from slimkit.core.io import load_state_dict, save_state_dict
    from slimkit.measure.latency import measure_latency, torch_threads
    from slimkit.measure.quality import predict
    from slimkit.tasks.base import build_task, parse_task_config

    job = json.loads(Path(job_path).read_text())
    task = build_task(parse_task_config(job["task"], "benchmark task"))
    test = task.data.test
    files = [Path(f) for f in job["files"]]
    with torch_threads(job["threads"]), torch.no_grad():
        if job["runtime"] == "eager":
            model = task.build_model().eval()
            model.load_state_dict(load_state_dict(files[0]))
            run, info = model, {"torch": torch.__version__}
        else:
            built = (load_onnx(files[0], threads=job["threads"]) if job["runtime"] == "onnxruntime"
                     else load_ir(files, precision="fp32", threads=job["threads"]))
            run, info = built.run, built.info
        timing = dict(warmup=20, repeats=job["repeats"], threads=job["threads"], max_seconds=job["max_seconds"])
        result = {"b1": measure_latency(run, batch_one(test, job["tokens"]), **timing).to_dict(),
                  "bN": measure_latency(run, test.example_inputs(job["batch_n"]), **timing).to_dict(),
                  "info": info}
        if job.get("outputs"):
            save_state_dict(job["outputs"], {"outputs": predict(run, test, 128).contiguous()})
    Path(job["result"]).write_text(json.dumps(result))


def batch_one(test: Any, tokens: int) -> tuple:
    """The batch-1 input: the first test example; for token inputs, its real tokens repeated to
    ``tokens`` positions with a full attention mask (a sentence of that length)."""
    import torch

    from slimkit.backends.base import is_token_input

    example = test.example_inputs(1)
    if not any(is_token_input(t) for t in example):
        return example
    ids, mask = example
    real = ids[0, : int(mask[0].sum())]
    ids = real.repeat(tokens // len(real) + 1)[:tokens].unsqueeze(0)
    return ids, torch.ones_like(ids)


def run_worker(job: dict[str, Any], folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    job = {**job, "result": str(folder / "result.json")}
    (folder / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "MKL_NUM_THREADS": str(job["threads"])}
    proc = subprocess.run([sys.executable, __file__, "--worker", str(folder / "job.json")], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise SystemExit(f"worker for {folder.name} failed ({proc.returncode}): {tail}")
    return json.loads((folder / "result.json").read_text())


# ---------------------------------------------------------------------------------------------
# one task


def measure_task(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import torch

    from slimkit.measure.config import MeasureConfig
    from slimkit.measure.quality import predict
    from slimkit.recipes.measure_task import baseline_for
    from slimkit.techniques.quantization.modules import default_weight_max
    from slimkit.data.batches import calibration_batches

    cfg = MeasureConfig(threads=args.threads, memory=False)
    task, recipe, model = baseline_for(name, cfg, progress=sys.stderr.isatty())
    model.eval()
    weight_max = {"int8": 127, "int7": 63}.get(args.weight_range) or default_weight_max()
    batches = calibration_batches(task.data.train, CALIBRATION_SAMPLES, CALIBRATION_BATCH, SEED)
    smoothquant = args.smoothquant if is_text(task) else None
    artifacts, q = build_artifacts(task, model, batches, folder, weight_max, smoothquant)
    test = task.data.test
    with torch.no_grad():
        reference = predict(model, test, 256)
        with_bc = predict(q, test, 256)
        without_bc = predict(slimkit_quantize(model, batches, weight_max, bias_correction=False,
                                              smoothquant=smoothquant, mask_input=task.data.train.mask_input),
                             test, 256)
    eager = {"quality": task.evaluate(with_bc, test.targets)["quality"],
             "quality_no_bias_correction": task.evaluate(without_bc, test.targets)["quality"],
             "logit_mse": float(((with_bc - reference) ** 2).mean()),
             "logit_mse_no_bias_correction": float(((without_bc - reference) ** 2).mean())}
    base = {"task": recipe.task.to_json_dict(), "threads": args.threads, "repeats": args.repeats,
            "batch_n": args.batch_n_text if is_text(task) else args.batch_n, "max_seconds": args.max_seconds,
            "tokens": args.tokens}
    rows = time_and_score(name, task, artifacts, base, folder, args.rounds, reference)
    return {"task": name, "text": is_text(task), "batch_n": base["batch_n"], "eager_int8": eager,
            "smoothquant": smoothquant, "weight_bits": 8 if weight_max == 127 else 7,
            "fp32_params": sum(p.numel() for p in model.parameters()), "rows": rows, **verdict(rows)}


def time_and_score(name: str, task: Any, artifacts: dict[str, dict[str, Any]], base: dict[str, Any], folder: Path,
                   rounds: int, reference: Any) -> list[dict[str, Any]]:
    """Time every artifact in a worker process of its own, ``rounds`` times in rotated order (the
    first round also saves its test-split outputs), and score it: one row per artifact."""
    from rich.progress import Progress

    from slimkit.core.io import load_state_dict

    test = task.data.test
    configs = list(artifacts)
    timings: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    with Progress(disable=not sys.stderr.isatty()) as progress:
        bar = progress.add_task(f"{name}: timing {len(configs)} artifacts x {rounds} rounds",
                                total=len(configs) * rounds)
        for r in range(rounds):
            for config in configs[r % len(configs):] + configs[:r % len(configs)]:
                art = artifacts[config]
                outputs = str(folder / config / "outputs.safetensors") if r == 0 else None
                timings[config].append(run_worker({**base, "files": art["files"], "runtime": art["runtime"],
                                                   "outputs": outputs}, folder / config / f"round-{r}"))
                progress.advance(bar)
    rows = []
    for config in configs:
        art = artifacts[config]
        outputs = load_state_dict(folder / config / "outputs.safetensors")["outputs"]
        metrics = task.evaluate(outputs, test.targets)
        rows.append({"config": config, "quantizer": art["quantizer"], "runtime": art["runtime"],
                     "quality": metrics["quality"], "metrics": {k: v for k, v in metrics.items() if k != "quality"},
                     "bytes": sum(Path(f).stat().st_size for f in art["files"]),
                     "b1_ms": statistics.median(t["b1"]["median_ms"] for t in timings[config]),
                     "bN_ms": statistics.median(t["bN"]["median_ms"] for t in timings[config]),
                     "b1_per_round": [t["b1"]["median_ms"] for t in timings[config]],
                     "bN_per_round": [t["bN"]["median_ms"] for t in timings[config]],
                     "max_rel_diff_vs_fp32": float((outputs - reference).abs().max() / reference.abs().max()),
                     "quantize_seconds": art["quantize_seconds"], "info": timings[config][0]["info"]})
    return rows


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's criteria, computed from the rows (never asserted here: the table says)."""
    by = {r["config"]: r for r in rows}
    ours = [r for r in rows if r["config"].startswith("slimkit")]
    peers = [r for r in rows if not r["config"].startswith(("slimkit", "fp32@"))]
    fp32_rows = [r for r in rows if r["config"].startswith("fp32@")]
    best_ours = max(ours, key=lambda r: r["quality"])
    out: dict[str, Any] = {
        "fp32_quality": by["fp32@eager"]["quality"],
        "slimkit_quality": best_ours["quality"], "slimkit_metrics": best_ours["metrics"],
        "best_peer_quality": max(r["quality"] for r in peers),
        "size_ratio": by["slimkit@onnxruntime"]["bytes"] / by["fp32@onnxruntime"]["bytes"],
        "size_ratio_ir": by["slimkit@openvino"]["bytes"] / by["fp32@openvino"]["bytes"],
    }
    for b in ("b1", "bN"):
        mine = min(ours, key=lambda r: r[f"{b}_ms"])
        peer = min(peers, key=lambda r: r[f"{b}_ms"])
        every = min(peers + fp32_rows, key=lambda r: r[f"{b}_ms"])
        out[f"{b}_slimkit"] = mine["config"]
        out[f"{b}_slimkit_vs_eager"] = by["fp32@eager"][f"{b}_ms"] / mine[f"{b}_ms"]
        out[f"{b}_best_peer"] = peer["config"]
        out[f"{b}_ratio_vs_best_peer"] = mine[f"{b}_ms"] / peer[f"{b}_ms"]
        out[f"{b}_best_overall"] = every["config"]
        out[f"{b}_ratio_vs_best_overall"] = mine[f"{b}_ms"] / every[f"{b}_ms"]
    return out


# ---------------------------------------------------------------------------------------------
# report


def render(results: list[dict[str, Any]]) -> str:
    lines = ["# Int8 PTQ: slimkit vs ONNX Runtime's quantizers vs OpenVINO + NNCF", "",
             f"Per task: the same trained model and the same {CALIBRATION_SAMPLES} calibration examples for every "
             "quantizer; every (artifact, runtime) timed in a process of its own, rounds in rotated order; latency = "
             "median over rounds of each process's median. `× FP32` = FP32 latency on the same runtime / this, "
             "`× eager` = eager FP32 latency / this (higher is faster); size = bytes of the files that ship; "
             "diff = max |out - eager FP32| / max |eager FP32|. Each section names the command that wrote it "
             "(a run of some tasks replaces those sections and keeps the others).", ""]
    for res in results:
        e, n, text = res["eager_int8"], res["batch_n"], res["text"]
        b1 = f"b1×{res['tokens']} tok" if text else "b1"
        bn = f"b{n}×64 tok" if text else f"b{n}"
        metric = "cosine" if text else "accuracy"
        sq = f"; SmoothQuant alpha {res['smoothquant']}" if res.get("smoothquant") is not None else ""
        lines += [f"## {res['task']} ({res['fp32_params']:,} parameters; slimkit weights {res['weight_bits']}-bit{sq})",
                  "",
                  f"Command: `{res['command']}`; {res['machine']}, {res['date']}, {res['threads']} threads, "
                  f"{res['rounds']} rounds.", "",
                  f"slimkit's eager fake-quant reference: {metric} {e['quality']:.4f}, output MSE vs FP32 "
                  f"{e['logit_mse']:.3g}; without bias correction {e['quality_no_bias_correction']:.4f}, "
                  f"MSE {e['logit_mse_no_bias_correction']:.3g}.", "",
                  f"| config | quantizer | {metric} | {'top-10 overlap' if text else 'Δ pt vs FP32'} | bytes "
                  f"| × FP32 bytes | {b1} ms | {bn} ms | × FP32 {b1} | × FP32 {bn} | × eager {b1} | × eager {bn} "
                  "| diff | quantize s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        by = {r["config"]: r for r in res["rows"]}
        eager = by["fp32@eager"]
        for r in res["rows"]:
            fp = by[f"fp32@{r['runtime']}"]
            second = (f"{r['metrics'].get('knn10_overlap', float('nan')):.4f}" if text
                      else f"{100 * (r['quality'] - eager['quality']):+.2f}")
            lines.append(
                f"| {r['config']} | {r['quantizer']} | {r['quality']:.4f} | {second} | {r['bytes']:,} | "
                f"{r['bytes'] / fp['bytes']:.3f} | {r['b1_ms']:.4f} | {r['bN_ms']:.3f} | "
                f"{fp['b1_ms'] / r['b1_ms']:.2f} | {fp['bN_ms'] / r['bN_ms']:.2f} | "
                f"{eager['b1_ms'] / r['b1_ms']:.2f} | {eager['bN_ms'] / r['bN_ms']:.2f} | "
                f"{r['max_rel_diff_vs_fp32']:.3g} | "
                f"{'—' if r['quantize_seconds'] is None else format(r['quantize_seconds'], '.2f')} |")
        lines += ["", "Criteria (issue 5):", ""]
        if text:
            m = res["slimkit_metrics"]
            lines.append(f"- slimkit: mean cosine {res['slimkit_quality']:.4f} (≥ 0.995 wanted), top-10 overlap "
                         f"{m.get('knn10_overlap', float('nan')):.4f} (≥ 0.9 wanted); best peer cosine "
                         f"{res['best_peer_quality']:.4f}")
        else:
            lines.append(f"- quality drop: slimkit {100 * (res['fp32_quality'] - res['slimkit_quality']):+.2f} pt "
                         f"(≤ 0.5 wanted); best peer {100 * (res['fp32_quality'] - res['best_peer_quality']):+.2f} pt")
        lines.append(f"- artifact: {res['size_ratio']:.3f}× FP32 bytes as ONNX, {res['size_ratio_ir']:.3f}× as "
                     f"OpenVINO IR{'' if text else ' (≤ 0.27× wanted)'}")
        for b, label in (("b1", b1), ("bN", bn)):
            lines.append(f"- {label}: slimkit's fastest ({res[f'{b}_slimkit']}) is {res[f'{b}_slimkit_vs_eager']:.2f}× "
                         f"eager FP32{' (≥ 4 wanted at b1)' if text else ''}; its latency / the fastest peer "
                         f"quantizer's ({res[f'{b}_best_peer']}) = {res[f'{b}_ratio_vs_best_peer']:.3f}; / the fastest "
                         f"of peers and FP32 ({res[f'{b}_best_overall']}) = {res[f'{b}_ratio_vs_best_overall']:.3f} "
                         "(≤ 1.05 wanted)")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["digits-cnn", "mnist-lenet5"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--batch-n", type=int, default=256)
    parser.add_argument("--batch-n-text", type=int, default=32, help="batch N for token tasks (64 tokens each)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens of the batch-1 input of token tasks")
    parser.add_argument("--weight-range", choices=["auto", "int8", "int7"], default="auto",
                        help="slimkit's weight codes (auto: 7-bit on x86 without VNNI); ORT gets reduce_range to match")
    parser.add_argument("--smoothquant", type=lambda v: None if v == "off" else float(v), default=0.8,
                        help="slimkit's SmoothQuant alpha for token models, or off (the step's `smoothquant`; "
                             "CNNs: always off)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    command = (f"python benchmarks/quantization.py --tasks {' '.join(args.tasks)} --rounds {args.rounds} "
               f"--threads {args.threads} --repeats {args.repeats} --batch-n {args.batch_n}"
               + ("" if args.tasks == ["digits-cnn", "mnist-lenet5"]
                  else f" --batch-n-text {args.batch_n_text} --tokens {args.tokens}")
               + (f" --weight-range {args.weight_range}" if args.weight_range != "auto" else "")
               + (f" --smoothquant {'off' if args.smoothquant is None else args.smoothquant}"
                  if any(t == "minilm" for t in args.tasks) else ""))
    run_and_write("quantization", command, args, lambda name, folder: measure_task(name, args, folder), render)

if __name__ == "__main__":
    main()
