"""Weight-only int4: slimkit (round to nearest and GPTQ) against ONNX Runtime's and OpenVINO/NNCF's
own int4 weight compression, on the same model and the same calibration examples, in one run.

    .venv/bin/python benchmarks/weight_only.py [--tasks minilm] [--group-size 128] [--rounds 3]
                                               [--threads 2] [--calibration-samples 128]

Per task, the FP32 model is exported once to ONNX. Then, all int4 asymmetric with one scale and
zero point per group of ``--group-size`` weights, linears and embeddings alike:

- slimkit: the ``quantize_weights`` step's algorithm, round to nearest (``rtn``) and GPTQ, exported
  for ONNX Runtime (linears as ``MatMulNBits``) and, GPTQ, as standard ONNX read by OpenVINO;
- ONNX Runtime: ``MatMulNBitsQuantizer`` (its default round to nearest) on the FP32 file, MatMul and
  Gather nodes;
- NNCF: ``nncf.compress_weights`` (INT4_ASYM, ``ratio=1``, ``all_layers=True``) on the FP32 file
  read by OpenVINO, data-free and with its GPTQ (on the calibration examples), saved as IR;
- FP32 on eager PyTorch, ONNX Runtime and OpenVINO.

Quality: cosine of each artifact's embeddings to FP32's and top-10 neighbour overlap on the test
sentences. Size: the bytes of the files that ship, and for slimkit the bytes of the quantized
layers' codes, scales and zero points against those layers' FP32 bytes (the issue's measure).
Every (artifact, runtime) is timed in its own process (``quantization.py --worker``), rounds in
rotated order, medians. Writes OUT/weight_only.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import run_and_write  # noqa: E402
from quantization import fp32_artifacts, input_names, time_and_score  # noqa: E402

SEED = 0


def build_artifacts(task: Any, model: Any, batches: list, folder: Path, args: argparse.Namespace) -> tuple[
        dict[str, dict[str, Any]], dict[str, Any]]:
    """Every quantizer's artifact ({"config@runtime": files, runtime, quantizer, seconds}) and
    slimkit's quantization reports."""
    from slimkit.backends.onnxruntime import export_onnx
    from slimkit.backends.openvino import save_ir
    from slimkit.techniques.quantization.weight_only import WeightOnlySpec, quantize_weight_only

    example = task.data.test.example_inputs(1)
    out, fp32_onnx = fp32_artifacts(task, model, folder)
    add = out.add
    spec = WeightOnlySpec(4, args.group_size, symmetric=False)
    reports = {}
    for method in ("rtn", "gptq"):
        started = time.perf_counter()
        q, report = quantize_weight_only(model, spec, method=method, batches=batches, kinds=("linear", "embedding"))
        seconds = time.perf_counter() - started
        reports[method] = report.to_dict()
        name = f"slimkit-{method}"
        label = f"slimkit int4 {'GPTQ' if method == 'gptq' else 'round to nearest'}"
        add(name, label, [export_onnx(q, example, folder / f"{name}.onnx", contrib_ops=True)], seconds, ["onnxruntime"])
        if method == "gptq":
            add(name, label, save_ir(q, example, folder / f"{name}.xml"), seconds, ["openvino"])
    add("ort-rtn", "ONNX Runtime MatMulNBitsQuantizer (RTN)", *ort_int4(fp32_onnx, folder, args.group_size),
        ["onnxruntime"])
    names = input_names(fp32_onnx)
    failures = {}
    for variant, label in NNCF_VARIANTS.items():
        try:
            add(f"nncf{variant}", f"NNCF compress_weights INT4_ASYM{label}",
                *nncf_int4(fp32_onnx, names, batches, folder, args.group_size, variant), ["openvino"])
        except Exception as err:  # noqa: BLE001 - a peer's failure is a result, reported under the table
            failures[f"nncf{variant}"] = f"{type(err).__name__}: {err}"
    return out, {**reports, "failures": failures}


# NNCF's data-free mode and its data-aware ones (GPTQ; AWQ with scale estimation, its accuracy advice)
NNCF_VARIANTS = {"": "", "-gptq": " + GPTQ", "-awq-se": " + AWQ + scale estimation"}


def ort_int4(fp32_onnx: Path, folder: Path, group_size: int) -> tuple[list[Path], float]:
    """ONNX Runtime's int4 weight-only quantizer (MatMul -> MatMulNBits, Gather -> GatherBlockQuantized)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    started = time.perf_counter()
    config = DefaultWeightOnlyQuantConfig(block_size=group_size, is_symmetric=False,
                                          op_types_to_quantize=("MatMul", "Gather"),
                                          quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_onnx)), algo_config=config)
    quantizer.process()
    path = folder / "ort-rtn.onnx"
    onnx.save(quantizer.model.model, str(path))
    return [path], time.perf_counter() - started


def nncf_int4(fp32_onnx: Path, names: list[str], batches: list, folder: Path, group_size: int,
              variant: str) -> tuple[list[Path], float]:
    """NNCF's int4 weight compression of the FP32 file read by OpenVINO (``NNCF_VARIANTS``)."""
    import nncf
    import openvino as ov

    extra = {}
    if variant:
        samples = [{n: t[i:i + 1].numpy() for n, t in zip(names, b)} for b in batches for i in range(len(b[0]))]
        extra = {"dataset": nncf.Dataset(samples), "subset_size": len(samples),
                 **({"gptq": True} if variant == "-gptq" else {"awq": True, "scale_estimation": True})}
    started = time.perf_counter()
    compressed = nncf.compress_weights(ov.Core().read_model(str(fp32_onnx)), mode=nncf.CompressWeightsMode.INT4_ASYM,
                                       group_size=group_size, ratio=1.0, all_layers=True, **extra)
    xml = folder / f"nncf{variant}.xml"
    ov.save_model(compressed, str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")], time.perf_counter() - started


def measure_task(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import torch

    from slimkit.measure.config import MeasureConfig
    from slimkit.measure.quality import predict
    from slimkit.recipes.measure_task import baseline_for
    from slimkit.data.batches import calibration_batches

    task, recipe, model = baseline_for(name, MeasureConfig(threads=args.threads, memory=False),
                                       progress=sys.stderr.isatty())
    model.eval()
    torch.set_num_threads(args.threads)
    batches = calibration_batches(task.data.train, args.calibration_samples, 32, SEED)
    artifacts, reports = build_artifacts(task, model, batches, folder, args)
    test = task.data.test
    with torch.no_grad():
        reference = predict(model, test, 64)
    base = {"task": recipe.task.to_json_dict(), "threads": args.threads, "repeats": args.repeats,
            "batch_n": args.batch_n, "max_seconds": args.max_seconds, "tokens": args.tokens}
    rows = time_and_score(name, task, artifacts, base, folder, args.rounds, reference)
    return {"task": name, "group_size": args.group_size, "calibration_samples": args.calibration_samples,
            "batch_n": args.batch_n, "fp32_params": sum(p.numel() for p in model.parameters()),
            "slimkit_reports": reports, "rows": rows}


def render(results: list[dict[str, Any]]) -> str:
    lines = ["# Weight-only int4: slimkit (RTN, GPTQ) vs ONNX Runtime's and NNCF's int4 weight compression", "",
             "Per task: the same FP32 model and calibration examples for every quantizer; int4 asymmetric, one scale "
             "and zero point per group; every (artifact, runtime) timed in a process of its own, rounds in rotated "
             "order, latency = median over rounds of each process's median. `× FP32` = FP32 latency on the same "
             "runtime / this (higher is faster); size = bytes of the files that ship. Each section names the command "
             "that wrote it.", ""]
    for res in results:
        n, t = res["batch_n"], res["tokens"]
        lines += [f"## {res['task']} ({res['fp32_params']:,} parameters; groups of {res['group_size']}; GPTQ on "
                  f"{res['calibration_samples']} calibration examples)", "",
                  f"Command: `{res['command']}`; {res['machine']}, {res['date']}, {res['threads']} threads, "
                  f"{res['rounds']} rounds.", ""]
        for method, rep in res["slimkit_reports"].items():
            if method == "failures":
                continue
            lines.append(f"- slimkit {method}: {rep['layers_quantized']} layers, {rep['quantized_bytes']:,} bytes of "
                         f"codes, scales and zero points for {rep['quantized_fp32_bytes']:,} FP32 bytes = "
                         f"**{rep['quantized_ratio']:.4f}×** (≤ 0.16× wanted)")
        lines += ["", f"| config | quantizer | cosine | min cosine | top-10 overlap | bytes | × FP32 bytes | b1×{t} tok ms "
                  f"| b{n}×64 tok ms | × FP32 b1 | × FP32 b{n} | diff | quantize s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        by = {r["config"]: r for r in res["rows"]}
        for r in res["rows"]:
            fp = by[f"fp32@{r['runtime']}"]
            m = r["metrics"]
            lines.append(f"| {r['config']} | {r['quantizer']} | {r['quality']:.4f} | {m.get('cosine_min', 0):.4f} | "
                         f"{m.get('knn10_overlap', float('nan')):.4f} | {r['bytes']:,} | {r['bytes'] / fp['bytes']:.3f} | "
                         f"{r['b1_ms']:.3f} | {r['bN_ms']:.2f} | {fp['b1_ms'] / r['b1_ms']:.2f} | "
                         f"{fp['bN_ms'] / r['bN_ms']:.2f} | {r['max_rel_diff_vs_fp32']:.3g} | "
                         f"{'—' if r['quantize_seconds'] is None else format(r['quantize_seconds'], '.1f')} |")
        for config, reason in res["slimkit_reports"].get("failures", {}).items():
            lines.append(f"\n{config} failed: {reason}")
        rtn, gptq = by["slimkit-rtn@onnxruntime"], by["slimkit-gptq@onnxruntime"]
        lines += ["", f"Criterion (issue 5): GPTQ beats round to nearest on cosine: {gptq['quality']:.4f} vs "
                      f"{rtn['quality']:.4f} ({'yes' if gptq['quality'] > rtn['quality'] else 'no'}).", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["minilm"])
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--batch-n", type=int, default=32, help="batch N (64 tokens each)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens of the batch-1 input")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    command = (f"python benchmarks/weight_only.py --tasks {' '.join(args.tasks)} --group-size {args.group_size} "
               f"--calibration-samples {args.calibration_samples} --rounds {args.rounds} --threads {args.threads} "
               f"--repeats {args.repeats} --batch-n {args.batch_n} --tokens {args.tokens}")
    run_and_write("weight_only", command, args, lambda name, folder: measure_task(name, args, folder), render)

if __name__ == "__main__":
    main()
