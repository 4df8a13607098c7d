"""Static int8 post-training quantization: slimkit against ONNX Runtime's and OpenVINO/NNCF's own
quantizers, on the same trained model and the same calibration images, in one run.

    .venv/bin/python benchmarks/quantization.py [--tasks digits-cnn mnist-lenet5] [--rounds 3]
                                                [--threads 2] [--repeats 200] [--batch-n 256]

Per task, the baseline is trained with the task's budget and exported once to ONNX (FP32). Then:

- slimkit: the `quantize` step's algorithm (static, min-max, per-channel weights, 512 calibration
  images), exported as a QDQ graph, deployed on ONNX Runtime and on OpenVINO;
- ONNX Runtime: `quantize_static` on the same FP32 ONNX file (after its `quant_pre_process`), QDQ,
  per-channel int8 weights, uint8 activations, min-max, `reduce_range` on x86 CPUs without VNNI
  (ONNX Runtime's own advice there), run on ONNX Runtime and on OpenVINO;
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
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CALIBRATION_SAMPLES, CALIBRATION_BATCH, SEED = 512, 64, 0
RUNTIMES = {"onnxruntime": "ORT", "openvino": "OV"}


# ---------------------------------------------------------------------------------------------
# artifacts


def build_artifacts(task: Any, model: Any, batches: list, folder: Path,
                    weight_max: int) -> tuple[dict[str, dict[str, Any]], Any]:
    """Every quantizer's artifact for ``model`` ({"quantizer@runtime": {files, runtime, quantizer,
    quantize_seconds}}) and slimkit's quantized model (its eager fake-quant reference)."""
    from slimkit.backends.onnxruntime import export_onnx
    from slimkit.backends.openvino import save_ir

    example = task.data.test.example_inputs(1)
    out: dict[str, dict[str, Any]] = {}

    def add(config: str, quantizer: str, files: list[Path], seconds: float | None, runtimes: list[str]) -> None:
        for runtime in runtimes:
            out[f"{config}@{runtime}"] = {"quantizer": quantizer, "runtime": runtime, "files": [str(f) for f in files],
                                          "quantize_seconds": seconds}

    fp32_onnx = export_onnx(model, example, folder / "fp32.onnx")
    add("fp32", "none (FP32)", [fp32_onnx], None, ["onnxruntime"])
    add("fp32", "none (FP32)", save_ir(model, example, folder / "fp32.xml"), None, ["openvino"])

    started = time.perf_counter()
    q = slimkit_quantize(model, batches, weight_max)
    seconds = time.perf_counter() - started
    add("slimkit", "slimkit static int8", [export_onnx(q, example, folder / "slimkit.onnx")], seconds, ["onnxruntime"])
    add("slimkit", "slimkit static int8", save_ir(q, example, folder / "slimkit.xml"), seconds, ["openvino"])

    add("ort-quantizer", "ONNX Runtime quantize_static", *ort_quantize(fp32_onnx, batches, folder, weight_max),
        ["onnxruntime", "openvino"])
    add("nncf", "OpenVINO + NNCF PTQ", *nncf_quantize(fp32_onnx, batches, folder), ["openvino"])
    return out, q


def slimkit_quantize(model: Any, batches: list, weight_max: int, bias_correction: bool = True) -> Any:
    """What the ``quantize`` step does with its defaults (static, min-max), on ``batches``."""
    import torch

    from slimkit.techniques.quantization.ptq import (calibrate, convert, correct_bias, keep_model_outputs_float,
                                                     prepare_static, release_float_weights)

    with torch.no_grad():
        q, _ = prepare_static(model, weight_max=weight_max)
        keep_model_outputs_float(q, batches[0])
        calibrate(q, batches)
        convert(q)
        correct_bias(q, batches) if bias_correction else release_float_weights(q)
    return q


def ort_quantize(fp32_onnx: Path, batches: list, folder: Path, weight_max: int) -> tuple[list[Path], float]:
    """ONNX Runtime's static quantizer on the FP32 file, calibrated on ``batches``: (files, seconds)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    import onnxruntime as ort

    name = ort.InferenceSession(str(fp32_onnx), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{name: b[0].numpy()} for b in batches])

        def get_next(self):
            return next(self.items, None)

    pre, path = folder / "ort-pre.onnx", folder / "ort-quantizer.onnx"
    started = time.perf_counter()
    quant_pre_process(str(fp32_onnx), str(pre))
    quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=weight_max < 127, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    seconds = time.perf_counter() - started
    pre.unlink()
    return [path], seconds


def nncf_quantize(fp32_onnx: Path, batches: list, folder: Path) -> tuple[list[Path], float]:
    """NNCF's post-training quantization of the FP32 file read by OpenVINO, saved as IR: (files, seconds)."""
    import nncf
    import openvino as ov

    samples = [b[0][i:i + 1].numpy() for b in batches for i in range(len(b[0]))]
    started = time.perf_counter()
    quantized = nncf.quantize(ov.Core().read_model(str(fp32_onnx)), nncf.Dataset(samples), subset_size=len(samples))
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
    from slimkit.core.io import save_state_dict
    from slimkit.measure.latency import measure_latency, torch_threads
    from slimkit.measure.quality import predict
    from slimkit.tasks.base import build_task, parse_task_config

    job = json.loads(Path(job_path).read_text())
    test = build_task(parse_task_config(job["task"], "benchmark task")).data.test
    files = [Path(f) for f in job["files"]]
    with torch_threads(job["threads"]), torch.no_grad():
        built = (load_onnx(files[0], threads=job["threads"]) if job["runtime"] == "onnxruntime"
                 else load_ir(files, precision="fp32", threads=job["threads"]))
        timing = dict(warmup=20, repeats=job["repeats"], threads=job["threads"], max_seconds=job["max_seconds"])
        result = {"b1": measure_latency(built.run, test.example_inputs(1), **timing).to_dict(),
                  "bN": measure_latency(built.run, test.example_inputs(job["batch_n"]), **timing).to_dict(),
                  "info": built.info}
        if job.get("outputs"):
            save_state_dict(job["outputs"], {"outputs": predict(built.run, test, 256).contiguous()})
    Path(job["result"]).write_text(json.dumps(result))


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
    from rich.progress import Progress

    from slimkit.core.io import load_state_dict
    from slimkit.measure.config import MeasureConfig
    from slimkit.measure.quality import predict
    from slimkit.recipes.measure_task import baseline_for
    from slimkit.techniques.quantization.modules import default_weight_max
    from slimkit.techniques.quantization.ptq import calibration_batches

    cfg = MeasureConfig(threads=args.threads, memory=False)
    task, recipe, model = baseline_for(name, cfg, progress=sys.stderr.isatty())
    model.eval()
    weight_max = {"int8": 127, "int7": 63}.get(args.weight_range) or default_weight_max()
    batches = calibration_batches(task.data.train, CALIBRATION_SAMPLES, CALIBRATION_BATCH, SEED)
    artifacts, q = build_artifacts(task, model, batches, folder, weight_max)
    test = task.data.test
    with torch.no_grad():
        reference = predict(model, test, 256)
        with_bc = predict(q, test, 256)
        without_bc = predict(slimkit_quantize(model, batches, weight_max, bias_correction=False), test, 256)
    eager = {"quality": task.evaluate(with_bc, test.targets)["quality"],
             "quality_no_bias_correction": task.evaluate(without_bc, test.targets)["quality"],
             "logit_mse": float(((with_bc - reference) ** 2).mean()),
             "logit_mse_no_bias_correction": float(((without_bc - reference) ** 2).mean())}
    base = {"task": recipe.task.to_json_dict(), "threads": args.threads, "repeats": args.repeats,
            "batch_n": args.batch_n, "max_seconds": args.max_seconds}
    configs = list(artifacts)
    timings: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    with Progress(disable=not sys.stderr.isatty()) as progress:
        bar = progress.add_task(f"{name}: timing {len(configs)} artifacts x {args.rounds} rounds",
                                total=len(configs) * args.rounds)
        for r in range(args.rounds):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for config in order:
                art = artifacts[config]
                outputs = str(folder / config / "outputs.safetensors") if r == 0 else None
                timings[config].append(run_worker({**base, "files": art["files"], "runtime": art["runtime"],
                                                   "outputs": outputs}, folder / config / f"round-{r}"))
                progress.advance(bar)
    rows = []
    for config in configs:
        art = artifacts[config]
        outputs = load_state_dict(folder / config / "outputs.safetensors")["outputs"]
        diff = float((outputs - reference).abs().max() / reference.abs().max())
        rows.append({"config": config, "quantizer": art["quantizer"], "runtime": art["runtime"],
                     "quality": task.evaluate(outputs, test.targets)["quality"],
                     "bytes": sum(Path(f).stat().st_size for f in art["files"]),
                     "b1_ms": statistics.median(t["b1"]["median_ms"] for t in timings[config]),
                     "bN_ms": statistics.median(t["bN"]["median_ms"] for t in timings[config]),
                     "b1_per_round": [t["b1"]["median_ms"] for t in timings[config]],
                     "bN_per_round": [t["bN"]["median_ms"] for t in timings[config]],
                     "max_rel_diff_vs_fp32": diff, "quantize_seconds": art["quantize_seconds"],
                     "info": timings[config][0]["info"]})
    return {"task": name, "eager_int8": eager, "weight_bits": 8 if weight_max == 127 else 7,
            "fp32_params": sum(p.numel() for p in model.parameters()), "rows": rows, **verdict(rows)}


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's criteria, computed from the rows (never asserted here: the table says)."""
    by = {r["config"]: r for r in rows}
    fp32 = max(by["fp32@onnxruntime"]["quality"], by["fp32@openvino"]["quality"])
    ours = [r for r in rows if r["config"].startswith("slimkit@")]
    peers = [r for r in rows if not r["config"].startswith(("slimkit@", "fp32@"))]
    out: dict[str, Any] = {
        "fp32_quality": fp32,
        "slimkit_quality": max(r["quality"] for r in ours),
        "best_peer_quality": max(r["quality"] for r in peers),
        "size_ratio": by["slimkit@onnxruntime"]["bytes"] / by["fp32@onnxruntime"]["bytes"],
        "size_ratio_ir": by["slimkit@openvino"]["bytes"] / by["fp32@openvino"]["bytes"],
    }
    for b in ("b1", "bN"):
        mine = min(ours, key=lambda r: r[f"{b}_ms"])
        peer = min(peers, key=lambda r: r[f"{b}_ms"])
        every = min(peers + [by["fp32@onnxruntime"], by["fp32@openvino"]], key=lambda r: r[f"{b}_ms"])
        out[f"{b}_slimkit"] = mine["config"]
        out[f"{b}_best_peer"] = peer["config"]
        out[f"{b}_ratio_vs_best_peer"] = mine[f"{b}_ms"] / peer[f"{b}_ms"]
        out[f"{b}_best_overall"] = every["config"]
        out[f"{b}_ratio_vs_best_overall"] = mine[f"{b}_ms"] / every[f"{b}_ms"]
    return out


# ---------------------------------------------------------------------------------------------
# report


def render(results: list[dict[str, Any]], command: str, args: argparse.Namespace) -> str:
    lines = ["# Static int8 PTQ: slimkit vs ONNX Runtime's quantizer vs OpenVINO + NNCF", "",
             f"Command: `{command}`; {platform.machine()}, python {platform.python_version()}, "
             f"{time.strftime('%Y-%m-%d')}, {args.threads} threads. Same trained model, same "
             f"{CALIBRATION_SAMPLES} calibration images for every quantizer. Every (artifact, runtime) timed in a "
             f"process of its own, {args.rounds} rounds in rotated order; latency = median over rounds of each "
             "process's median. `× FP32` = FP32 latency on the same runtime / this (higher is faster); size = "
             "bytes of the files that ship; diff = max |out - eager FP32| / max |eager FP32|.", ""]
    for res in results:
        e = res["eager_int8"]
        lines += [f"## {res['task']} ({res['fp32_params']:,} parameters; slimkit weights {res['weight_bits']}-bit)", "",
                  f"slimkit's eager fake-quant reference: accuracy {e['quality']:.4f}, logit MSE vs FP32 "
                  f"{e['logit_mse']:.3g}; without bias correction {e['quality_no_bias_correction']:.4f}, "
                  f"MSE {e['logit_mse_no_bias_correction']:.3g}.", "",
                  f"| config | quantizer | runtime | accuracy | Δ pt vs FP32 | bytes | × FP32 bytes | b1 ms | "
                  f"b{args.batch_n} ms | × FP32 b1 | × FP32 b{args.batch_n} | diff | quantize s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        by = {r["config"]: r for r in res["rows"]}
        for r in res["rows"]:
            fp = by[f"fp32@{r['runtime']}"]
            lines.append(
                f"| {r['config']} | {r['quantizer']} | {r['runtime']} | {r['quality']:.4f} | "
                f"{100 * (r['quality'] - fp['quality']):+.2f} | {r['bytes']:,} | {r['bytes'] / fp['bytes']:.3f} | "
                f"{r['b1_ms']:.4f} | {r['bN_ms']:.3f} | {fp['b1_ms'] / r['b1_ms']:.2f} | {fp['bN_ms'] / r['bN_ms']:.2f} | "
                f"{r['max_rel_diff_vs_fp32']:.3g} | "
                f"{'—' if r['quantize_seconds'] is None else format(r['quantize_seconds'], '.2f')} |")
        lines += ["", "Criteria (issue 5):", "",
                  f"- quality drop: slimkit {100 * (res['fp32_quality'] - res['slimkit_quality']):+.2f} pt "
                  f"(≤ 0.5 wanted); best peer {100 * (res['fp32_quality'] - res['best_peer_quality']):+.2f} pt",
                  f"- artifact: {res['size_ratio']:.3f}× FP32 bytes as ONNX, {res['size_ratio_ir']:.3f}× as "
                  "OpenVINO IR (≤ 0.27× wanted)"]
        for b, label in (("b1", "batch 1"), ("bN", f"batch {args.batch_n}")):
            lines.append(f"- {label}: slimkit's fastest ({res[f'{b}_slimkit']}) / fastest peer quantizer "
                         f"({res[f'{b}_best_peer']}) = {res[f'{b}_ratio_vs_best_peer']:.3f}; / fastest of peers "
                         f"and FP32 ({res[f'{b}_best_overall']}) = {res[f'{b}_ratio_vs_best_overall']:.3f} "
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
    parser.add_argument("--weight-range", choices=["auto", "int8", "int7"], default="auto",
                        help="slimkit's weight codes (auto: 7-bit on x86 without VNNI); ORT gets reduce_range to match")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    from rich.console import Console

    results = []
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-quant-") as tmp:
        for name in args.tasks:
            folder = Path(tmp) / name
            folder.mkdir()
            results.append(measure_task(name, args, folder))
    command = (f"python benchmarks/quantization.py --tasks {' '.join(args.tasks)} --rounds {args.rounds} "
               f"--threads {args.threads} --repeats {args.repeats} --batch-n {args.batch_n}"
               + (f" --weight-range {args.weight_range}" if args.weight_range != "auto" else ""))
    text = render(results, command, args)
    Console().print(text, markup=False, highlight=False)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantization.md").write_text(text)
    (args.out / "quantization.json").write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
