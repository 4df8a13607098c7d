"""Zoo models on `shapes-cnn`, each trained with the task's baseline budget and measured in its
own process: parameters, MACs, latency at batch 1 and 64, test accuracy.

    .venv/bin/python benchmarks/zoo_shapes.py [--models cnn_shapes cnn_shapes_dws:width=36 ...|all] [--seeds 0 1]

The default set is the standard-conv baseline, its depthwise-separable twin and the smallest
variant of each efficient family (training every registered model takes hours on 2 cores;
`--models all` does it). Each (model, seed) measurement is kept in OUT/zoo_shapes_runs.json as soon as it
finishes, so an interrupted or extended run retrains only what is missing (`--fresh` ignores the
cache). A model may carry factory arguments, `name:key=value,...` (passed as `--model-arg`).
`--jobs 2` trains two runs at once at `--threads` each: it halves the wall time on 2 cores, but each
run's latency is then timed beside another job (the accuracy is unaffected; quote latency from a
`--jobs 1` run, or add `--retime`: each model is then timed again, untrained (`--epochs 0`), one
process at a time, and the table's latency and memory come from that). Writes OUT/zoo_shapes.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import measure_in_subprocess, report, split_variant  # noqa: E402

DEFAULT_MODELS = ["cnn_shapes", "cnn_shapes_dws", "mobilenetv1_025", "mobilenetv2_035", "mobilenetv3_small_075",
                  "shufflenet_v2_x0_5", "squeezenet1_1", "efficientnet_b0"]
BASELINE = "cnn_shapes"
PAIRED = "cnn_shapes_dws"  # the baseline and every variant of its depthwise-separable twin take --pair-seeds


def paired(model: str) -> bool:
    return split_variant(model)[0] in (BASELINE, PAIRED)


def key(model: str, seed: int | str, threads: int) -> str:
    return f"{model}@{seed}@threads{threads}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--pair-seeds", nargs="+", type=int, default=None,
                        help=f"seeds for {BASELINE} and {PAIRED}[:args] (default: --seeds); more seeds tame their seed spread")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (each in its own process)")
    parser.add_argument("--retime", action="store_true",
                        help="time every model again, alone and untrained, for the latency columns (after --jobs > 1)")
    parser.add_argument("--fresh", action="store_true", help="retrain even what OUT/zoo_shapes_runs.json holds")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tabulate what OUT/zoo_shapes_runs.json holds (missing runs are listed)")
    args = parser.parse_args()
    models = args.models
    if models == ["all"]:
        sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
        from slimkit.zoo import list_models

        models = [m for m in list_models() if m not in ("minilm_l6", "mlp_digits", "lenet_300_100")]

    from rich.progress import Progress, track

    cache_path = args.out / "zoo_shapes_runs.json"
    cache = {} if args.fresh or not cache_path.exists() else json.loads(cache_path.read_text())
    seeds_of = {m: (args.pair_seeds or args.seeds) if paired(m) else args.seeds for m in models}
    runs = {(m, s): cache[key(m, s, args.threads)] for m in models for s in seeds_of[m] if key(m, s, args.threads) in cache}
    todo = [] if args.report_only else [(m, s) for m in models for s in seeds_of[m] if (m, s) not in runs]
    lock = threading.Lock()

    def measure(model: str, seed: int, *extra: str) -> dict:
        name, model_args = split_variant(model)
        cli = ["--task", "shapes-cnn", "--model", name, "--seed", str(seed), "--repeats", str(args.repeats),
               "--threads", str(args.threads), *extra]
        for item in model_args:
            cli += ["--model-arg", item]
        return measure_in_subprocess(cli)

    def save(cache_key: str, result: dict) -> None:
        with lock:  # the cache file is rewritten whole, atomically, after every run
            cache[cache_key] = result
            args.out.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=2) + "\n")
            os.replace(tmp, cache_path)

    def train(model: str, seed: int) -> None:
        result = measure(model, seed)
        save(key(model, seed, args.threads), result)
        runs[(model, seed)] = result

    with Progress() as progress, ThreadPoolExecutor(max(1, args.jobs)) as pool:
        bar = progress.add_task(f"training zoo models ({args.jobs} at once)", total=len(todo))
        for future in as_completed([pool.submit(train, m, s) for m, s in todo]):
            future.result()
            progress.advance(bar)
    timing = {}
    if args.retime:
        for model in track(models, description="timing each model alone"):
            retime_key = key(model, "retime", args.threads)
            if retime_key not in cache and not args.report_only:
                save(retime_key, measure(model, 0, "--epochs", "0"))
            if retime_key in cache:
                timing[model] = {k: cache[retime_key][k] for k in ("latency_b1", "latency_bN", "peak_memory_bytes")}
    missing = [f"{m}@{s}" for m in models for s in seeds_of[m] if (m, s) not in runs]
    if missing:
        print(f"not yet measured (left out of the table): {', '.join(missing)}")
    models = [m for m in models if any((m, s) in runs for s in seeds_of[m])]
    seeds_of = {m: [s for s in seeds_of[m] if (m, s) in runs] for m in models}
    rows, accs = {}, {}
    for name in models:
        per_seed = [runs[(name, s)] for s in seeds_of[name]]
        accs[name] = [m["quality"] for m in per_seed]
        rows[name] = {**per_seed[0], **timing.get(name, {}), "quality": statistics.median(accs[name])}
    base = rows.get(BASELINE)
    extra = {"seeds": [" ".join(map(str, seeds_of[n])) for n in rows],
             "acc per seed": [" ".join(f"{a:.4f}" for a in accs[n]) for n in rows],
             "acc mean ± std": [f"{statistics.mean(accs[n]):.4f} ± {statistics.stdev(accs[n]):.4f}"
                                if len(accs[n]) > 1 else "—" for n in rows]}
    if base is not None:
        extra["Δ acc vs cnn_shapes (pt)"] = [f"{100 * (m['quality'] - base['quality']):+.2f}" for m in rows.values()]
        extra["× fewer MACs"] = [f"{base['macs'] / m['macs']:.2f}" for m in rows.values()]
    seeds = " ".join(map(str, args.seeds))
    pair_seeds = " ".join(map(str, args.pair_seeds or args.seeds))
    pair_flag = f" --pair-seeds {pair_seeds}" if args.pair_seeds else ""
    report(f"zoo models on shapes-cnn (same training budget; quality = median over each row's seeds; "
           f"{args.threads} threads{'; latency timed alone, untrained' if timing else ''})", rows, args.out, "zoo_shapes",
           f"python benchmarks/zoo_shapes.py --models {' '.join(args.models)} --seeds {seeds}{pair_flag} "
           f"--threads {args.threads}{f' --jobs {args.jobs}' if args.jobs > 1 else ''}{' --retime' if args.retime else ''}"
           f"{' --report-only' if args.report_only else ''}", extra)


if __name__ == "__main__":
    main()
