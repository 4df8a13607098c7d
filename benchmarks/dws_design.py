"""Design search for the depthwise-separable twin of `cnn_shapes`: which variant keeps accuracy
within 1 pt of the standard-conv baseline at >= 5x fewer MACs, under the task's baseline budget.

    .venv/bin/python benchmarks/dws_design.py [--device cpu|cuda] [--seeds 0 1 2 3 4] [--jobs N]

Each (variant, seed) trains `shapes-cnn`'s baseline budget (15 epochs, Adam 2e-3, cosine, keep
best on val) in its own process and is scored on the test split; MACs are counted at batch 1.
Variants are `model:key=value,...` (values in JSON) with the zoo factory's keyword arguments. This is a search
tool (its runs may be on a GPU, where kernels differ from the CPU's); the accuracy figures the
docs (docs/zoo.md) quote come from `benchmarks/zoo_shapes.py`, on CPU. Writes OUT/dws_design.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import parse_variant  # noqa: E402

DEFAULT_VARIANTS = [
    "cnn_shapes",
    "cnn_shapes_dws",
    "cnn_shapes_dws:kernel=5",
    "cnn_shapes_dws:residual=true",
    "cnn_shapes_dws:kernel=5,residual=true",
    "cnn_shapes_dws:width=36",
    "cnn_shapes_dws:width=36,residual=true",
]


def run_one(variant: str, seed: int, device: str, epochs: int | None = None) -> dict:
    import torch

    torch.set_num_threads(1)
    from slimkit.measure.config import MeasureConfig
    from slimkit.measure.macs import count_macs
    from slimkit.measure.quality import predict
    from slimkit.recipes.measure_task import baseline_for

    name, kwargs = parse_variant(variant)
    started = time.perf_counter()
    built, _, model = baseline_for({"name": "shapes-cnn", "model": name, "model_args": kwargs},
                                   MeasureConfig(device=device, threads=1, memory=False), seed=seed,
                                   train={"epochs": epochs} if epochs is not None else None)
    test = built.data.test
    model.eval()
    with torch.no_grad():
        outputs = predict(model, test, batch_size=512, device=device)
    quality = built.evaluate(outputs, test.targets)["quality"]
    model = model.cpu()
    example = [t[:1] for t in test.inputs]
    return {"variant": variant, "seed": seed, "quality": quality, "macs": count_macs(model, example),
            "params": sum(p.numel() for p in model.parameters()), "device": device,
            "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=None, help="override the budget (smoke tests only)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process each")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    stem = f"dws_design_{args.device}" + (f"_e{args.epochs}" if args.epochs is not None else "")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(v, s) for s in args.seeds for v in args.variants]  # seed-major: a cut-short run covers every variant
    runs: list[dict] = []
    import multiprocessing as mp

    with Progress() as progress, ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        task = progress.add_task("training variants", total=len(jobs))
        futures = [pool.submit(run_one, v, s, args.device, args.epochs) for v, s in jobs]
        for future in as_completed(futures):
            runs.append(future.result())
            progress.advance(task)
            save_json(runs, args.out / f"{stem}.json")
    by_variant = {v: sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"]) for v in args.variants}
    by_variant = {v: rs for v, rs in by_variant.items() if rs}
    base = by_variant.get("cnn_shapes")
    base_macs = base[0]["macs"] if base else None
    base_acc = statistics.median(r["quality"] for r in base) if base else None
    columns = ["variant", "params", "MACs", "× fewer MACs", "acc median", "acc mean ± std", "Δ median vs cnn_shapes (pt)",
               "acc per seed"]
    table = Table(title=f"dws design search on shapes-cnn ({args.device}, seeds {' '.join(map(str, args.seeds))})")
    for c in columns:
        table.add_column(c, justify="left" if c == "variant" else "right")
    lines = []
    for v, rs in by_variant.items():
        accs = [r["quality"] for r in rs]
        med = statistics.median(accs)
        cells = [v, f"{rs[0]['params']:,}", f"{rs[0]['macs']:,}",
                 f"{base_macs / rs[0]['macs']:.2f}" if base_macs else "—", f"{med:.4f}",
                 f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}" if len(accs) > 1 else "—",
                 f"{100 * (med - base_acc):+.2f}" if base_acc is not None else "—",
                 " ".join(f"{a:.4f}" for a in accs)]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    command = (f"python benchmarks/dws_design.py --device {args.device} --seeds {' '.join(map(str, args.seeds))} "
               f"--jobs {args.jobs} --variants {' '.join(args.variants)}")
    header = [f"# {table.title}", "",
              f"Command: `{command}`; torch {runs[0]['torch']}, {time.strftime('%Y-%m-%d')}. Same budget for every "
              "row (the task's baseline training); accuracy on the test split.", "",
              "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    (args.out / f"{stem}.md").write_text("\n".join(header + lines) + "\n")
    save_json(runs, args.out / f"{stem}.json")


def save_json(runs: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
