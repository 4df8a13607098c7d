"""Dynamic computation measured against static models of the same mean cost.

    .venv/bin/python benchmarks/dynamic.py [--sections exits] [--seeds 0 1 2] [--threads 1]

- exits: `shapes-cnn`. The trained baseline, the `early_exit` step on it (heads where the MACs pass
  1/3 and 2/3, trained jointly, one confidence threshold calibrated on the validation rows within
  `--budget`), and the static control: the same network narrowed (`width`) to the early-exit
  model's mean MACs per test row, trained from scratch with the baseline's settings. Accuracy on
  the test rows, the exit histogram, mean MACs per row (the runner's per-row measurement), and
  batch-1 latency averaged over `--rows` test rows spread over the split, each model on eager
  PyTorch and on ONNX Runtime (the early-exit model as stage graphs with the exit decisions
  between them), each (model, runtime) timed in a process of its own.

- text-exits: `corpus-cls`. Early exits hooked after MiniLM's layers (`--text-exits`), trained
  jointly with self-distillation, one threshold within `--text-budget`; against the baseline tuned
  for the same extra epochs: accuracy, the test rows' exit histogram and accuracy per exit, mean
  transformer layers run per row, mean MACs per row, eager batch-1 latency (`--no-timing` skips it).

- ort-paths: where an exits network's batch-1 time goes on ONNX Runtime, for a trained run of the
  `exits` section (`--run-dir`, seed `--seeds[0]`): the backbone alone (every threshold infinite),
  the one graph with `If` nodes and the stage-by-stage sessions, compiled by the backend, timed per
  test row in interleaved rounds and averaged by the exit each row takes; and ONNX Runtime's
  profile of the one graph for a row that takes the final exit against the backbone's (kernel time
  per operator type: which kernels run inside the `If` branches). One process, one thread.

- act: `parity`. Adaptive Computation Time (`act_rnn`, ponder cost `--act-tau`) against the same
  tanh RNN cell run a fixed number of steps per input (`rnn_steps`, `--act-fixed-steps`), each trained with the task's
  baseline settings per seed: test accuracy, ACT's steps per row by difficulty (count of nonzero
  entries) and their correlation, mean MACs per row. No latency is timed.

Writes OUT/dynamic_SECTION.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import run_section_loop  # noqa: E402


def _run(recipe: dict[str, Any], folder: Path) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    run_recipe(recipe, folder)
    return json.loads((folder / "results.json").read_text())


def _time_rows(run_dir: Path, step: int, backend: str, rows: int, repeats: int, threads: int) -> dict[str, Any]:
    """Mean batch-1 latency over test rows of one step's model on one runtime, in a fresh process."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(
        {"run_dir": str(run_dir), "step": step, "backend": backend, "rows": rows, "repeats": repeats,
         "threads": threads})], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"timing worker failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_step(run_dir: Path, step: int) -> tuple[Any, Any]:
    """(task, model in eval mode) of step ``step`` of a finished run (0: the baseline), rebuilt from
    its recorded structures and checkpoint."""
    from slimkit.core.io import read_json
    from slimkit.core.step import rebuild_model
    from slimkit.tasks.base import build_task

    records = read_json(run_dir / "run-state.json")["steps"][:step + 1]
    task = build_task(json.loads((run_dir / "results.json").read_text())["recipe"]["task"])
    model = rebuild_model(task.build_model, [(r["technique"], r.get("structure")) for r in records],
                          str(run_dir / records[-1]["artifact"]))
    return task, model.eval()


def _worker(spec: dict[str, Any]) -> None:
    import time

    import torch

    import slimkit.backends  # noqa: F401  (registers the runtimes)
    from slimkit.core.registry import BACKENDS
    from slimkit.measure.latency import torch_threads
    from slimkit.measure.per_row import spread_rows

    task, model = _run_step(Path(spec["run_dir"]), spec["step"])
    rows = spread_rows(task.data.test, spec["rows"], "cpu")
    torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        run = model if spec["backend"] == "eager" else BACKENDS.get(spec["backend"]).compile(
            model, rows[0], threads=spec["threads"], workdir=Path(tmp))
        per_row = []
        with torch_threads(spec["threads"]), torch.inference_mode():
            for _ in range(3):  # warm-up over every row
                for r in rows:
                    run(*r)
            for r in rows:
                times = []
                for _ in range(spec["repeats"]):
                    t = time.perf_counter()
                    run(*r)
                    times.append(time.perf_counter() - t)
                per_row.append(statistics.median(times) * 1e3)
    print(json.dumps({"mean_ms": statistics.mean(per_row), "median_ms": statistics.median(per_row),
                      "rows": len(per_row)}))


def _test_accuracy(run_dir: Path, step: int) -> float:
    """Accuracy of a run step's model on its task's test rows as they are now."""
    import torch

    from slimkit.measure.quality import predict

    task, model = _run_step(run_dir, step)
    test = task.data.test
    with torch.no_grad():
        return float((predict(model, test).argmax(-1) == test.targets).float().mean())


def _calibrations(run_dir: Path, step: int, budgets: list[float],
                  criteria: Sequence[str] = ("confidence",)) -> dict[str, Any]:
    """The step's trained exits calibrated both ways on the validation rows (one shared threshold,
    then per-exit thresholds) at each budget and for each exit criterion (confidence, entropy,
    patience: all read the same exit logits), each scored on the test rows: test accuracy, the
    share of the full network's MACs per row and the thresholds."""
    import torch

    from slimkit.techniques.dynamic import exits as ex
    from slimkit.techniques.dynamic.exit_step import _exit_logits

    task, net = _run_step(run_dir, step)
    val, test = task.data.val, task.data.test
    val_logits, test_logits = _exit_logits(net, val, torch.device("cpu")), _exit_logits(net, test, torch.device("cpu"))
    costs = ex.exit_costs(net, tuple(t[:1] for t in val.inputs))
    share = torch.tensor(costs, dtype=torch.float64) / costs[-1]
    correct = torch.stack([o.argmax(-1) == test.targets for o in test_logits]).double()
    out: dict[str, Any] = {"exit_macs": costs, "test_full_accuracy": float(correct[-1].mean()), "by_budget": [],
                           "test_rows": len(test.targets),
                           "test_accuracy_per_exit": [float(c.mean()) for c in correct]}
    # the step's own thresholds scored on the task's test rows as they are now, and the paired
    # standard error of (exits - full) over those rows: how far one seed's difference can be trusted
    own, rows = net.criterion, torch.arange(len(test.targets))
    taken = ex.exits_taken(ex.exit_scores(test_logits[:-1], own), net.thresholds.tolist())
    diff = correct[taken, rows] - correct[-1]
    out["own"] = {"criterion": own, "thresholds": net.thresholds.tolist(),
                  "test_accuracy": float(correct[taken, rows].mean()), "test_macs_share": float(share[taken].mean()),
                  "test_exit_shares": [float((taken == k).double().mean()) for k in range(len(test_logits))],
                  "paired_se": float(diff.std() / len(diff) ** 0.5)}
    for criterion in criteria:
        net.criterion = criterion
        for budget in budgets:
            for mode in ("shared", "per_exit"):
                cal = ex.calibrate(net, val_logits, val.targets, budget, costs=costs if mode == "per_exit" else None)
                taken = ex.exits_taken(ex.exit_scores(test_logits[:-1], criterion), cal.thresholds)
                rows = torch.arange(len(taken))
                out["by_budget"].append({"criterion": criterion, "budget": budget, "mode": mode,
                                         "thresholds": cal.thresholds, "val_accuracy": cal.quality,
                                         "val_full_accuracy": cal.full_quality,
                                         "test_accuracy": float(correct[taken, rows].mean()),
                                         "test_macs_share": float(share[taken].mean())})
    net.criterion = own
    return out


def _static_controls(task_cfg: dict[str, Any], names: list[str], target_macs: float) -> list[dict[str, Any]]:
    """For each model argument in ``names``, the task config whose model has that argument cut (every
    value from 1 to the model's own tried, MACs counted) to the MACs closest to ``target_macs``."""
    import inspect

    from slimkit.core.registry import MODELS
    from slimkit.measure.macs import count_macs
    from slimkit.tasks.base import build_task
    from slimkit.zoo import create_model

    task = build_task(task_cfg)
    name, kwargs = task.info["model"], task.info["model_args"]
    defaults = {k: p.default for k, p in inspect.signature(MODELS.get(name)).parameters.items()}
    x = tuple(t[:1] for t in task.data.test.inputs)
    out = []
    for spec in names:  # "width", or "depths[2]": one entry of a sequence argument
        arg, _, index = spec.partition("[")
        whole = kwargs.get(arg, defaults.get(arg))
        top = list(whole)[int(index.rstrip("]"))] if index and isinstance(whole, (list, tuple)) else whole
        if not isinstance(top, int) or isinstance(top, bool):
            raise SystemExit(f"--static-args: model {name!r} has no integer argument {spec!r}")

        def with_value(v: int) -> dict[str, Any]:
            if not index:
                return {arg: v}
            seq = list(whole)
            seq[int(index.rstrip("]"))] = v
            return {arg: seq}

        macs = {v: count_macs(create_model(name, **{**kwargs, **with_value(v)}).eval(), x) for v in range(1, top + 1)}
        value = min(macs, key=lambda v: abs(macs[v] - target_macs))
        out.append({"arg": spec, "value": value, "macs": macs[value],
                    "task": {**task_cfg, "model_args": {**task_cfg.get("model_args", {}), **with_value(value)}}})
    return out


def _task_name(task: str | dict[str, Any]) -> str:
    """A task config as text: its name, and a model other than the task's own with its arguments."""
    if isinstance(task, str):
        return f"`{task}`"
    model = f" with `{task['model']}` `{json.dumps(task.get('model_args', {}))}`" if task.get("model") else ""
    return f"`{task['name']}`{model}"


def _opt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _slug(spec: str) -> str:
    return spec.replace("[", "").replace("]", "")


def exits_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.tasks.base import build_task

    folder = args.run_dir or folder
    task_cfg: dict[str, Any] = {"name": args.task}
    if args.model:
        task_cfg["model"] = args.model
    if args.model_args:
        task_cfg["model_args"] = json.loads(args.model_args)
    base_train = build_task(task_cfg).baseline_train
    measure = {"batch_n": 64, "repeats": 5, "threads": args.threads, "memory": False, "per_row": args.rows}
    out = []
    for seed in args.seeds:
        recipe = {"version": 1, "task": task_cfg, "seed": seed, "measure": measure,
                  **({"baseline": {"weights": str(args.baseline_weights)}}
                     if args.baseline_weights and seed == args.seeds[0] else {}),
                  "steps": [{"early_exit": {"budget": args.budget, "criterion": args.criterion,
                                            "head": args.head, "exits": args.exits, "after": args.after,
                                            "distill": args.distill, "finetune": {"epochs": args.epochs}}}]}
        res = _run(recipe, folder / f"{seed}-exits")
        base, exits = res["steps"][0], res["steps"][1]
        ratio = exits["metrics"]["macs"] / base["metrics"]["macs"]
        # static controls: the same network cut (narrower, or shallower) to the exit model's mean MACs,
        # trained from scratch for as many epochs as the exit model had in all (baseline + exit step)
        statics = {}
        static_train = {"train": {"epochs": base_train.epochs + args.epochs}}
        with_statics = args.static_seeds is None or seed in args.static_seeds
        for control in _static_controls(task_cfg, args.static_args if with_statics else [], exits["metrics"]["macs"]):
            key = f"{control['arg']}={control['value']}"
            statics[key] = _run({"version": 1, "task": control["task"], "seed": seed, "measure": measure,
                                 "baseline": static_train, "steps": []},
                                folder / f"{seed}-static-{_slug(control['arg'])}")["steps"][0]
        best = max(statics, key=lambda k: statics[k]["metrics"]["quality"]) if statics else None
        # the fair control: the same baseline trained for the same extra epochs, without exits
        tuned = _run({**recipe, "baseline": {"weights": str(folder / f"{seed}-exits" / "steps" / "00-baseline"
                                                            / "model.safetensors")},
                      "steps": [{"train": {"epochs": args.epochs, "lr": 1e-3}}]}, folder / f"{seed}-tuned")["steps"][1]
        row = {"seed": seed, "static": best,
               "statics": {k: {"accuracy": v["metrics"]["quality"], "macs": v["metrics"]["macs"]}
                           for k, v in statics.items()},
               "accuracy": {"baseline": base["metrics"]["quality"], "tuned": tuned["metrics"]["quality"],
                            "exits": exits["metrics"]["quality"],
                            "static": statics[best]["metrics"]["quality"] if best else None},
               "macs": {"baseline": base["metrics"]["macs"], "exits": exits["metrics"]["macs"],
                        "static": statics[best]["metrics"]["macs"] if best else None},
               "val_exit_shares": exits["info"]["val_exit_shares"], "threshold": exits["info"]["threshold"],
               "test_exit_shares": exits["info"].get("test_exit_shares"),
               "test_accuracy_per_exit": exits["info"]["test_accuracy_per_exit"],
               "exits_after": exits["info"]["exits_after"], "latency_ms": {}}
        best_arg = _slug(best.split("=")[0]) if best else None
        untimed = args.no_timing or (args.time_seeds is not None and seed not in args.time_seeds)
        timed = () if untimed else (("baseline", folder / f"{seed}-exits", 0),
                                           ("exits", folder / f"{seed}-exits", 1),
                                           ("static", folder / f"{seed}-static-{best_arg}", 0),
                                           ("tuned", folder / f"{seed}-tuned", 1))
        timed = tuple(t for t in timed if t[0] != "static" or best)
        for name, run_dir, step in timed:
            for backend in ("eager", "onnxruntime"):
                row["latency_ms"][f"{name}@{backend}"] = _time_rows(run_dir, step, backend, args.rows, args.repeats,
                                                                    args.threads)["mean_ms"]
        out.append(row)
        progress(f"seed {seed}: exits {row['accuracy']['exits']:.4f} (tuned backbone {row['accuracy']['tuned']:.4f}, "
                 f"best static ({best}) {row['accuracy']['static']}), MACs {1 / ratio:.2f}x fewer")
    return {"task": task_cfg, "budget": args.budget, "criterion": args.criterion, "epochs": args.epochs,
            "distill": args.distill, "rows": out, "baseline_train": base_train.model_dump(),
            "static_epochs": base_train.epochs + args.epochs}


class _NotTimed(dict):
    def __missing__(self, key: str) -> float:
        return math.nan


_NOT_TIMED = _NotTimed()


def render_exits(res: dict[str, Any], command: str, stamp: str) -> str:
    from slimkit.core.hardware import cpu_capability

    rows = res["rows"]
    distill = f", self-distillation weight {res['distill']}" if res.get("distill") else ""
    lines = ["# Early exits against the baseline and a static model of the same mean MACs", "",
             f"`{command}`; {stamp}; {cpu_capability()}.", "",
             f"Task {_task_name(res['task'])}. The `early_exit` step on the trained baseline: heads after "
             f"{rows[0]['exits_after']}, {res['epochs']} epochs joint training, one {res['criterion']} threshold "
             f"calibrated on the validation rows within {res['budget']} of the full network's accuracy"
             f"{distill}. "
             "Static: the same network cut to the exit model's mean MACs per row (each model argument named by "
             "`--static-args`, e.g. narrower or shallower), trained from scratch like the baseline for as many "
             f"epochs as the exit model had in all ({res.get('static_epochs', 'the baseline')}); the more accurate "
             "cut is shown, every cut is listed below the table. "
             "Tuned: the baseline trained for the exit step's epochs more without exits, the fair control (the exit "
             "step's joint training trains the backbone too). "
             "MACs: mean per test row. Latency: batch 1, mean over test rows spread over the split (median of the "
             "repeats per row), each (model, runtime) in its own process; ONNX Runtime runs the exit model's batch-1 "
             "calls as one graph with If nodes.", "",
             "| seed | baseline acc. | tuned acc. | exits acc. | static acc. | baseline MACs | exits MACs | static MACs "
             "| rows leaving at each exit (test) | eager b1 ms (tuned / exits / static) "
             "| ORT b1 ms (tuned / exits / static) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, m, t = r["accuracy"], r["macs"], r["latency_ms"] or _NOT_TIMED
        lines.append(f"| {r['seed']} | {a['baseline']:.4f} | {a['tuned']:.4f} | {a['exits']:.4f} | "
                     f"{_opt(a['static'], '.4f')} | {m['baseline']:,} | {m['exits']:,} | {_opt(m['static'], ',')} | "
                     f"{', '.join(f'{s:.2f}' for s in r['test_exit_shares'] or r['val_exit_shares'])} | "
                     f"{t['tuned@eager']:.3f} / {t['exits@eager']:.3f} / {t.get('static@eager', math.nan):.3f} | "
                     f"{t['tuned@onnxruntime']:.3f} / {t['exits@onnxruntime']:.3f} / "
                     f"{t.get('static@onnxruntime', math.nan):.3f} |")

    def mean(f):
        return statistics.mean(f(r) for r in rows)

    early = mean(lambda r: 1 - (r["test_exit_shares"] or r["val_exit_shares"])[-1])
    timed = [r["latency_ms"] for r in rows if r["latency_ms"]]
    static_gap = [r["accuracy"]["static"] - r["accuracy"]["tuned"] for r in rows if r["accuracy"]["static"]]
    lines += ["", "Static cuts (accuracy at MACs): " + "; ".join(
        f"seed {r['seed']}: " + ", ".join(f"{k} {v['accuracy']:.4f} at {v['macs']:,}" for k, v in r["statics"].items())
        for r in rows if r.get("statics")) + ".",
              "",
              f"- Rows leaving early (test): {100 * early:.0f}% (bar: >= 40%).",
              f"- Mean MACs per row: {mean(lambda r: r['macs']['baseline'] / r['macs']['exits']):.2f}x fewer "
              "(bar: >= 1.5x).",
              (f"- Batch-1 latency, mean over rows: eager "
               f"{statistics.mean(t['tuned@eager'] / t['exits@eager'] for t in timed):.2f}x, ONNX Runtime "
               f"{statistics.mean(t['tuned@onnxruntime'] / t['exits@onnxruntime'] for t in timed):.2f}x "
               "faster than the tuned backbone (the same network)"
               + ("" if len(timed) == len(rows) else
                  f"; timed for seed {', '.join(str(r['seed']) for r in rows if r['latency_ms'])} only") + "."
               if timed else "- Latency: not timed in this run (`--no-timing`)."),
              f"- Accuracy against the tuned backbone: exits "
              f"{100 * mean(lambda r: r['accuracy']['exits'] - r['accuracy']['tuned']):+.2f} pt (bar: >= -0.5), static "
              + (f"{100 * statistics.mean(d for d in static_gap):+.2f} pt (must do worse than exits"
                 + ("" if len(static_gap) == len(rows) else
                    f"; trained for seed {', '.join(str(r['seed']) for r in rows if r['accuracy']['static'])} only")
                 + f"; exits minus static on the same seeds: "
                   f"{100 * statistics.mean(r['accuracy']['exits'] - r['accuracy']['static'] for r in rows if r['accuracy']['static']):+.2f} pt)."
                 if static_gap else "not trained."), ""]
    return "\n".join(lines)


def text_exits_section(args, folder: Path, progress) -> dict[str, Any]:
    """Early exits after MiniLM's layers on ``corpus-cls`` against the tuned baseline, per seed."""
    folder = args.run_dir or folder
    measure = {"batch_n": 8, "repeats": 3, "threads": args.threads, "memory": False, "per_row": args.rows}
    out = []
    for seed in args.seeds:
        recipe = {"version": 1, "task": "corpus-cls", "seed": seed, "measure": measure,
                  **({"baseline": {"weights": str(args.baseline_weights)}}
                     if args.baseline_weights and seed == args.seeds[0] else {}),
                  "steps": [{"early_exit": {"exits": args.text_exits, "budget": args.text_budget, "criterion": args.text_criterion,
                                            "distill": args.text_distill, "train": args.text_train,
                                            "thresholds": args.text_thresholds,
                                            "finetune": {"epochs": args.text_epochs, "lr": args.text_lr}}}]}
        name = f"{seed}-text-exits" + ("" if args.text_train == "joint" else f"-{args.text_train}")
        res = _run(recipe, folder / name)
        base, exits = res["steps"][0], res["steps"][1]
        if args.text_train == "heads":  # the backbone is frozen: the final exit is the baseline, the control
            tuned, tuned_run = base, (folder / name, 0)
        else:  # the fair control: the same baseline trained for the same extra epochs, without exits
            weights = folder / name / "steps" / "00-baseline" / "model.safetensors"
            tuned = _run({**recipe, "baseline": {"weights": str(weights)},
                          "steps": [{"train": {"epochs": args.text_epochs, "lr": args.text_lr,
                                               "optimizer": "adamw", "weight_decay": 0.01}}]},
                         folder / f"{seed}-text-tuned")["steps"][1]
            tuned_run = (folder / f"{seed}-text-tuned", 1)
        info = exits["info"]
        # accuracies and exit shares scored here on the task's test rows (the step's own thresholds;
        # the same figures as the run's when its test split is unchanged), with the paired error
        cal = _calibrations(folder / name, 1, args.text_calibrations or [args.text_budget], args.text_criteria)
        layers = [int(n.rsplit(".", 1)[1]) + 1 for n in info["exits_after"]] + [6]  # layers run per exit
        shares = cal["own"]["test_exit_shares"]
        mean_layers = sum(s * n for s, n in zip(shares, layers))
        accuracy = {"baseline": cal["test_full_accuracy"], "tuned": cal["test_full_accuracy"],
                    "exits": cal["own"]["test_accuracy"]}
        if args.text_train != "heads":
            accuracy.update(baseline=_test_accuracy(folder / name, 0), tuned=_test_accuracy(*tuned_run))
        row = {"seed": seed, "exits_after": info["exits_after"], "layers_per_exit": layers, "accuracy": accuracy,
               "criterion": cal["own"]["criterion"], "test_rows": cal["test_rows"],
               "paired_se": cal["own"]["paired_se"],
               "macs": {"baseline": base["metrics"]["macs"], "tuned": tuned["metrics"]["macs"],
                        "exits": exits["metrics"]["macs"]},
               "test_exit_shares": shares, "val_exit_shares": info["val_exit_shares"],
               "test_accuracy_per_exit": cal["test_accuracy_per_exit"], "threshold": info["threshold"],
               "thresholds": info.get("thresholds"), "calibrations": cal,
               "mean_layers": mean_layers, "layers_saved": 1 - mean_layers / layers[-1], "latency_ms": {}}
        if not args.no_timing:  # rounds alternate the two models, each call a fresh process; medians
            rounds: dict[str, list[float]] = {"tuned": [], "exits": []}
            for _ in range(args.timing_rounds):
                for label, run_dir, step in (("tuned", *tuned_run), ("exits", folder / name, 1)):
                    rounds[label].append(_time_rows(run_dir, step, "eager", args.rows, args.repeats,
                                                    args.threads)["mean_ms"])
            row["latency_rounds_ms"] = rounds
            row["latency_ms"] = {f"{label}@eager": statistics.median(v) for label, v in rounds.items()}
        out.append(row)
        progress(f"seed {seed}: exits {row['accuracy']['exits']:.4f} (tuned {row['accuracy']['tuned']:.4f}), "
                 f"{100 * row['layers_saved']:.0f}% of layers saved")
    return {"task": "corpus-cls", "budget": args.text_budget, "epochs": args.text_epochs, "lr": args.text_lr,
            "distill": args.text_distill, "train": args.text_train, "thresholds": args.text_thresholds,
            "criterion": args.text_criterion, "rows": out}


def render_text_exits(res: dict[str, Any], command: str, stamp: str) -> str:
    from slimkit.core.hardware import cpu_capability

    rows = res["rows"]
    lines = ["# Early exits in a transformer encoder (MiniLM on corpus-cls)", "",
             f"`{command}`; {stamp}; {cpu_capability()}.", "",
             "Task `corpus-cls` (corpus sentences intact, two words swapped, a word replaced or a span shuffled; "
             "all-MiniLM-L6-v2 fine-tuned with a Linear head). The `early_exit` step hooks a DeeBERT-style head "
             f"(masked token mean, dense-tanh, Linear) after layers {rows[0]['exits_after']}, trains them "
             + ("jointly with the encoder" if res.get("train", "joint") == "joint" else "on the frozen baseline encoder")
             + f" for {res['epochs']} epochs (lr {res['lr']}, self-distillation weight {res['distill']}), and "
             + (f"calibrates one {res.get('criterion', 'confidence')} threshold"
                + ("" if res.get("thresholds", "shared") == "shared" else " per exit"))
             + f" on the validation rows within {res['budget']} of the full network's accuracy. "
             + ("Tuned: the baseline trained for the same extra epochs without exits (the fair control). "
                if res.get("train", "joint") == "joint" else
                "Tuned: the baseline itself (the encoder is frozen, so the final exit is the baseline). ")
             + "Layers: transformer layers run per test row (a row leaving after "
             "layer k runs k of 6); MACs: mean per row over the runner's per-row rows; latency: batch 1, mean over "
             "those rows, each model in its own process.", "",
             "Accuracies, exit shares and the paired standard error of (exits - tuned) are scored on the task's "
             "test rows by the benchmark (the step's own criterion and thresholds).", "",
             "| seed | test rows | criterion | baseline acc. | tuned acc. | exits acc. (paired s.e.) | test rows leaving "
             "per exit | accuracy per exit (test) | mean layers | layers saved | MACs per row (tuned / exits) "
             "| eager b1 ms (tuned / exits) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, m, t = r["accuracy"], r["macs"], r["latency_ms"]
        timing = f"{t['tuned@eager']:.2f} / {t['exits@eager']:.2f}" if t else "not timed"
        se = f" ({100 * r['paired_se']:.1f} pt)" if "paired_se" in r else ""
        lines.append(f"| {r['seed']} | {r.get('test_rows', '')} | {r.get('criterion', '')} | {a['baseline']:.4f} | "
                     f"{a['tuned']:.4f} | {a['exits']:.4f}{se} | "
                     f"{', '.join(f'{s:.2f}' for s in r['test_exit_shares'])} | "
                     f"{', '.join(f'{q:.3f}' for q in r['test_accuracy_per_exit'])} | {r['mean_layers']:.2f} | "
                     f"{100 * r['layers_saved']:.0f}% | {m['tuned'] / 1e6:.1f}M / {m['exits'] / 1e6:.1f}M | {timing} |")

    def mean(f):
        return statistics.mean(f(r) for r in rows)

    lines += ["", f"- Layers saved on average: {100 * mean(lambda r: r['layers_saved']):.0f}% (bar: >= 30%).",
              f"- Accuracy against the tuned baseline: "
              f"{100 * mean(lambda r: r['accuracy']['exits'] - r['accuracy']['tuned']):+.2f} pt (bar: >= -1 pt); "
              f"against the baseline {100 * mean(lambda r: r['accuracy']['exits'] - r['accuracy']['baseline']):+.2f} pt.",
              f"- Mean MACs per row: {mean(lambda r: r['macs']['tuned'] / r['macs']['exits']):.2f}x fewer."]
    if all(r["latency_ms"] for r in rows):
        lines.append(f"- Eager batch-1 latency, mean over rows (median of {len(rows[0].get('latency_rounds_ms', {}).get('tuned', [0]))} "
                     f"rounds, each model in a fresh process per round): "
                     f"{mean(lambda r: r['latency_ms']['tuned@eager'] / r['latency_ms']['exits@eager']):.2f}x faster.")
    if all(r.get("calibrations") for r in rows):
        lines += ["", "The same trained exits calibrated both ways on the validation rows (within the budget there), "
                      "for each exit criterion (confidence: the largest softmax probability; entropy: 1 - normalised "
                      "entropy; patience: PABEE's count of earlier exits agreeing in a row), scored on the test rows "
                      "(MACs: the share of the full network's, from each exit's counted cost):",
                  "", "| seed | criterion | budget | calibration | thresholds | val acc. (full) | test acc. (full) "
                      "| test MACs share |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            c = r["calibrations"]
            for m in c["by_budget"]:
                lines.append(f"| {r['seed']} | {m.get('criterion', 'confidence')} | {m['budget']:g} | {m['mode']} | "
                             f"{', '.join(f'{t:.3f}' for t in m['thresholds'])} | "
                             f"{m['val_accuracy']:.4f} ({m['val_full_accuracy']:.4f}) | {m['test_accuracy']:.4f} "
                             f"({c['test_full_accuracy']:.4f}) | {m['test_macs_share']:.3f} |")
    return "\n".join(lines + [""])


def _pick_static_blocks(order: list[str], block_macs: dict[str, int], backbone: int, target: float) -> int:
    """k such that removing the first k blocks of ``order`` leaves MACs closest to ``target``."""
    costs = [backbone - sum(block_macs[n] for n in order[:k]) for k in range(len(order) + 1)]
    return min(range(len(costs)), key=lambda k: abs(costs[k] - target))


def skip_section(args, folder: Path, progress) -> dict[str, Any]:
    """Layer skipping against the baseline, the baseline tuned for the same extra epochs, and static
    removal of the same number of blocks (by validation loss, and the least-used ones) fine-tuned alike."""
    from slimkit.core.step import rebuild_model
    from slimkit.measure.macs import count_macs
    from slimkit.measure.quality import predict
    from slimkit.tasks.base import build_task
    from slimkit.tasks.context import Context
    from slimkit.techniques.dynamic.skipping import remove_least_used_
    from slimkit.train.config import TrainConfig

    task_cfg = {"name": args.task, "model": "cnn_shapes_dws",
                "model_args": {"width": args.skip_width, "residual": True, "depths": list(args.skip_depths)}}
    if args.model:  # e.g. convmixer: its blocks are residuals of one shape
        task_cfg = {"name": args.task, "model": args.model, "model_args": json.loads(args.model_args or "{}")}
    task = build_task(task_cfg)
    measure = {"batch_n": 64, "repeats": 3, "warmup": 0, "max_seconds": 0.5, "threads": args.threads,
               "memory": False, "per_row": args.rows}
    tune = {"epochs": args.skip_epochs, "lr": 1e-3, "batch_size": 64, "keep_best": False}
    baseline = {"train": {"epochs": args.baseline_epochs}} if args.baseline_epochs else {}
    out = []
    for seed in args.seeds:
        recipe = {"version": 1, "task": task_cfg, "seed": seed, "measure": measure, "baseline": baseline,
                  "steps": [{"layer_skip": {"target_macs": args.skip_target, "penalty": args.skip_penalty,
                                            "per_block": args.skip_per_block,
                                            "noise": not args.skip_deterministic, "finetune": tune}}]}
        res = _run(recipe, folder / f"{seed}-skip")
        base, skip = res["steps"][0], res["steps"][1]
        info = skip["info"]
        weights = str(folder / f"{seed}-skip" / base["artifact"])
        skip_macs = info["test"]["macs_share"] * info["backbone_macs"]
        order = info["least_used"]
        k = _pick_static_blocks(order, info["block_macs"], info["backbone_macs"], skip_macs)
        progress(f"seed {seed}: layer skip {skip['metrics']['quality']:.4f} at {info['test']['macs_share']:.3f} of "
                 f"the MACs, {info['test']['blocks_executed_per_row']:.2f} of {len(order)} blocks per row; "
                 f"static controls remove {k}")
        from_base = {"version": 1, "task": task_cfg, "seed": seed, "measure": measure, "baseline": {"weights": weights}}
        tuned = _run({**from_base, "steps": [{"train": tune}]}, folder / f"{seed}-tuned")["steps"][1]
        static = _run({**from_base, "steps": [{"prune_structured": {"blocks": k, "finetune": tune}}]},
                      folder / f"{seed}-static")["steps"][1] if k else None
        # least-used blocks removed (the gates' own verdict on validation rows), fine-tuned alike
        model = rebuild_model(task.build_model, [], weights)
        removed = remove_least_used_(model, info["val"]["execution_rates"], k)
        Context(task=task, seed=seed).train(model, TrainConfig(**tune),
                                            description="static: least used removed")
        model.eval()
        x = task.data.test.inputs[0]
        least_used = {"quality": task.evaluate(predict(model, task.data.test, 256), task.data.test.targets)["quality"],
                      "macs": count_macs(model, (x[:1],)), "removed": removed}
        n = len(order)
        row = {"seed": seed, "k": k, "blocks": n,
               "accuracy": {"baseline": base["metrics"]["quality"], "tuned": tuned["metrics"]["quality"],
                            "skip": skip["metrics"]["quality"],
                            "static": static["metrics"]["quality"] if static else None,
                            "least_used": least_used["quality"]},
               "macs": {"baseline": base["metrics"]["macs"], "tuned": tuned["metrics"]["macs"],
                        "skip": round(skip_macs), "skip_runner": skip["metrics"]["macs"],
                        "static": static["metrics"]["macs"] if static else base["metrics"]["macs"],
                        "least_used": least_used["macs"]},
               "blocks_executed": {"baseline": n, "tuned": n, "skip": info["test"]["blocks_executed_per_row"],
                                   "static": n - k, "least_used": n - k},
               "calibration": info["calibration"], "skip_histogram": info["test"]["skip_histogram"],
               "execution_rates": info["test"]["execution_rates"],
               "static_removed": static["info"]["blocks"]["removed"] if static else [],
               "least_used_removed": removed, "macs_per_row_runner": skip["metrics"].get("macs_per_row"),
               "latency_ms": {}}
        if not args.no_timing:
            for name, run_dir, step in (("tuned", folder / f"{seed}-tuned", 1), ("skip", folder / f"{seed}-skip", 1),
                                        ("static", folder / f"{seed}-static", 1)):
                if name == "static" and not static:
                    continue
                for backend in ("eager", "onnxruntime"):
                    row["latency_ms"][f"{name}@{backend}"] = _time_rows(run_dir, step, backend, args.rows,
                                                                        args.repeats, args.threads)["mean_ms"]
        out.append(row)
        a = row["accuracy"]
        progress(f"seed {seed}: skip {a['skip']:.4f}, tuned {a['tuned']:.4f}, static {a['static']}, "
                 f"least-used {a['least_used']:.4f}")
    return {"task": task_cfg, "target": args.skip_target, "penalty": args.skip_penalty, "epochs": args.skip_epochs,
            "per_block": args.skip_per_block,
            "noise": not args.skip_deterministic,
            "baseline_epochs": args.baseline_epochs or task.baseline_train.epochs, "timing": not args.no_timing,
            "rows": out}


def render_skip(res: dict[str, Any], command: str, stamp: str) -> str:
    from slimkit.core.hardware import cpu_capability

    rows = res["rows"]
    m = res["task"]["model_args"]
    model = (f"`cnn_shapes_dws` (width {m.get('width', 32)}, depths {m['depths']}, MobileNetV2-style residual "
             "blocks)" if res["task"]["model"] == "cnn_shapes_dws" else f"`{res['task']['model']}` ({m or 'defaults'})")
    lines = ["# Layer skipping against static removal of the same number of blocks", "",
             f"`{command}`; {stamp}; {cpu_capability()}.", "",
             f"Task `{res['task']['name']}` with {model}, baseline trained {res['baseline_epochs']} epochs. "
             f"Layer skip: the `layer_skip` step on the baseline (a gate per residual block, target "
             f"{res['target']} of the MACs, "
             f"{'per-gate target loss (ConvNet-AIG)' if res.get('per_block') else 'MACs penalty'} "
             f"{res['penalty']}, gate noise "
             f"{'on' if res.get('noise', True) else 'off'}, "
             "one shared threshold calibrated on validation rows to the target), "
             f"{res['epochs']} epochs. Every control starts "
             f"from the same baseline weights and trains the same {res['epochs']} epochs (lr 1e-3, last epoch kept): "
             "tuned (nothing removed, the fair control for accuracy), static (the k blocks whose removal costs least "
             "validation loss removed: `prune_structured: {blocks: k}`), least used (the k blocks the gates ran "
             "least often on validation rows removed). k: the number of blocks whose removal comes closest to the "
             "layer-skip model's mean MACs. MACs: mean per test row over all test rows (layer skip: from each row's "
             "executed blocks, gates included; the runner's own per-row count over its rows agrees).", "",
             "| seed | k | acc. baseline | acc. tuned | acc. layer skip | acc. static | acc. least used "
             "| MACs tuned | MACs layer skip | MACs static | MACs least used | blocks run per row (skip / static) "
             "| rows skipping 0, 1, 2... blocks |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "—" if v is None else f"{v:.4f}"

    for r in rows:
        a, mc = r["accuracy"], r["macs"]
        lines.append(f"| {r['seed']} | {r['k']} | {f(a['baseline'])} | {f(a['tuned'])} | {f(a['skip'])} | "
                     f"{f(a['static'])} | {f(a['least_used'])} | {mc['tuned']:,} | {mc['skip']:,} | {mc['static']:,} | "
                     f"{mc['least_used']:,} | {r['blocks_executed']['skip']:.2f} / {r['blocks_executed']['static']} of "
                     f"{r['blocks']} | {', '.join(map(str, r['skip_histogram']))} |")

    def mean(g):
        vals = [g(r) for r in rows]
        vals = [v for v in vals if v is not None]
        return statistics.mean(vals) if vals else float("nan")

    lines += ["",
              f"- Mean MACs per row: layer skip {mean(lambda r: r['macs']['skip'] / r['macs']['tuned']):.3f} of the "
              f"backbone's, static {mean(lambda r: r['macs']['static'] / r['macs']['tuned']):.3f}.",
              f"- Accuracy against static removal at (about) equal MACs: layer skip "
              f"{100 * mean(lambda r: r['accuracy']['skip'] - (r['accuracy']['static'] or float('nan'))):+.2f} pt, "
              f"against least-used removal "
              f"{100 * mean(lambda r: r['accuracy']['skip'] - r['accuracy']['least_used']):+.2f} pt "
              "(bar: layer skipping beats static removal of the same number of blocks at equal mean MACs).",
              f"- Against the tuned backbone: layer skip "
              f"{100 * mean(lambda r: r['accuracy']['skip'] - r['accuracy']['tuned']):+.2f} pt.",
              f"- Per-block execution rates (test, seed {rows[0]['seed']}): "
              + ", ".join(f"{n}: {v:.2f}" for n, v in rows[0]["execution_rates"].items()) + "."]
    if res["timing"]:
        lines.append("- Batch-1 latency, mean over rows (eager / ONNX Runtime): " + "; ".join(
            f"seed {r['seed']}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in r["latency_ms"].items()) for r in rows))
    else:
        lines.append("- Latency: not timed in this run (`--no-timing`).")
    return "\n".join(lines + [""])


def ort_paths_section(args, folder: Path, progress) -> dict[str, Any]:
    """Batch-1 time of a trained exits network on ONNX Runtime per path and per exit taken."""
    import math
    import time

    import onnxruntime as ort
    import torch

    import slimkit.backends  # noqa: F401  (registers the runtimes)
    from slimkit.backends.onnxruntime import export_onnx
    from slimkit.core.registry import BACKENDS
    from slimkit.measure.per_row import spread_rows

    if args.run_dir is None:
        raise SystemExit("ort-paths: --run-dir must hold a run of the exits section ({seed}-exits)")
    run_dir = args.run_dir / f"{args.seeds[0]}-exits"
    torch.set_num_threads(args.threads)
    task, net = _run_step(run_dir, 1)
    rows = spread_rows(task.data.test, args.rows, "cpu")
    with torch.no_grad():
        taken = []
        for r in rows:
            net(*r)
            taken.append(int(net.last_exits[0]))
    backend, thresholds = BACKENDS.get("onnxruntime"), net.thresholds.clone()
    opts = dict(threads=args.threads, spin_wait=False)
    runs = {"graph": backend.compile(net, rows[0], workdir=folder / "graph", **opts)}
    backend.control_flow = False  # batch 1 then runs stage by stage, as larger batches do
    try:
        runs["stages"] = backend.compile(net, rows[0], workdir=folder / "stages", **opts)
    finally:
        backend.control_flow = True
    net.thresholds.fill_(math.inf)  # no head runs: the backbone's own graph
    runs = {"backbone": backend.compile(net, rows[0], workdir=folder / "backbone", **opts), **runs}
    export_onnx(net.export_graph().eval(), rows[0], folder / "backbone.onnx")
    net.thresholds.copy_(thresholds)
    export_onnx(net.export_graph().eval(), rows[0], folder / "graph.onnx")
    per_round: dict[str, list[list[float]]] = {n: [] for n in runs}
    with torch.inference_mode():
        for _ in range(args.ort_rounds):
            for name, run in runs.items():
                times = []
                for r in rows:
                    for _ in range(3):
                        run(*r)
                    t = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        run(*r)
                        t.append(time.perf_counter() - start)
                    times.append(statistics.median(t) * 1e3)
                per_round[name].append(times)
    exits = sorted(set(taken))
    paths = {}
    for name, rounds in per_round.items():
        per_row = [statistics.median(c) for c in zip(*rounds)]
        paths[name] = {"mean_ms": statistics.mean(per_row),
                       "by_exit_ms": {str(k): statistics.mean(v for v, e in zip(per_row, taken) if e == k)
                                      for k in exits}}
    final_row = rows[taken.index(max(taken))]
    profiles = {}
    for name in ("backbone", "graph"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = args.threads
        options.enable_profiling, options.profile_file_prefix = True, str(folder / f"profile-{name}")
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: final_row[0].numpy()}
        for _ in range(args.repeats * 10):
            session.run(None, feed)
        kernels: dict[str, list[float]] = {}
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                op = event["args"].get("op_name", "?")
                kernels.setdefault(op, []).append(event["dur"])
        calls = args.repeats * 10
        profiles[name] = {op: {"nodes": len(d) // calls, "us_per_run": sum(d) / calls}
                          for op, d in sorted(kernels.items(), key=lambda kv: -sum(kv[1]))}
    progress(f"backbone {paths['backbone']['mean_ms']:.3f} ms, graph {paths['graph']['mean_ms']:.3f} ms, "
             f"stages {paths['stages']['mean_ms']:.3f} ms")
    return {"run": str(run_dir), "rows": len(rows), "exit_counts": {str(k): taken.count(k) for k in exits},
            "paths": paths, "profiles": profiles}


def render_ort_paths(res: dict[str, Any], command: str, stamp: str) -> str:
    from slimkit.core.hardware import cpu_capability

    exits = list(res["exit_counts"])
    lines = ["# Early exits on ONNX Runtime at batch 1: where the time goes", "",
             f"`{command}`; {stamp}; {cpu_capability()}.", "",
             f"The trained exits network of `{res['run']}` on {res['rows']} test rows; each path compiled by slimkit's "
             "ONNX Runtime backend and timed per row (median of the repeats, median over interleaved rounds), "
             "averaged over all rows and over the rows taking each exit (rows per exit: "
             + ", ".join(f"{k}: {v}" for k, v in res["exit_counts"].items()) + ").", "",
             "| path | mean ms | " + " | ".join(f"rows taking exit {k}" for k in exits) + " |",
             "|---|---|" + "---|" * len(exits)]
    for name, p in res["paths"].items():
        lines.append(f"| {name} | {p['mean_ms']:.3f} | " + " | ".join(f"{p['by_exit_ms'][k]:.3f}" for k in exits) + " |")
    lines += ["", "ONNX Runtime's profile for one row taking the final exit (kernel time per run by operator type; "
                  "`If` includes the kernels of its branches):", "",
              "| operator | backbone: nodes | backbone: us | one graph: nodes | one graph: us |", "|---|---|---|---|---|"]
    ops = list(dict.fromkeys([*res["profiles"]["graph"], *res["profiles"]["backbone"]]))
    for op in ops[:12]:
        cells = []
        for side in ("backbone", "graph"):
            found = res["profiles"][side].get(op)
            cells += [str(found["nodes"]), f"{found['us_per_run']:.1f}"] if found else ["-", "-"]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def _train_parity(model: str, model_args: dict[str, Any], seed: int, epochs: int):
    """One model trained on the parity task with the one loop (the task's baseline settings, and
    the ponder cost an ACT model declares), as the runner trains a baseline; no timing."""
    import torch

    from slimkit.tasks.base import build_task
    from slimkit.tasks.context import Context

    task = build_task({"name": "parity", "model": model, "model_args": model_args})
    cfg = task.baseline_train if not epochs else task.baseline_train.model_copy(update={"epochs": epochs})
    torch.manual_seed(seed)
    net = task.build_model()
    fit = Context(task=task, seed=seed).train(net, cfg, description=f"parity {model} {model_args}")
    return task, net.eval(), fit.summary(), cfg


def _parity_figures(task, net, rows: int) -> dict[str, Any]:
    """Test accuracy, steps (cell evaluations) and ponder (N + R) per row, by difficulty (count of
    nonzero entries), their correlation with the difficulty, and mean MACs per row over ``rows``
    test rows run one at a time."""
    import torch

    from slimkit.measure.per_row import per_row_macs, spread_rows

    test = task.data.test
    difficulty = test.extras["difficulty"]
    with torch.no_grad():
        right = (net(test.inputs[0]).argmax(-1) == test.targets).float()
    core = net.core
    adaptive = getattr(core, "last_steps", None) is not None
    steps = core.last_steps.float() if adaptive else torch.full_like(right, float(core.steps))
    ponder = core.last_ponder if adaptive else steps
    by = {}
    for k in difficulty.unique().tolist():
        rows_k = difficulty == k
        by[int(k)] = {"rows": int(rows_k.sum()), "accuracy": float(right[rows_k].mean()),
                      "steps": float(steps[rows_k].mean()), "ponder": float(ponder[rows_k].mean())}

    def corr(v: torch.Tensor) -> float | None:  # None: a fixed-step model, or the same steps on every row
        r = float(torch.corrcoef(torch.stack([difficulty.float(), v]))[0, 1]) if adaptive else math.nan
        return r if math.isfinite(r) else None

    return {"accuracy": float(right.mean()), "mean_steps": float(steps.mean()), "mean_ponder": float(ponder.mean()),
            "steps_difficulty_r": corr(steps), "ponder_difficulty_r": corr(ponder), "by_difficulty": by,
            "macs_per_row": per_row_macs(net, spread_rows(test, rows, "cpu"))["mean"]}


def act_section(args, folder: Path, progress) -> dict[str, Any]:
    """ACT against fixed-step RNNs of the same cell and width on the parity task, per seed."""
    out, cfg = [], None
    for seed in args.seeds:
        row: dict[str, Any] = {"seed": seed, "models": {}}
        act_model, fixed_model = (("act_transformer", "transformer_steps") if args.act_core == "transformer"
                                  else ("act_rnn", "rnn_steps"))
        variants = [("act", act_model, {"tau": args.act_tau})] + [(f"fixed{k}", fixed_model, {"steps": k})
                                                                  for k in args.act_fixed_steps]
        for name, model, model_args in variants:
            task, net, summary, cfg = _train_parity(model, model_args, seed, args.act_epochs)
            figures = _parity_figures(task, net, args.rows)
            figures.update(params=sum(p.numel() for p in net.parameters()), best_val=summary["best_val_quality"],
                           best_epoch=summary["best_epoch"], train_seconds=sum(summary["epoch_seconds"]))
            row["models"][name] = figures
            progress(f"seed {seed}: {name} accuracy {figures['accuracy']:.4f}, mean steps {figures['mean_steps']:.2f}"
                     + (f", r(steps, difficulty) {figures['steps_difficulty_r']:.3f}" if name == "act" else ""))
        out.append(row)
    return {"task": "parity", "fixed_steps": args.act_fixed_steps, "tau": args.act_tau, "core": args.act_core,
            "rows": out,
            "train": cfg.model_dump() if cfg is not None else None}


def _r(value: float | None) -> str:
    return "n/a (same steps on every row)" if value is None else f"{value:.3f}"


def render_act(res: dict[str, Any], command: str, stamp: str) -> str:
    rows = res["rows"]
    names = list(rows[0]["models"])
    act = [r["models"]["act"] for r in rows]
    train = res["train"]
    lines = [f"# Adaptive Computation Time on parity against fixed-step "
             f"{'transformers' if res.get('core') == 'transformer' else 'RNNs'} of the same size", "",
             f"`{command}`; {stamp}.", "",
             "Task `parity` (Graves 2016: 8 entries, 1..8 of them +-1, label = parity of the count of +1; "
             "65,536 training rows, 4,096 test rows). "
             + (f"`act`: `act_rnn`, a 128-unit tanh RNN cell with a halting unit (epsilon 0.01, at most 10 steps, "
                f"bias 1), trained with the ponder cost (tau {res.get('tau', 0.001):g}). "
                + ", ".join(f"`fixed{k}`: `rnn_steps` with the same cell and classifier run {k} step(s) per input"
                            for k in res["fixed_steps"])
                + " (the halting unit's 129 parameters are the only difference). "
                if res.get("core", "rnn") == "rnn" else
                "`act`: `act_transformer`, the entries as 8 tokens through one shared 64-wide pre-norm transformer "
                "layer (4 heads) run as many steps as the row's halting unit asks (epsilon 0.01, at most 8 steps, "
                f"bias 1), trained with the ponder cost (tau {res.get('tau', 0.001):g}). "
                + ", ".join(f"`fixed{k}`: `transformer_steps`, the same layer and classifier run {k} step(s)"
                            for k in res["fixed_steps"])
                + " (the halting unit's 65 parameters are the only difference). ")
             + f"Every model: {train['epochs']} epochs, "
             f"batch {train['batch_size']}, Adam lr {train['lr']} cosine, gradient clipping {train['grad_clip']}, the "
             "weights of the best validation epoch. Steps: cell evaluations per row (ACT's N); ponder: N + R. "
             "MACs: mean per test row over test rows run one at a time. No latency is timed.", "",
             "| seed | " + " | ".join(f"{n} acc." for n in names) + " | act mean steps | act MACs / row | "
             + " | ".join(f"{n} MACs / row" for n in names[1:]) + " | r(steps, difficulty) | r(ponder, difficulty) |",
             "|---|" + "---|" * (2 * len(names) + 3)]
    for r in rows:
        m = r["models"]
        lines.append(f"| {r['seed']} | " + " | ".join(f"{m[n]['accuracy']:.4f}" for n in names)
                     + f" | {m['act']['mean_steps']:.2f} | {m['act']['macs_per_row']:,.0f} | "
                     + " | ".join(f"{m[n]['macs_per_row']:,.0f}" for n in names[1:])
                     + f" | {_r(m['act']['steps_difficulty_r'])} | {_r(m['act']['ponder_difficulty_r'])} |")
    levels = sorted({int(k) for a in act for k in a["by_difficulty"]})

    def cell(a: dict[str, Any], k: int, key: str) -> float:
        by = a["by_difficulty"]
        return by[k][key] if k in by else by[str(k)][key]  # int keys in memory, str once read from JSON

    lines += ["", "ACT's mean steps (and accuracy) per difficulty (count of nonzero entries), per seed:", "",
              "| seed | " + " | ".join(str(k) for k in levels) + " |", "|---|" + "---|" * len(levels)]
    for r, a in zip(rows, act):
        lines.append(f"| {r['seed']} | " + " | ".join(f"{cell(a, k, 'steps'):.2f} ({cell(a, k, 'accuracy'):.3f})"
                                                     for k in levels) + " |")
    steps_by = [statistics.mean(cell(a, k, "steps") for a in act) for k in levels]
    lines.append("| mean | " + " | ".join(f"{v:.2f}" for v in steps_by) + " |")
    lines += ["", "Accuracy per difficulty, mean over seeds:", "",
              "| model | " + " | ".join(str(k) for k in levels) + " |", "|---|" + "---|" * len(levels)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(
            f"{statistics.mean(cell(r['models'][n], k, 'accuracy') for r in rows):.3f}" for k in levels) + " |")

    def mean(f):
        return statistics.mean(f(r) for r in rows)

    positive = sum((a["steps_difficulty_r"] or 0) > 0 for a in act)
    monotonic = all(b >= a for a, b in zip(steps_by, steps_by[1:]))
    peak = levels[max(range(len(levels)), key=lambda i: steps_by[i])]
    correlations = ", ".join(_r(a["steps_difficulty_r"]) for a in act)
    beats = {n: mean(lambda r: r["models"]["act"]["accuracy"] - r["models"][n]["accuracy"]) for n in names[1:]}
    lines += ["",
              f"- Ponder steps against difficulty: correlation {correlations} (positive on {positive} of {len(act)} "
              f"seeds); mean steps over the seeds {steps_by[0]:.2f} at difficulty {levels[0]}, highest at {peak} "
              f"({max(steps_by):.2f}), {steps_by[-1]:.2f} at {levels[-1]}: "
              + ("they grow with every added nonzero entry." if monotonic else
                 "they do not grow monotonically with the difficulty (bar: ponder steps grow with difficulty)."),
              "- ACT's accuracy against the fixed-step RNNs, mean over seeds: "
              + ", ".join(f"{100 * d:+.2f} pt against {n}" for n, d in beats.items())
              + f" (ACT {100 * mean(lambda r: r['models']['act']['accuracy']):.2f}%, mean "
              f"{mean(lambda r: r['models']['act']['mean_steps']):.2f} steps per row).", ""]
    return "\n".join(lines)


SECTIONS = {
    "text-exits": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --text-exits {a.text_exits} "
                            f"--text-budget {a.text_budget} --text-epochs {a.text_epochs} --text-lr {a.text_lr} "
                            f"--text-distill {a.text_distill} --text-train {a.text_train} "
                            f"--text-thresholds {a.text_thresholds} --text-criterion {a.text_criterion} "
                            f"--text-criteria {' '.join(a.text_criteria)} --rows {a.rows} --repeats {a.repeats} "
                            f"--timing-rounds {a.timing_rounds}"
                            + (f" --text-calibrations {' '.join(map(str, a.text_calibrations))}"
                               if a.text_calibrations else "")
                            + (f" --baseline-weights {a.baseline_weights}" if a.baseline_weights else "")
                            + (" --no-timing" if a.no_timing else ""),
    "exits": lambda a: f"--task {a.task} --seeds {' '.join(map(str, a.seeds))} --budget {a.budget} "
                       f"--criterion {a.criterion} --epochs {a.epochs} --rows {a.rows} --repeats {a.repeats} "
                       f"--head {a.head} --exits {a.exits}" + (f" --after {' '.join(a.after)}" if a.after else "")
                       + (f" --baseline-weights {a.baseline_weights}" if a.baseline_weights else "")
                       + (f" --time-seeds {' '.join(map(str, a.time_seeds))}" if a.time_seeds is not None else "")
                       + (f" --static-seeds {' '.join(map(str, a.static_seeds))}" if a.static_seeds is not None else "")
                       + (f" --model {a.model}" if a.model else "") + (f" --model-args '{a.model_args}'" if a.model_args else "")
                       + f" --static-args {' '.join(a.static_args)}" + (f" --distill {a.distill}" if a.distill else "")
                       + (" --no-timing" if a.no_timing else ""),
    "skip": lambda a: f"--task {a.task} --seeds {' '.join(map(str, a.seeds))} --skip-width {a.skip_width} "
                      f"--skip-depths {' '.join(map(str, a.skip_depths))} --skip-target {a.skip_target} "
                      f"--skip-penalty {a.skip_penalty} --skip-epochs {a.skip_epochs} "
                      f"--baseline-epochs {a.baseline_epochs} --rows {a.rows} --repeats {a.repeats}"
                      + (" --skip-deterministic" if a.skip_deterministic else "")
                      + (" --skip-per-block" if a.skip_per_block else "") + (f" --model {a.model}" if a.model else "") + (f" --model-args '{a.model_args}'" if a.model_args else "")
                      + (" --no-timing" if a.no_timing else ""),
    "ort-paths": lambda a: f"--seeds {a.seeds[0]} --run-dir {a.run_dir} --rows {a.rows} --repeats {a.repeats} "
                           f"--ort-rounds {a.ort_rounds}",
    "act": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --act-core {a.act_core} --act-epochs {a.act_epochs} "
                     f"--act-fixed-steps {' '.join(map(str, a.act_fixed_steps))} --act-tau {a.act_tau:g} --rows {a.rows}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=[s for s in SECTIONS if s != "ort-paths"], choices=list(SECTIONS))
    parser.add_argument("--task", default="shapes-cnn")
    parser.add_argument("--model", help="exits: a zoo model instead of the task's default (e.g. convmixer)")
    parser.add_argument("--model-args", help="exits: the model's arguments as JSON")
    parser.add_argument("--static-args", nargs="+", default=["width"],
                        help="exits: the model's integer arguments cut for the static controls (e.g. depth dim)")
    parser.add_argument("--distill", type=float, default=0.0, help="exits: self-distillation weight of the exits")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=0.005)
    parser.add_argument("--criterion", choices=["confidence", "entropy", "patience"], default="confidence")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--head", choices=["conv", "strided", "spatial", "pool"], default="strided",
                        help="exits: the early_exit step's head kind")
    parser.add_argument("--exits", type=int, default=2, help="exits: exits besides the final one")
    parser.add_argument("--after", nargs="+", help="exits: children after which exits go (default: by MACs)")
    parser.add_argument("--rows", type=int, default=64, help="test rows timed and counted one at a time")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ort-rounds", type=int, default=5, help="ort-paths: interleaved timing rounds")
    parser.add_argument("--skip-width", type=int, default=16, help="skip: cnn_shapes_dws width")
    parser.add_argument("--skip-depths", type=int, nargs=3, default=[3, 3, 3], help="skip: blocks per stage")
    parser.add_argument("--skip-target", type=float, default=0.6, help="skip: target share of the MACs")
    parser.add_argument("--skip-penalty", type=float, default=10.0, help="skip: weight of the compute penalty")
    parser.add_argument("--skip-epochs", type=int, default=5, help="skip: epochs of every step after the baseline")
    parser.add_argument("--baseline-epochs", type=int, default=0, help="skip: baseline epochs (0: the task's)")
    parser.add_argument("--skip-deterministic", action="store_true", help="skip: gates without logistic noise in "
                                                                          "training (noise: false)")
    parser.add_argument("--skip-per-block", action="store_true", help="skip: ConvNet-AIG's per-gate target loss")
    parser.add_argument("--static-seeds", type=int, nargs="*",
                        help="exits: train the static controls for these seeds only (default: all)")
    parser.add_argument("--time-seeds", type=int, nargs="*", help="exits: time only these seeds' models (default: all)")
    parser.add_argument("--no-timing", action="store_true", help="skip: leave the latency phase out")
    parser.add_argument("--act-epochs", type=int, default=0, help="act: training epochs (0: the parity task's)")
    parser.add_argument("--act-fixed-steps", type=int, nargs="+", default=[1, 2, 3],
                        help="act: steps per input of the fixed-step controls")
    parser.add_argument("--act-core", choices=["rnn", "transformer"], default="rnn",
                        help="act: ACT on a recurrent cell (act_rnn) or on a transformer layer (act_transformer)")
    parser.add_argument("--act-tau", type=float, default=3e-3, help="act: ponder cost weight (act_rnn's tau)")
    parser.add_argument("--text-exits", type=int, default=5, help="text-exits: exits (5: after each of layers 1-5)")
    parser.add_argument("--text-budget", type=float, default=0.01, help="text-exits: validation accuracy budget")
    parser.add_argument("--text-epochs", type=int, default=3, help="text-exits: epochs with the exits")
    parser.add_argument("--text-lr", type=float, default=5e-5, help="text-exits: learning rate with the exits")
    parser.add_argument("--text-distill", type=float, default=1.0, help="text-exits: self-distillation weight")
    parser.add_argument("--text-train", choices=["joint", "heads"], default="joint",
                        help="text-exits: heads and encoder together, or the heads on the frozen baseline (DeeBERT's "
                             "second stage; the baseline is then the control)")
    parser.add_argument("--text-thresholds", choices=["shared", "per_exit"], default="shared",
                        help="text-exits: one confidence threshold, or one per exit")
    parser.add_argument("--timing-rounds", type=int, default=3,
                        help="text-exits: timing rounds (each model in a fresh process per round; medians)")
    parser.add_argument("--text-criterion", choices=["confidence", "entropy", "patience", "auto"], default="confidence",
                        help="text-exits: the early_exit step's exit criterion")
    parser.add_argument("--text-criteria", nargs="+", choices=["confidence", "entropy", "patience"],
                        default=["confidence", "entropy", "patience"],
                        help="text-exits: criteria the trained exits are also calibrated with (same logits)")
    parser.add_argument("--text-calibrations", type=float, nargs="+",
                        help="text-exits: budgets at which the trained exits are also calibrated both ways and "
                             "scored on the test rows (default: --text-budget)")
    parser.add_argument("--baseline-weights", type=Path, help="exits, text-exits: start from these trained baseline weights "
                                                              "for the first of --seeds (that seed's) instead of training its "
                                                              "baseline")
    parser.add_argument("--run-dir", type=Path, help="exits, text-exits: keep the runs here (a second invocation "
                                                     "resumes them: train with --no-timing, then time alone)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(json.loads(args.worker))
        return
    import torch

    torch.set_num_threads(args.threads)
    run_section_loop("dynamic.py", "dynamic", args, SECTIONS, globals())


if __name__ == "__main__":
    main()
