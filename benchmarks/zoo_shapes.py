"""Zoo models on `shapes-cnn`, each trained with the task's baseline budget and measured in its
own process: parameters, MACs, latency at batch 1 and 64, test accuracy.

    .venv/bin/python benchmarks/zoo_shapes.py [--models cnn_shapes cnn_shapes_dws ...|all] [--seeds 0 1]

The default set is the standard-conv baseline, its depthwise-separable twin and the smallest
variant of each efficient family (training every registered model takes hours on 2 cores;
`--models all` does it). Writes OUT/zoo_shapes.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import measure_in_subprocess, report  # noqa: E402

DEFAULT_MODELS = ["cnn_shapes", "cnn_shapes_dws", "mobilenetv1_025", "mobilenetv2_035", "mobilenetv3_small_075",
                  "shufflenet_v2_x0_5", "squeezenet1_1", "efficientnet_b0"]
BASELINE = "cnn_shapes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    models = args.models
    if models == ["all"]:
        sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
        from slimkit.zoo import list_models

        models = [m for m in list_models() if m not in ("minilm_l6", "mlp_digits", "lenet_300_100")]

    from rich.progress import track

    runs = {}
    for model in track([(m, s) for m in models for s in args.seeds], description="training zoo models"):
        name, seed = model
        runs[model] = measure_in_subprocess(["--task", "shapes-cnn", "--model", name, "--seed", str(seed),
                                             "--repeats", str(args.repeats), "--threads", str(args.threads)])
    rows, accs = {}, {}
    for name in models:
        per_seed = [runs[(name, s)] for s in args.seeds]
        accs[name] = [m["quality"] for m in per_seed]
        rows[name] = {**per_seed[0], "quality": statistics.median(accs[name])}
    base = rows.get(BASELINE)
    extra = {"acc per seed": [" ".join(f"{a:.4f}" for a in accs[n]) for n in rows]}
    if base is not None:
        extra["Δ acc vs cnn_shapes (pt)"] = [f"{100 * (m['quality'] - base['quality']):+.2f}" for m in rows.values()]
        extra["× fewer MACs"] = [f"{base['macs'] / m['macs']:.2f}" for m in rows.values()]
    seeds = " ".join(map(str, args.seeds))
    report(f"zoo models on shapes-cnn (same training budget; median over seeds {seeds})", rows, args.out, "zoo_shapes",
           f"python benchmarks/zoo_shapes.py --models {' '.join(args.models)} --seeds {seeds}", extra)


if __name__ == "__main__":
    main()
