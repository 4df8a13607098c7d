"""Neural architecture search measured: strategies against random search at equal budget.

    .venv/bin/python benchmarks/nas.py [--sections strategies] [--seeds 0 ... 19] [--trials 100]

- latency: a per-block latency table of a shipped search space (`--space`) built by timing
  every piece on each backend, against `--samples` random candidates timed whole: Spearman.

- workers: one search over small networks for digits-cnn (candidates trained `--worker-epochs`
  epochs, one thread each) run by one worker process, then by two sharing a SQLite-backed Optuna
  study: wall times; then a worker killed mid-study and a new one finishing it: no finished trial lost.

- proxies: zero-cost proxies (synflow, grad-norm; the parameter count as the control) of
  `--proxy-candidates` candidates of the digits space at initialisation, against their accuracy
  after `--worker-epochs` epochs on digits-cnn: Spearman.

- strategies: the offline NAS-Bench-201 table of the `analog-nasbench` wheel (15,625 cells, CIFAR-10
  accuracies of AnalogNAS-Bench's digital training; see `slimkit.nas.tabular` for the data set
  caveat). Each strategy (random search, regularized evolution, TPE, REINFORCE) searches the 6
  edges x 5 operations for `--trials` queries per seed, through `slimkit.nas.search` (an Optuna
  study each). Reported: mean and standard deviation over seeds of the best accuracy found, its
  regret to the table's best, the share of cells at least as good, wins against random search
  seed by seed, and the mean best-so-far curve (plotted). Queries are table lookups: the time is
  the strategies' own.

Writes OUT/nas_SECTION.md and .json (and nas_strategies.png).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import run_section_loop  # noqa: E402

STRATEGIES = ["random", "evolution", "tpe", "reinforce"]
ONE_SHOT = ("supernet", "slices", "controls", "front")
SECTIONS = {
    "strategies": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --trials {a.trials} "
                            f"--strategies {' '.join(a.strategies)}",
    "workers": lambda a: f"--worker-trials {a.worker_trials} --worker-epochs {a.worker_epochs}",
    "proxies": lambda a: f"--proxy-candidates {a.proxy_candidates} --worker-epochs {a.worker_epochs}",
    "supernet": lambda a: f"--supernet-task {a.supernet_task} --space {a.space} --supernet-epochs {a.supernet_epochs} "
                          f"--supernet-random {a.supernet_random} --supernet-candidates {a.supernet_candidates} "
                          f"--supernet-max-macs {a.supernet_max_macs} --calibration-rows {a.calibration_rows}"
                          + (f" --scratch-epochs {a.scratch_epochs}" if a.scratch_epochs else ""),
    "slices": lambda a: f"--finetune-epochs {a.finetune_epochs} --finetune-lr {a.finetune_lr} --run-dir RUN_DIR",
    "controls": lambda a: f"--supernet-task {a.supernet_task} --v2-widths {' '.join(map(str, a.v2_widths))} "
                          f"--v2-small-widths {' '.join(map(str, a.v2_small_widths))} --run-dir RUN_DIR"
                          + (f" --scratch-epochs {a.scratch_epochs}" if a.scratch_epochs else ""),
    "front": lambda a: f"--supernet-task {a.supernet_task} --space {a.space} --front-backend {a.front_backend} "
                       f"--front-trials {a.front_trials} --front-picks {a.front_picks} --repeats {a.repeats} "
                       f"--rounds {a.rounds} --calibration-rows {a.calibration_rows} --run-dir RUN_DIR",
    "latency": lambda a: f"--space {a.space} --backends {' '.join(a.backends)} --samples {a.samples} "
                         f"--repeats {a.repeats} --rounds {a.rounds}",
}


def strategies_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.nas.search import finished, search
    from slimkit.nas.strategies import best_so_far
    from slimkit.nas.tabular import EDGES, load_nasbench201

    table = load_nasbench201()
    space = {edge: list(range(5)) for edge in EDGES}

    def accuracy(params: dict[str, int]) -> float:
        return table.accuracy([params[e] for e in EDGES])

    runs: dict[str, list[dict[str, Any]]] = {}
    for strategy in args.strategies:
        runs[strategy] = []
        for seed in args.seeds:
            started = time.perf_counter()
            trials = finished(search(accuracy, space, strategy, args.trials, seed=seed))
            values = [t.value for t in trials]
            best = max(trials, key=lambda t: t.value)
            runs[strategy].append({"seed": seed, "best": best.value, "cell": table.describe(
                tuple(best.params[e] for e in EDGES)), "curve": best_so_far(values),
                "distinct": len({tuple(t.params[e] for e in EDGES) for t in trials}),
                "seconds": time.perf_counter() - started})
        mean = statistics.mean(r["best"] for r in runs[strategy])
        progress(f"{strategy}: mean best {mean:.3f} over {len(args.seeds)} seeds")
    return {"trials": args.trials, "seeds": args.seeds, "table_best": table.best, "cells": len(table.records),
            "ranks": {s: [table.rank(r["best"]) for r in rs] for s, rs in runs.items()}, "runs": runs}


def render_strategies(res: dict[str, Any], command: str, stamp: str) -> str:
    runs, best = res["runs"], res["table_best"]
    lines = ["# Search strategies on NAS-Bench-201 (AnalogNAS-Bench's CIFAR-10 table)", "",
             f"`{command}`; {stamp}.", "",
             f"{res['cells']:,} cells, best {best:.2f}%. Each strategy queries {res['trials']} cells per seed "
             f"(repeats count), {len(res['seeds'])} seeds. Best: the most accurate cell found; regret: the table's "
             "best minus it; top share: cells at least as accurate as it; wins: seeds where the strategy's best "
             "beats random search's with the same seed (ties half).", "",
             "| strategy | mean best % | std | mean regret | median top share | distinct cells | wins vs random "
             "| s per search |", "|---|---|---|---|---|---|---|---|"]
    rnd = {r["seed"]: r["best"] for r in runs.get("random", [])}
    for s, rs in runs.items():
        bests = [r["best"] for r in rs]
        wins = sum(1.0 if r["best"] > rnd[r["seed"]] else 0.5 if r["best"] == rnd[r["seed"]] else 0.0
                   for r in rs) if rnd and s != "random" else None
        lines.append(f"| {s} | {statistics.mean(bests):.3f} | {statistics.stdev(bests) if len(bests) > 1 else 0:.3f} | "
                     f"{best - statistics.mean(bests):.3f} | {100 * statistics.median(res['ranks'][s]):.3f}% | "
                     f"{statistics.mean(r['distinct'] for r in rs):.1f} | "
                     f"{'—' if wins is None else f'{wins:g} of {len(rs)}'} | "
                     f"{statistics.mean(r['seconds'] for r in rs):.2f} |")
    curve_at = [k for k in (10, 25, 50, 100, 200, 500) if k <= res["trials"]]
    lines += ["", "Mean best-so-far accuracy after N queries:", "",
              "| strategy | " + " | ".join(f"N={k}" for k in curve_at) + " |",
              "|---|" + "---|" * len(curve_at)]
    for s, rs in runs.items():
        lines.append(f"| {s} | " + " | ".join(f"{statistics.mean(r['curve'][k - 1] for r in rs):.3f}"
                                              for k in curve_at) + " |")
    if rnd:
        base = statistics.mean(rnd.values())
        lines += [""] + [f"- {s}: {statistics.mean(r['best'] for r in rs) - base:+.3f} pt over random search "
                         "(bar: regularized evolution and TPE above random search)." for s, rs in runs.items()
                         if s != "random"]
    lines.append("- Plot: nas_strategies.png (mean best-so-far per strategy).")
    return "\n".join(lines + [""])


def latency_section(args, folder: Path, progress) -> dict[str, Any]:
    import random

    from slimkit.nas.latency import build_table, validate
    from slimkit.nas.space import builtin_space

    space = builtin_space(args.space)
    dims = space.dimensions()
    rng = random.Random(0)
    specs = [space.spec({k: rng.choice(v) for k, v in dims.items()}) for _ in range(args.samples)]
    out = {}
    for backend in args.backends:
        started = time.perf_counter()
        table = build_table(space, (3, 32, 32), 10, backend, threads=args.threads, repeats=args.repeats,
                            rounds=args.rounds)
        built = time.perf_counter() - started
        table.save(folder / f"{backend}.json")
        report = validate(table, specs, repeats=args.repeats, rounds=args.rounds)
        out[backend] = {"pieces": len(table.entries), "build_seconds": built, **report,
                        "specs": [s.strings() for s in specs]}
        progress(f"{backend}: {len(table.entries)} pieces in {built:.0f} s, Spearman {report['spearman']:.3f}")
    return {"space": args.space, "space_size": space.size(), "samples": args.samples, "backends": out}


def render_latency(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Latency lookup table against measured whole networks", "", f"`{command}`; {stamp}.", "",
             f"Space `{res['space']}` ({res['space_size']:,} candidates, 32x32 inputs, 10 classes). The table times "
             "every piece any candidate can contain (stem, each block at its input shape, classifier) alone at "
             f"batch 1 on the backend, minus a null piece (a ReLU) on the same input shape, the call's own cost; "
             f"{res['samples']} candidates drawn at random (seed 0) are then timed whole on the same backend in the "
             "same process. Pieces and networks are timed in interleaved rounds (each the median of the repeats; "
             "per item the median over rounds), so a slow spell of the shared CPU falls on all alike.", "",
             "| backend | pieces timed | build s | Spearman (predicted vs measured) | median measured / predicted "
             "| measured ms (min-max) |", "|---|---|---|---|---|---|"]
    for backend, r in res["backends"].items():
        lines.append(f"| {backend} | {r['pieces']} | {r['build_seconds']:.0f} | {r['spearman']:.3f} | "
                     f"{r['median_ratio']:.2f} | {min(r['measured_ms']):.3f}-{max(r['measured_ms']):.3f} |")
    lines += ["", "- Bar: Spearman >= 0.9 between the table's prediction and measured end-to-end latency."]
    return "\n".join(lines + [""])


DIGITS_SPACE = {"base": ["conv_r1_k3_s1_c16", "ir_r2_k3_s2_e4_c32", "ir_r2_k3_s1_e4_c48"], "stem": 16,
                "stages": [{}, {"depth": [1, 2, 3], "kernel": [3, 5], "width": [0.5, 1.0]},
                           {"depth": [1, 2], "kernel": [3, 5], "width": [0.5, 1.0]}]}


def _worker(spec: dict[str, Any]) -> None:
    """One search worker: candidates of DIGITS_SPACE trained on digits-cnn, one thread."""
    import torch

    from slimkit.nas.search import search
    from slimkit.nas.space import SearchSpace
    from slimkit.tasks import build_task
    from slimkit.tasks.context import Context
    from slimkit.train.config import TrainConfig
    from slimkit.zoo.arch import build_arch

    torch.set_num_threads(1)
    space = SearchSpace(**DIGITS_SPACE)
    task = build_task("digits-cnn")
    ctx = Context(task=task, seed=0)
    cfg = TrainConfig(epochs=spec["epochs"], lr=2e-3, batch_size=64)

    def objective(params):
        torch.manual_seed(0)
        net = build_arch(space.spec(params), 10, 1)
        ctx.train(net, cfg, description="candidate")
        return ctx.validate(net)

    search(objective, space.dimensions(), "evolution", spec["trials"], seed=spec["seed"], storage=spec["storage"],
           study_name="workers", options={"population": 4, "sample": 2})


def workers_section(args, folder: Path, progress) -> dict[str, Any]:
    import json
    import subprocess

    import optuna

    from slimkit.nas.search import finished

    def start(url: str, seed: int) -> subprocess.Popen:
        spec = {"storage": url, "trials": args.worker_trials, "epochs": args.worker_epochs, "seed": seed}
        log = open(folder / f"worker-{seed}.log", "w")
        return subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.DEVNULL,
                                stderr=log)

    def failed(what: str, seeds) -> RuntimeError:
        tails = [f"worker {s}: " + (folder / f"worker-{s}.log").read_text()[-1500:] for s in seeds]
        return RuntimeError(f"a worker failed ({what})\n" + "\n".join(tails))

    def done(url: str) -> list:
        try:
            return finished(optuna.load_study(study_name="workers", storage=url))
        except KeyError:
            return []

    walls = {}
    for n in (1, 2):
        url = f"sqlite:///{folder / f'{n}.db'}"
        started = time.perf_counter()
        procs = [start(url, seed) for seed in range(n)]
        if any([p.wait() != 0 for p in procs]):
            raise failed(f"{n} workers", range(n))
        walls[str(n)] = {"seconds": time.perf_counter() - started, "trials": len(done(url))}
        progress(f"{n} worker(s): {walls[str(n)]['trials']} trials in {walls[str(n)]['seconds']:.1f} s")
    # a worker killed mid-study: the finished trials stay, a new worker finishes the study
    url = f"sqlite:///{folder / 'kill.db'}"
    procs = [start(url, seed) for seed in (10, 11)]
    while len(done(url)) < args.worker_trials // 3:
        time.sleep(0.2)
    procs[0].kill()
    procs[0].wait()
    before = {t.number: (t.params, t.value) for t in done(url)}
    late = start(url, 12)
    if procs[1].wait() != 0 or late.wait() != 0:
        raise failed("after the kill", (11, 12))
    after = done(url)
    kept = all(t.number not in before or (t.params, t.value) == before[t.number] for t in after) and \
        set(before) <= {t.number for t in after}
    return {"trials": args.worker_trials, "epochs": args.worker_epochs, "walls": walls,
            "kill": {"finished_at_kill": len(before), "finished_after": len(after), "all_kept": kept}}


def render_workers(res: dict[str, Any], command: str, stamp: str) -> str:
    w = res["walls"]
    return "\n".join([
        "# Two search workers on one SQLite-backed Optuna study", "", f"`{command}`; {stamp}.", "",
        f"A study of {res['trials']} candidates (aging evolution over small convolutional networks for digits-cnn, "
        f"each trained {res['epochs']} epochs with one thread, then validated) run by one worker process, then "
        "by two worker processes sharing the study through `sqlite:///...` (each runs until the study holds "
        "the trials; the evolution sampler rebuilds its population from the stored trials).", "",
        "| workers | finished trials | wall s |", "|---|---|---|",
        f"| 1 | {w['1']['trials']} | {w['1']['seconds']:.1f} |",
        f"| 2 | {w['2']['trials']} | {w['2']['seconds']:.1f} |", "",
        f"- Two workers: {w['1']['seconds'] / w['2']['seconds']:.2f}x faster "
        "(bar: about half the wall time).",
        f"- A worker killed (SIGKILL) after {res['kill']['finished_at_kill']} finished trials; a new worker joined "
        f"and the study ended with {res['kill']['finished_after']} finished trials; every trial finished before "
        f"the kill kept its parameters and value: {res['kill']['all_kept']}.", ""])


def proxies_section(args, folder: Path, progress) -> dict[str, Any]:
    import itertools
    import random

    import torch

    from slimkit.nas.latency import spearman
    from slimkit.nas.proxies import PROXIES
    from slimkit.nas.space import SearchSpace
    from slimkit.tasks import build_task
    from slimkit.tasks.context import Context
    from slimkit.train.config import TrainConfig
    from slimkit.zoo.arch import build_arch

    space = SearchSpace(**DIGITS_SPACE)
    dims = space.dimensions()
    every = [dict(zip(dims, v)) for v in itertools.product(*dims.values())]
    chosen = random.Random(0).sample(every, min(args.proxy_candidates, len(every)))
    task = build_task("digits-cnn")
    ctx = Context(task=task, seed=0)
    batch = task.data.train.inputs[0][:64], task.data.train.targets[:64]
    rows = []
    for params in chosen:
        torch.manual_seed(0)
        net = build_arch(space.spec(params), 10, 1)
        scores = {name: fn(net, *batch) for name, fn in PROXIES.items()}
        ctx.train(net, TrainConfig(epochs=args.worker_epochs, lr=2e-3, batch_size=64), description="candidate")
        rows.append({"spec": space.spec(params).strings(), "accuracy": ctx.validate(net), **scores})
    progress(f"{len(rows)} candidates trained")
    acc = [r["accuracy"] for r in rows]
    return {"candidates": len(rows), "space_size": len(every), "epochs": args.worker_epochs, "rows": rows,
            "spearman": {name: spearman([r[name] for r in rows], acc) for name in PROXIES}}


def render_proxies(res: dict[str, Any], command: str, stamp: str) -> str:
    acc = sorted(r["accuracy"] for r in res["rows"])
    lines = ["# Zero-cost proxies against trained accuracy", "", f"`{command}`; {stamp}.", "",
             f"{res['candidates']} distinct candidates of the digits space ({res['space_size']} in all), each scored "
             f"at initialisation (seed 0) and trained {res['epochs']} epochs on digits-cnn; validation accuracy "
             f"{acc[0]:.3f}-{acc[-1]:.3f}. Spearman rank correlation of each score with the trained accuracy:", "",
             "| proxy | Spearman |", "|---|---|"]
    lines += [f"| {name} | {rho:.3f} |" for name, rho in res["spearman"].items()]
    lines += ["", "- `params` is the control: a proxy earns its place by ranking better than the parameter count."]
    return "\n".join(lines + [""])


def _test_quality(task, net) -> float:
    from slimkit.measure.quality import predict

    return task.evaluate(predict(net.eval(), task.data.test, 256), task.data.test.targets)["quality"]


def _task_io(task) -> tuple[tuple[int, ...], int]:
    """The task's input shape (one row) and number of classes."""
    example = task.data.train.inputs[0][:1]
    return tuple(int(d) for d in example.shape[1:]), int(task.build_model().eval()(example).shape[-1])


def _scratch_worker(spec: dict[str, Any]) -> None:
    """Train architectures (spec dicts) from scratch on a task with its baseline recipe (its epochs
    replaced by spec["epochs"] if given), one thread; write their validation and test quality to spec["out"]."""
    import torch

    from slimkit.core.io import atomic_write_json
    from slimkit.tasks import build_task
    from slimkit.tasks.context import Context
    from slimkit.zoo.arch import build_arch

    torch.set_num_threads(1)
    task = build_task(spec["task"])
    ctx = Context(task=task, seed=spec.get("seed", 0))
    cfg = task.baseline_train
    if spec.get("epochs"):
        cfg = cfg.model_copy(update={"epochs": spec["epochs"]})
    rows = []
    for arch in spec["archs"]:
        torch.manual_seed(spec.get("seed", 0))
        net = build_arch(arch, spec["num_classes"], spec["in_chans"])
        started = time.perf_counter()
        fit = ctx.train(net, cfg, description="from scratch")
        rows.append({"spec": arch["stages"], "val": ctx.validate(net), "test": _test_quality(task, net),
                     "seconds": time.perf_counter() - started, "epochs": cfg.epochs, "best_epoch": fit.best_epoch})
        atomic_write_json(spec["out"], rows)


def supernet_section(args, folder: Path, progress) -> dict[str, Any]:
    import json
    import random
    import subprocess

    import torch

    from slimkit.measure.macs import count_macs
    from slimkit.nas.space import builtin_space
    from slimkit.nas.supernet import Supernet, evaluate_candidate, train_supernet
    from slimkit.tasks import build_task
    from slimkit.tasks.context import Context
    from slimkit.train.config import TrainConfig

    torch.set_num_threads(1)
    task = build_task(args.supernet_task)
    ctx = Context(task=task, seed=0)
    example = task.data.train.inputs[0][:1]
    shape, num_classes = _task_io(task)
    in_chans = shape[0]
    space = builtin_space(args.space)
    torch.manual_seed(0)
    supernet = Supernet(space, num_classes, in_chans)
    # the candidates compared: the smallest and random ones under the MACs cap (the cap bounds the
    # controls' from-scratch training time), drawn with seed 0
    rng = random.Random(0)
    chosen = [supernet.smallest]
    while len(chosen) < 1 + args.supernet_candidates:
        params = supernet.sample(rng)
        macs = count_macs(supernet.extract(params).eval(), (example,))
        if macs <= args.supernet_max_macs and params not in chosen:
            chosen.append(params)
    specs = [space.spec(p) for p in chosen]
    scratch_out = folder / "scratch.json"
    job = {"task": args.supernet_task, "archs": [s.model_dump() for s in specs], "num_classes": num_classes,
           "in_chans": in_chans, "out": str(scratch_out), "epochs": args.scratch_epochs}
    log = open(folder / "scratch.log", "w")
    worker = subprocess.Popen([sys.executable, __file__, "--scratch-worker", json.dumps(job)],
                              stdout=subprocess.DEVNULL, stderr=log)
    progress(f"{len(specs)} candidates training from scratch in a second process (one thread)")
    cfg = TrainConfig(epochs=args.supernet_epochs, batch_size=task.baseline_train.batch_size,
                      lr=task.baseline_train.lr)
    started = time.perf_counter()
    fit = train_supernet(supernet, ctx, cfg, random_subnets=args.supernet_random)
    train_seconds = time.perf_counter() - started
    progress(f"supernet trained: {args.supernet_epochs} epochs in {train_seconds:.0f} s")
    if args.run_dir is not None:
        from slimkit.core.io import save_state_dict

        args.run_dir.mkdir(parents=True, exist_ok=True)
        save_state_dict(args.run_dir / "supernet.safetensors", supernet.state_dict())
    rows = []
    for params, spec in zip(chosen, specs):
        t = time.perf_counter()
        net, val = evaluate_candidate(supernet, params, ctx, args.calibration_rows)
        rows.append({"spec": spec.strings(), "macs": count_macs(net, (example,)),
                     "params": sum(p.numel() for p in net.parameters()), "supernet_val": val,
                     "supernet_test": _test_quality(task, net), "eval_seconds": time.perf_counter() - t})
    if worker.wait() != 0:
        raise RuntimeError("the from-scratch worker failed:\n" + (folder / "scratch.log").read_text()[-2000:])
    scratch = json.loads(scratch_out.read_text())
    for row, s in zip(rows, scratch):
        row.update(scratch_val=s["val"], scratch_test=s["test"], scratch_seconds=s["seconds"],
                   scratch_epochs=s["epochs"])
    return {"task": args.supernet_task, "space": args.space, "space_size": space.size(),
            "epochs": args.supernet_epochs, "random_subnets": args.supernet_random, "max_macs": args.supernet_max_macs,
            "calibration_rows": args.calibration_rows, "train_seconds": train_seconds, "history": fit.history,
            "scratch_train": {**task.baseline_train.model_dump(), **({"epochs": args.scratch_epochs}
                                                                     if args.scratch_epochs else {})}, "rows": rows}


def render_supernet(res: dict[str, Any], command: str, stamp: str) -> str:
    st = res["scratch_train"]
    lines = ["# One-shot supernet: candidates as slices against the same networks trained from scratch", "",
             f"`{command}`; {stamp}.", "",
             f"A weight-sharing supernet over `{res['space']}` ({res['space_size']:,} candidates) trained once on "
             f"{res['task']}: {res['epochs']} epochs, sandwich rule (largest on the labels; smallest and "
             f"{res['random_subnets']} random candidate(s) per batch on the largest's predictions), "
             f"{res['train_seconds'] / 60:.1f} min on one thread. Each candidate is then sliced out, its BatchNorm "
             f"statistics re-estimated on {res['calibration_rows']} training rows, and evaluated: no training. "
             f"The controls are the same architectures trained from scratch with the task's baseline recipe "
             f"({st['epochs']} epochs, batch {st['batch_size']}, lr {st['lr']:g}, best validation epoch kept), in "
             f"a second process. Candidates: the smallest, and random ones of at most "
             f"{res['max_macs'] / 1e6:g} MMACs (seed 0; the cap bounds the controls' training time).", "",
             "| candidate | MMACs | params | supernet val | scratch val | supernet test | scratch test | "
             "test diff pt | scratch min |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| `{' '.join(r['spec'][1:])}` | {r['macs'] / 1e6:.2f} | {r['params']:,} | "
                     f"{r['supernet_val']:.4f} | {r['scratch_val']:.4f} | {r['supernet_test']:.4f} | "
                     f"{r['scratch_test']:.4f} | {100 * (r['supernet_test'] - r['scratch_test']):+.2f} | "
                     f"{r['scratch_seconds'] / 60:.1f} |")
    worst = min(100 * (r["supernet_test"] - r["scratch_test"]) for r in res["rows"])
    lines += ["", f"- Worst test difference (supernet slice minus scratch): {worst:+.2f} pt "
              f"(bar: within 2 pt: {'met' if worst >= -2 else 'not met'}).",
              f"- The first stage (`{res['rows'][0]['spec'][0]}`) is fixed and left out of the candidate column.", ""]
    return "\n".join(lines)


def _params_of(space, strings: list[str]) -> dict[str, Any]:
    """The candidate of ``space`` whose spec strings are ``strings``."""
    from slimkit.zoo.arch import parse_stage

    params: dict[str, Any] = {}
    dims = space.dimensions()
    for i, stage in enumerate(parse_stage(s) for s in strings):
        for key in ("depth", "kernel", "expand", "se", "block"):
            if f"s{i}.{key}" in dims:
                params[f"s{i}.{key}"] = getattr(stage, key)
        if f"s{i}.width" in dims:
            params[f"s{i}.width"] = next(w for w in dims[f"s{i}.width"]
                                         if space.spec({f"s{i}.width": w}).stages[i].out == stage.out)
    if space.spec(params).strings() != list(strings):
        raise ValueError(f"not a candidate of the space: {strings}")
    return params


def slices_section(args, folder: Path, progress) -> dict[str, Any]:
    """The supernet of --run-dir (from --sections supernet): its largest candidate and the compared
    ones sliced out, their accuracy on the training rows too (fit or underfit?), then each
    fine-tuned --finetune-epochs from its slice."""
    import torch

    from slimkit.core.io import load_into_, load_state_dict, read_json
    from slimkit.measure.quality import predict
    from slimkit.nas.space import builtin_space
    from slimkit.nas.supernet import Supernet, evaluate_candidate
    from slimkit.tasks import build_task
    from slimkit.tasks.context import Context
    from slimkit.train.config import TrainConfig

    torch.set_num_threads(args.threads)
    if args.run_dir is None or not (args.run_dir / "supernet.safetensors").exists():
        raise SystemExit("slices: needs --run-dir holding supernet.safetensors (--sections supernet)")
    previous = read_json(args.out / "nas_supernet.json")
    task = build_task(previous["task"])
    ctx = Context(task=task, seed=0)
    space = builtin_space(previous["space"])
    shape, num_classes = _task_io(task)
    supernet = Supernet(space, num_classes, shape[0])
    load_into_(supernet, load_state_dict(args.run_dir / "supernet.safetensors"), "supernet")

    def train_quality(net) -> float:
        return task.evaluate(predict(net.eval(), task.data.train, 256), task.data.train.targets)["quality"]

    rows = []
    candidates = [("largest", supernet.largest, None)] + [
        ("compared", _params_of(space, r["spec"]), r) for r in previous["rows"]]
    base = task.baseline_train
    for kind, params, before in candidates:
        net, val = evaluate_candidate(supernet, params, ctx, previous["calibration_rows"])
        row = {"kind": kind, "spec": space.spec(params).strings(), "slice_train": train_quality(net),
               "slice_val": val, "slice_test": _test_quality(task, net)}
        if before is not None:
            row.update(scratch_test=before["scratch_test"], scratch_epochs=before["scratch_epochs"])
            started = time.perf_counter()
            ctx.train(net, TrainConfig(epochs=args.finetune_epochs, batch_size=base.batch_size, lr=args.finetune_lr),
                      description="fine-tune")
            row.update(tuned_val=ctx.validate(net), tuned_test=_test_quality(task, net),
                       tuned_seconds=time.perf_counter() - started)
        rows.append(row)
        progress(f"{kind} {row['slice_test']:.4f}" + (f" tuned {row['tuned_test']:.4f}" if before else ""))
    return {"task": previous["task"], "space": previous["space"], "supernet_epochs": previous["epochs"],
            "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr, "rows": rows}


def render_slices(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Supernet slices: fit on the training rows, and after a short fine-tune", "", f"`{command}`; {stamp}.",
             "", f"The supernet of `{res['space']}` trained {res['supernet_epochs']} epochs on {res['task']} "
             "(`--sections supernet`, same run directory). Each candidate sliced out and its BatchNorm "
             "statistics re-estimated; accuracy on the training split (all rows), validation and test; then "
             f"fine-tuned {res['finetune_epochs']} epochs from its slice (lr {res['finetune_lr']:g}, batch as the "
             "task's recipe) against the same network trained from scratch (from `nas_supernet.md`).", "",
             "| candidate | slice train | slice val | slice test | tuned test | from scratch test | tuned - scratch pt "
             "| tune min |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        name = "largest" if r["kind"] == "largest" else f"`{' '.join(r['spec'][1:])}`"
        tuned = r.get("tuned_test")
        lines.append(f"| {name} | {r['slice_train']:.4f} | {r['slice_val']:.4f} | {r['slice_test']:.4f} | "
                     + (f"{tuned:.4f} | {r['scratch_test']:.4f} | {100 * (tuned - r['scratch_test']):+.2f} | "
                        f"{r['tuned_seconds'] / 60:.1f} |" if tuned is not None else "— | — | — | — |"))
    return "\n".join(lines + [""])


def _v2_controls(args) -> list[tuple[str, Any]]:
    from slimkit.zoo.arch import mobilenetv2_spec

    out = [(f"MobileNetV2 x{w:g} (small input)", mobilenetv2_spec(w, small_input=True, dropout=0.0))
           for w in args.v2_small_widths]
    out += [(f"MobileNetV2 x{w:g}", mobilenetv2_spec(w, small_input=False, dropout=0.0)) for w in args.v2_widths]
    return out


def controls_section(args, folder: Path, progress) -> dict[str, Any]:
    """MobileNetV2's width family trained from scratch (the task's baseline recipe, one thread)."""
    from slimkit.core.io import read_json

    from slimkit.measure.macs import count_macs
    from slimkit.zoo.arch import build_arch

    import torch

    if args.run_dir is None:
        raise SystemExit("controls: give --run-dir (the front section reads the controls from it)")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    from slimkit.tasks import build_task

    controls = _v2_controls(args)
    out = args.run_dir / "controls.json"
    shape, num_classes = _task_io(build_task(args.supernet_task))
    _scratch_worker({"task": args.supernet_task, "archs": [spec.model_dump() for _, spec in controls],
                     "num_classes": num_classes, "in_chans": shape[0], "out": str(out), "epochs": args.scratch_epochs})
    rows = read_json(out)
    x = torch.zeros(1, *shape)
    for (name, spec), row in zip(controls, rows):
        net = build_arch(spec, num_classes, shape[0]).eval()
        row.update(name=name, arch=spec.model_dump(), macs=count_macs(net, (x,)),
                   params=sum(p.numel() for p in net.parameters()))
        progress(f"{name}: test {row['test']:.4f}")
    from slimkit.core.io import atomic_write_json

    atomic_write_json(out, rows)
    return {"task": args.supernet_task, "rows": rows}


def render_controls(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# MobileNetV2 width multipliers trained from scratch (the NAS front's control)", "",
             f"`{command}`; {stamp}.", "",
             f"Each trained on {res['task']} with the task's baseline recipe, one thread, seed 0; best validation "
             "epoch kept. `small input`: the stem and the first stride-2 stage at stride 1 (CIFAR-style, 8x "
             "downsampling); otherwise torchvision's layout (32x downsampling: 1x1 at the end for 32x32 inputs).", "",
             "| network | MMACs | params | val | test | train min |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['name']} | {r['macs'] / 1e6:.2f} | {r['params']:,} | {r['val']:.4f} | {r['test']:.4f} | "
                     f"{r['seconds'] / 60:.1f} |")
    return "\n".join(lines + [""])


def front_section(args, folder: Path, progress) -> dict[str, Any]:
    """One-shot search on the trained supernet (NSGA-II over validation accuracy and the latency
    table's prediction), then the searched front and MobileNetV2's width family timed end to end
    on the backend together, and scored on the test split."""

    import torch

    from slimkit.core.io import load_into_, load_state_dict, read_json
    from slimkit.measure.macs import count_macs
    from slimkit.nas.latency import build_table, compile_module, time_rounds
    from slimkit.nas.search import finished, search
    from slimkit.nas.space import builtin_space
    from slimkit.measure.pareto import pareto_front
    from slimkit.nas.supernet import Supernet, evaluate_candidate
    from slimkit.tasks import build_task
    from slimkit.tasks.context import Context
    from slimkit.zoo.arch import ArchSpec, build_arch

    torch.set_num_threads(args.threads)
    if args.run_dir is None or not (args.run_dir / "supernet.safetensors").exists() or \
            not (args.run_dir / "controls.json").exists():
        raise SystemExit("front: needs --run-dir holding supernet.safetensors (--sections supernet) and "
                         "controls.json (--sections controls)")
    controls = read_json(args.run_dir / "controls.json")
    wanted = [spec.strings() for _, spec in _v2_controls(args)]
    if [ArchSpec(**c["arch"]).strings() if "arch" in c else None for c in controls] != wanted:
        raise SystemExit(f"front: {args.run_dir / 'controls.json'} holds {len(controls)} networks, not the "
                         f"{len(wanted)} of --v2-widths/--v2-small-widths (run --sections controls to the end)")
    task = build_task(args.supernet_task)
    ctx = Context(task=task, seed=0)
    space = builtin_space(args.space)
    shape, num_classes = _task_io(task)
    supernet = Supernet(space, num_classes, shape[0])
    load_into_(supernet, load_state_dict(args.run_dir / "supernet.safetensors"), "supernet")
    supernet.eval()
    started = time.perf_counter()
    table = build_table(space, shape, num_classes, args.front_backend, threads=args.threads, repeats=args.repeats,
                        rounds=args.rounds)
    table_seconds = time.perf_counter() - started
    progress(f"latency table on {args.front_backend}: {len(table.entries)} pieces in {table_seconds:.0f} s")
    started = time.perf_counter()

    def objective(params):
        net, val = evaluate_candidate(supernet, params, ctx, args.calibration_rows)
        return {"value": [val, table.predict(space.spec(params))], "attrs": {}}

    study = search(objective, space.dimensions(), "nsga2", args.front_trials, seed=0,
                   directions=("maximize", "minimize"), options={"population_size": 20})
    search_seconds = time.perf_counter() - started
    trials = finished(study)
    progress(f"{len(trials)} candidates evaluated from the supernet in {search_seconds:.0f} s")
    points = [(t.values[1], t.values[0]) for t in trials]
    front = [trials[i] for i in pareto_front(points)]
    if len(front) > args.front_picks:  # spread evenly along the front
        step = (len(front) - 1) / (args.front_picks - 1)
        front = [front[round(i * step)] for i in range(args.front_picks)]
    searched = []
    for t in front:
        net, val = evaluate_candidate(supernet, t.params, ctx, args.calibration_rows)
        searched.append({"name": "searched", "spec": space.spec(t.params), "net": net, "val": val,
                         "predicted_ms": t.values[1]})
    entries = searched + [{"name": c["name"], "spec": ArchSpec(**c["arch"]), "val": c["val"], "test": c["test"]}
                          for c in controls]
    x = torch.zeros(1, *shape)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="slimkit-front-") as tmp:
        runs = [compile_module(e.get("net") or build_arch(e["spec"], num_classes, shape[0]), shape, args.front_backend,
                               args.threads, Path(tmp) / str(i)) for i, e in enumerate(entries)]
        measured = time_rounds(runs, args.threads, args.repeats, args.rounds)
    rows = []
    for e, ms in zip(entries, measured):
        net = e.get("net") or build_arch(e["spec"], num_classes, shape[0])
        rows.append({"name": e["name"], "spec": e["spec"].strings(), "ms": ms, "val": e["val"],
                     "test": _test_quality(task, e["net"]) if "net" in e else e["test"],
                     "predicted_ms": e.get("predicted_ms"), "macs": count_macs(net.eval(), (x,)),
                     "params": sum(p.numel() for p in net.parameters())})
    supernet_json = args.out / "nas_supernet.json"
    supernet_seconds = read_json(supernet_json)["train_seconds"] if supernet_json.exists() else None
    return {"task": args.supernet_task, "space": args.space, "backend": args.front_backend, "rows": rows,
            "trials": len(trials), "table_seconds": table_seconds, "search_seconds": search_seconds,
            "supernet_seconds": supernet_seconds, "front_size": len(pareto_front(points)),
            "all": [{"val": t.values[0], "predicted_ms": t.values[1]} for t in trials]}


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["ms"] <= b["ms"] and a["test"] >= b["test"] and (a["ms"] < b["ms"] or a["test"] > b["test"])


def render_front(res: dict[str, Any], command: str, stamp: str) -> str:
    ours = [r for r in res["rows"] if r["name"] == "searched"]
    theirs = [r for r in res["rows"] if r["name"] != "searched"]
    budget = [("supernet training", res["supernet_seconds"]), ("latency table", res["table_seconds"]),
              ("search", res["search_seconds"])]
    total = sum(v for _, v in budget if v is not None)
    lines = ["# One-shot NAS against MobileNetV2's width multipliers on the accuracy/latency front", "",
             f"`{command}`; {stamp}.", "",
             f"The supernet of `{res['space']}` (trained by `--sections supernet`) searched with NSGA-II over "
             f"validation accuracy and the latency table's batch-1 prediction on {res['backend']}: "
             f"{res['trials']} candidates, each sliced out and BatchNorm-recalibrated, no training; "
             f"{res['front_size']} on the Pareto front, {len(ours)} of them (spread along it) kept with their "
             "supernet weights. Those and MobileNetV2 at several widths (trained from scratch, "
             "`--sections controls`) are then compiled on the backend and timed end to end together in "
             "interleaved rounds (batch 1, median), and scored on the test split.", "",
             "Search budget: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in budget if v is not None)
             + f"; {total / 60:.1f} min in all, one thread.", "",
             "| network | MMACs | params | measured ms | val | test | dominated by |", "|---|---|---|---|---|---|---|"]
    for r in sorted(res["rows"], key=lambda r: r["ms"]):
        others = theirs if r["name"] == "searched" else ours
        by = [o for o in others if _dominates(o, r)]
        label = f"searched `{' '.join(r['spec'][1:])}`" if r["name"] == "searched" else r["name"]
        lines.append(f"| {label} | {r['macs'] / 1e6:.2f} | {r['params']:,} | {r['ms']:.3f} | {r['val']:.4f} | "
                     f"{r['test']:.4f} | {len(by) or ''} |")
    beaten = [t for t in theirs if any(o["ms"] < t["ms"] and o["test"] > t["test"] for o in ours)]
    lost = [o for o in ours if any(_dominates(t, o) for t in theirs)]
    lines += ["", f"- MobileNetV2 points strictly dominated (faster and more accurate) by a searched network: "
              f"{len(beaten)} of {len(theirs)}; searched networks dominated by a MobileNetV2 point: {len(lost)} of "
              f"{len(ours)} (bar: at least one and none: {'met' if beaten and not lost else 'not met'}).", ""]
    return "\n".join(lines)


def plot_front(res: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    groups = {"searched (supernet weights)": [r for r in res["rows"] if r["name"] == "searched"],
              "MobileNetV2 (small input)": [r for r in res["rows"] if "small input" in r["name"]],
              "MobileNetV2": [r for r in res["rows"] if r["name"].startswith("MobileNetV2") and
                              "small input" not in r["name"]]}
    for (label, rows), marker in zip(groups.items(), "osD"):
        rows = sorted(rows, key=lambda r: r["ms"])
        if rows:
            ax.plot([r["ms"] for r in rows], [100 * r["test"] for r in rows], marker=marker, label=label)
    ax.set_xlabel(f"batch-1 latency on {res['backend']}, ms (measured)")
    ax.set_ylabel("test accuracy %")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "nas_front.png", dpi=120)
    plt.close(fig)


def plot_strategies(res: dict[str, Any], out: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s, rs in res["runs"].items():
        n = len(rs[0]["curve"])
        ax.plot(range(1, n + 1), [statistics.mean(r["curve"][i] for r in rs) for i in range(n)], label=s)
    ax.axhline(res["table_best"], color="grey", ls=":", label="table best")
    ax.set_xlabel("queries")
    ax.set_ylabel("best accuracy found (%), mean over seeds")
    ax.set_xscale("log")
    ax.set_ylim(res["table_best"] - 3, res["table_best"] + 0.2)
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".nas_strategies.png.tmp"
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out / "nas_strategies.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=[s for s in SECTIONS if s not in ONE_SHOT],
                        choices=list(SECTIONS), help="supernet, controls and front run only when named (about an "
                                                     "hour each on 2 cores), in that order, with one --run-dir")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(20)))
    parser.add_argument("--trials", type=int, default=100, help="strategies: queries per search")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, help="strategies: which ones")
    parser.add_argument("--space", default="mobile-32", help="latency: a shipped search space")
    parser.add_argument("--backends", nargs="+", default=["eager", "onnxruntime"], help="latency: backends")
    parser.add_argument("--samples", type=int, default=30, help="latency: candidates timed whole")
    parser.add_argument("--repeats", type=int, default=20, help="latency: timed calls per piece or network and round")
    parser.add_argument("--rounds", type=int, default=5, help="latency: interleaved passes over the pieces (networks)")
    parser.add_argument("--worker-trials", type=int, default=24, help="workers: candidates in the study")
    parser.add_argument("--worker-epochs", type=int, default=2, help="workers: training epochs per candidate")
    parser.add_argument("--proxy-candidates", type=int, default=30, help="proxies: candidates trained")
    parser.add_argument("--supernet-task", default="shapes-cnn", help="supernet: the task")
    parser.add_argument("--supernet-epochs", type=int, default=10, help="supernet: training epochs")
    parser.add_argument("--supernet-random", type=int, default=1, help="supernet: random candidates per batch")
    parser.add_argument("--supernet-candidates", type=int, default=3, help="supernet: random candidates compared")
    parser.add_argument("--supernet-max-macs", type=int, default=5_000_000, help="supernet: MACs cap of those")
    parser.add_argument("--calibration-rows", type=int, default=2000, help="supernet: BatchNorm calibration rows")
    parser.add_argument("--run-dir", type=Path, help="supernet: keep the trained supernet's weights here")
    parser.add_argument("--v2-widths", nargs="*", type=float, default=[0.35, 0.5, 0.75, 1.0],
                        help="controls: MobileNetV2 width multipliers (torchvision layout)")
    parser.add_argument("--v2-small-widths", nargs="*", type=float, default=[0.25, 0.35],
                        help="controls: MobileNetV2 width multipliers (small-input layout)")
    parser.add_argument("--scratch-epochs", type=int, help="supernet, controls: epochs of from-scratch training "
                                                             "(default: the task's baseline recipe)")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="slices: fine-tuning epochs of each slice")
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="slices: fine-tuning learning rate")
    parser.add_argument("--front-backend", default="onnxruntime", help="front: where latency is measured")
    parser.add_argument("--front-trials", type=int, default=150, help="front: candidates evaluated from the supernet")
    parser.add_argument("--front-picks", type=int, default=6, help="front: searched networks timed and tested")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scratch-worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.worker or args.scratch_worker:
        import json

        (_worker if args.worker else _scratch_worker)(json.loads(args.worker or args.scratch_worker))
        return
    namespace = dict(globals())
    render = namespace["render_strategies"]

    def render_and_plot(res, command, stamp):
        plot_strategies(res, args.out)
        return render(res, command, stamp)

    namespace["render_strategies"] = render_and_plot
    render_front_table = namespace["render_front"]

    def render_and_plot_front(res, command, stamp):
        plot_front(res, args.out)
        return render_front_table(res, command, stamp)

    namespace["render_front"] = render_and_plot_front
    run_section_loop("nas.py", "nas", args, SECTIONS, namespace)



if __name__ == "__main__":
    main()
