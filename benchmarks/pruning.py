"""Pruning, one command: unstructured and N:M on `mnist-mlp`, structured on `shapes-cnn`, MiniLM
and `transformers` models (the structured sections live in `pruning_structured.py`).

    .venv/bin/python benchmarks/pruning.py [--sections unstructured shapes minilm transformers] [--threads 2]

Each section writes OUT/pruning[_SECTION].md and .json with the command that reproduces it.

Unstructured (`--task mnist-mlp --seeds 0 1 2 --sparsity 0.9 --epochs 5`):
per seed, the FP32 baseline is trained with the task's own budget; then, from that baseline:

- dense fine-tune: the same extra epochs, no pruning (a control: what the epochs alone add);
- one-shot global magnitude at `--sparsity`, without fine-tuning and with `--epochs` of it;
- the same per layer (`scope: layer`), without fine-tuning and with it;
- cubic (Zhu & Gupta gradual) global magnitude during the fine-tuning;
- movement scores, cubic, during the fine-tuning;
- random masks, fine-tuned (a control: what choosing the weights adds);
- 2:4 (50%) magnitude, fine-tuned.

Every row is the `prune` step itself (its config in the table). Accuracy is on the test split
(mean ± std over seeds, the fine-tunes pick epochs on validation); bytes are the step's
safetensors checkpoint (bitmask + values) and the ONNX file ONNX Runtime runs, whose accuracy is
checked too. Latency is not compared: ONNX Runtime and OpenVINO rebuild the dense weight at load,
so unstructured sparsity buys bytes, not speed (structured pruning buys speed).
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import publish_section, section_stamp  # noqa: E402


def configs(sparsity: float, epochs: int) -> list[tuple[str, dict[str, Any] | None]]:
    """(row name, prune step config; None = the dense fine-tune control)."""
    s, tune = sparsity, {"finetune": {"epochs": epochs}}
    return [
        (f"dense fine-tune ({epochs} ep)", None),
        (f"magnitude {s:.0%} global, no fine-tune", {"sparsity": s}),
        (f"magnitude {s:.0%} per layer, no fine-tune", {"sparsity": s, "scope": "layer"}),
        (f"magnitude {s:.0%} global, one-shot + fine-tune", {"sparsity": s, **tune}),
        (f"magnitude {s:.0%} per layer, one-shot + fine-tune", {"sparsity": s, "scope": "layer", **tune}),
        (f"magnitude {s:.0%} global, cubic", {"sparsity": s, **tune, "schedule": "cubic"}),
        (f"movement {s:.0%} global, cubic", {"sparsity": s, **tune, "schedule": "cubic",
                                             "criterion": "movement"}),
        (f"random {s:.0%} global, one-shot + fine-tune", {"sparsity": s, **tune, "criterion": "random"}),
        ("magnitude 2:4, one-shot + fine-tune", {"pattern": "2:4", **tune}),
    ]


class Bench:
    def __init__(self, task_name: str, seed: int, folder: Path) -> None:
        from slimkit.tasks.context import Context
        from slimkit.tasks import build_task

        self.task, self.seed, self.folder = build_task(task_name), seed, folder
        torch.manual_seed(seed)
        self.model = self.task.build_model()
        self.ctx = Context(task=self.task, seed=seed)
        self.ctx.train(self.model, self.task.baseline_train)
        self.model.eval()
        self.count = 0

    def accuracy(self, model: torch.nn.Module) -> float:
        from slimkit.measure.quality import predict

        test = self.task.data.test
        return self.task.evaluate(predict(model.eval(), test, 256), test.targets)["quality"]

    def artifact_bytes(self, model: torch.nn.Module) -> int:
        from slimkit.core.io import save_state_dict

        self.count += 1
        return save_state_dict(self.folder / f"m{self.count}.safetensors", model.state_dict()).stat().st_size

    def onnxruntime(self, model: torch.nn.Module) -> dict[str, Any]:
        from slimkit.core.registry import BACKENDS

        self.count += 1
        test = self.task.data.test
        compiled = BACKENDS.get("onnxruntime").compile(model, test.example_inputs(1), precision="fp32", threads=1,
                                                       workdir=self.folder / f"ort{self.count}", device="cpu")
        return {"accuracy": self.task.evaluate(compiled(*test.inputs), test.targets)["quality"],
                "onnx_bytes": compiled.artifact_bytes}

    def run(self, cfg: dict[str, Any] | None, epochs: int) -> dict[str, Any]:
        import copy

        from slimkit.techniques.pruning.step import PruneConfig, prune
        from slimkit.train.config import TrainConfig

        model = copy.deepcopy(self.model)
        started = time.perf_counter()
        if cfg is None:
            self.ctx.train(model, TrainConfig(epochs=epochs, lr=5e-4, batch_size=64))
            info = {"sparsity": 0.0}
        else:
            info = prune(model, PruneConfig(**cfg), self.ctx).info
        seconds = time.perf_counter() - started
        return {"accuracy": self.accuracy(model), "sparsity": info["sparsity"], "bytes": self.artifact_bytes(model),
                "seconds": seconds, **self.onnxruntime(model)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from rich.progress import Progress

    table = configs(args.sparsity, args.epochs)
    per_seed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-pruning-") as tmp, \
            Progress(disable=not sys.stderr.isatty()) as progress:
        bar = progress.add_task(f"{args.task}: {len(args.seeds)} seeds x {len(table) + 1} models",
                                total=len(args.seeds) * (len(table) + 1))
        for seed in args.seeds:
            bench = Bench(args.task, seed, Path(tmp) / f"seed{seed}")
            rows = {"FP32 baseline": {"accuracy": bench.accuracy(bench.model), "sparsity": 0.0,
                                      "bytes": bench.artifact_bytes(bench.model), "seconds": 0.0,
                                      **bench.onnxruntime(bench.model)}}
            progress.advance(bar)
            for name, cfg in table:
                rows[name] = bench.run(cfg, args.epochs)
                progress.advance(bar)
            per_seed.append(rows)
    names = list(per_seed[0])
    summary = {}
    for name in names:
        runs = [rows[name] for rows in per_seed]
        accs = [r["accuracy"] for r in runs]
        base = [rows["FP32 baseline"]["accuracy"] for rows in per_seed]
        drops = [100 * (b - a) for a, b in zip(accs, base)]
        summary[name] = {
            "config": dict(table).get(name), "accuracy_mean": statistics.mean(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "accuracy_per_seed": accs,
            "drop_pt_mean": statistics.mean(drops), "drop_pt_per_seed": drops,
            "sparsity": runs[0]["sparsity"], "bytes": runs[0]["bytes"], "onnx_bytes": runs[0]["onnx_bytes"],
            "onnx_accuracy_mean": statistics.mean(r["accuracy"] for r in runs),
            "seconds_mean": statistics.mean(r["seconds"] for r in runs)}
    return {"task": args.task, "seeds": args.seeds, "sparsity": args.sparsity, "epochs": args.epochs, "rows": summary}


def render(res: dict[str, Any], command: str) -> str:
    rows = res["rows"]
    base = rows["FP32 baseline"]
    lines = [f"# Unstructured pruning on {res['task']}", "",
             f"Command: `{command}`; {platform.machine()}, python {platform.python_version()}, "
             f"{time.strftime('%Y-%m-%d')}, seeds {' '.join(map(str, res['seeds']))}.", "",
             "Each row starts from the same seed's FP32 baseline. Accuracy: test split, mean ± std over seeds; "
             "drop: baseline minus row, in points, mean over seeds (per seed in brackets). Bytes: the step's "
             "safetensors checkpoint (bitmask + values) and the ONNX file; ORT acc: that file in ONNX Runtime.", "",
             "| config | accuracy | drop pt (per seed) | sparsity | bytes | × FP32 bytes | ONNX bytes | × FP32 ONNX "
             "| ORT acc | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        seeds = " ".join(f"{d:+.1f}" for d in r["drop_pt_per_seed"])
        lines.append(f"| {name} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | {r['drop_pt_mean']:+.2f} "
                     f"({seeds}) | {r['sparsity']:.3f} | {r['bytes']:,} | {r['bytes'] / base['bytes']:.3f} | "
                     f"{r['onnx_bytes']:,} | {r['onnx_bytes'] / base['onnx_bytes']:.3f} | "
                     f"{r['onnx_accuracy_mean']:.4f} | {r['seconds_mean']:.1f} |")
    s = f"{res['sparsity']:.0%}"
    tuned = rows[f"magnitude {s} global, one-shot + fine-tune"]
    cut = rows[f"magnitude {s} global, no fine-tune"]
    layer_tuned = rows[f"magnitude {s} per layer, one-shot + fine-tune"]
    layer_cut = rows[f"magnitude {s} per layer, no fine-tune"]
    lines += ["", "Criteria (issue 6, mnist-mlp):", "",
              f"- {s} global sparsity after fine-tuning: drop {tuned['drop_pt_mean']:+.2f} pt (≤ 1 wanted)",
              f"- the same without fine-tuning: drop {cut['drop_pt_mean']:+.2f} pt (≥ 5 wanted, to show that "
              "retraining matters)",
              f"- per layer, {s}: drop {layer_tuned['drop_pt_mean']:+.2f} pt fine-tuned, "
              f"{layer_cut['drop_pt_mean']:+.2f} pt without",
              f"- artifact: {tuned['bytes'] / base['bytes']:.3f}× the FP32 checkpoint, "
              f"{tuned['onnx_bytes'] / base['onnx_bytes']:.3f}× as ONNX (≤ 0.2× wanted)", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--task", default="mnist-mlp", help="unstructured: the task")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="unstructured: seeds")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=5, help="unstructured: fine-tuning epochs")
    parser.add_argument("--shapes-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--target-macs", type=float, default=0.6, help="shapes: MACs kept")
    parser.add_argument("--criterion", default="l1", help="shapes: channel score")
    parser.add_argument("--structured-epochs", type=int, default=8, help="shapes: fine-tuning epochs")
    parser.add_argument("--minilm-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("slimkit").setLevel(logging.WARNING)
    from rich.console import Console

    console = Console()
    stamp = section_stamp(args.threads)
    for section in args.sections:
        command = " ".join(filter(None, ["python benchmarks/pruning.py --sections", section, SECTIONS[section](args),
                                         f"--threads {args.threads}"]))
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"slimkit-bench-pruning-{section}-") as tmp:
            if section == "unstructured":
                res = measure(args)
                text = render(res, command)
                stem = "pruning"
            else:
                import pruning_structured as ps

                res = getattr(ps, f"{section}_section")(args, Path(tmp), lambda msg: console.log(msg))
                text = getattr(ps, f"render_{section}")(res, command, stamp)
                stem = f"pruning_{section}"
        publish_section(args.out, stem, res, text, command, started)


# the arguments each section reads, as its command line shows them
SECTIONS = {
    "unstructured": lambda a: f"--task {a.task} --seeds {' '.join(map(str, a.seeds))} --sparsity {a.sparsity} "
                              f"--epochs {a.epochs}",
    "shapes": lambda a: f"--shapes-seeds {' '.join(map(str, a.shapes_seeds))} --target-macs {a.target_macs} "
                        f"--criterion {a.criterion} --structured-epochs {a.structured_epochs}",
    "minilm": lambda a: f"--minilm-epochs {a.minilm_epochs}",
    "transformers": lambda a: "",
}


if __name__ == "__main__":
    main()
