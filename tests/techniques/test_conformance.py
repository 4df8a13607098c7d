"""The same checks for every registered step (as timm tests every registered model).

Each step, with the smallest config that does something on digits-cnn, must: refuse an unknown
field by name; change the model (or, for ``deploy``, where it is measured); survive a kill right
after it with the same final weights as an uninterrupted run (its checkpoint reloads through its
``restore``, and a later step trains on the reloaded model exactly as on the live one); reload to
the quality the run recorded; and export to ONNX Runtime with outputs that match eager. A new
step fails ``test_every_registered_step_has_a_case`` until it is given a case here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from slimkit.core.config import parse_config
from slimkit.core.errors import ConfigError
from slimkit.core.io import load_state_dict
from slimkit.core.registry import STEPS, load_builtins
from slimkit.recipes.runner import run_recipe
from slimkit.tasks import build_task

# a space of small networks for 8x8 digits (the nas step replaces the model with the one it chooses)
NAS_SPACE = {"base": ["conv_r1_k3_s1_c8", "ir_r1_k3_s2_e2_c16"], "stem": 8, "stages": [{}, {"depth": [1, 2], "kernel": [3, 5]}]}
# the smallest config of each step that changes a trained digits-cnn
CASES: dict[str, dict] = {
    "train": {"epochs": 1, "lr": 1e-3},
    "fuse": {},
    "prune": {"sparsity": 0.7},
    "prune_structured": {"ratio": 0.3},
    "distill": {"student": {"derive": {"width": 0.5}}, "losses": {"logits": {}}, "finetune": {"epochs": 1}},
    "factorize": {"ratio": 0.3},
    "lora": {"rank": 4, "finetune": {"epochs": 1}},
    "quantize": {"calibration_samples": 128},
    "qat": {"calibration_samples": 128, "finetune": {"epochs": 1}},
    "quantize_weights": {"bits": 4, "group_size": 32},
    "cluster": {"clusters": 8},
    "hash": {"finetune": {"epochs": 1}},
    "deploy": {"backend": "onnxruntime"},
    "sparse_train": {"method": "rigl", "sparsity": 0.7, "interval": 5, "finetune": {"epochs": 1}},
    "lottery": {"sparsity": 0.7, "rounds": 1, "finetune": {"epochs": 1}},
    "l0": {"penalty": 3.0, "finetune": {"epochs": 3}},
    "variational_dropout": {"finetune": {"epochs": 2}},
    "bayesian_compression": {"finetune": {"epochs": 3}},
    "early_exit": {"budget": 0.02, "finetune": {"epochs": 2}},
    "layer_skip": {"target_macs": 0.7, "penalty": 50.0, "finetune": {"epochs": 2}},
    "nas": {"space": NAS_SPACE, "trials": 2, "strategy": "random", "finetune": {"epochs": 2}},
    "tinyml": {"check_rows": 64},
    "on_device_train": {"mode": "bias", "finetune": {"epochs": 1}},
}
# steps that need an earlier one (an int8 model: tinyml writes it as C, on_device_train tunes it)
INT8 = {"quantize": {"calibration_samples": 128}}  # 7-bit weights on CPUs whose ONNX Runtime kernels saturate
BEFORE: dict[str, list[dict]] = {"tinyml": [INT8], "on_device_train": [INT8]}
# steps that need another model than digits-cnn's on its data (layer_skip: residual blocks)
TASKS: dict[str, dict] = {"layer_skip": {"name": "digits-cnn", "model": "cnn_shapes_dws",
                                         "model_args": {"width": 8, "residual": True}}}


def _task(name: str):
    return TASKS.get(name, "digits-cnn")


# steps whose model computes the same function by design (judged by what else they change)
EXACT = {"fuse", "deploy"}
# what runs after the step: it trains the reloaded model (so a resumed run matches only if the
# checkpoint restores every tensor and flag); models whose weights are integer codes cannot train,
# and are measured again on ONNX Runtime instead (eager's figures there come from the reloaded model)
AFTER: dict[str, dict] = {"quantize": {"deploy": {"backend": "onnxruntime"}},
                          "qat": {"deploy": {"backend": "onnxruntime"}},
                          # an int8 model trains only as on a device (which trains the reloaded model)
                          "tinyml": {"on_device_train": {"mode": "bias", "finetune": {"epochs": 1}}},
                          "on_device_train": {"tinyml": {"check_rows": 32}}}
MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}


def _recipe(name: str) -> dict:
    return {"task": _task(name), "seed": 0, "baseline": {"train": {"epochs": 3}}, "measure": MEASURE,
            "steps": [*BEFORE.get(name, []), {name: CASES[name]}, AFTER.get(name, {"train": {"epochs": 1, "lr": 1e-4}})]}


def _at(name: str) -> int:
    """The step's index among the run's steps (0: the baseline)."""
    return 1 + len(BEFORE.get(name, []))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (run folder, results) of the uninterrupted run, made once per step."""
    made = {}

    def get(name: str):
        if name not in made:
            out = tmp_path_factory.mktemp(f"conformance-{name}") / "run"
            made[name] = (out, run_recipe(_recipe(name), out).results)
        return made[name]

    return get

# deploy's case compiles and times on ONNX Runtime in a worker process at every run (about a minute
# each); tests/backends/test_deploy.py covers it in the default suite, these run with `make test-all`
SLOW = {"deploy"}
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(CASES)]


def test_every_registered_step_has_a_case():
    load_builtins()
    assert set(STEPS.names()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_case_validates_and_an_unknown_field_is_named(name):
    cls = STEPS.entry(name).config
    parse_config(cls, CASES[name], name)
    with pytest.raises(ConfigError, match=rf"{name}: unknown field 'no_such_field'"):
        parse_config(cls, {**CASES[name], "no_such_field": 1}, name)


@pytest.mark.parametrize("name", NAMES)
def test_the_step_is_not_a_no_op(name, runs, rebuild_run_step):
    """It changes the stored tensors and what the model computes (``fuse``: the tensors only;
    ``deploy``: neither, but where every later measurement runs)."""
    out, results = runs(name)
    base, step = results["steps"][_at(name) - 1], results["steps"][_at(name)]
    before, after = load_state_dict(out / base["artifact"]), load_state_dict(out / step["artifact"])
    same_tensors = before.keys() == after.keys() and all(
        before[k].shape == after[k].shape and torch.equal(before[k], after[k]) for k in before)
    if name == "deploy":
        assert same_tensors and step["metrics"]["backend"] == "onnxruntime" != base["metrics"]["backend"]
        return
    if name == "tinyml":  # the model passes on unchanged; what the step made is checked C
        info = step["info"]
        assert same_tensors and info["bit_exact_rows"] == info["test_rows"] == 64
        assert all((out / "steps" / f"{_at(name):02d}-tinyml" / f).is_file() for f in info["files"])
        return
    assert not same_tensors, f"{name} left every tensor as it was"
    if name not in EXACT:
        x = build_task(_task(name)).data.test.inputs[0]
        with torch.no_grad():
            outputs = [rebuild_run_step(out, _task(name), i, results["steps"][i])[0](x)
                       for i in (_at(name) - 1, _at(name))]
        assert not torch.equal(*outputs), f"{name}: the model computes what it computed before"


def _killed_as_the_last_step_starts(done: Path, to: Path) -> int:
    """The folder a run killed as its last step starts leaves, made from the uninterrupted run's:
    its run state without the last step's record (the state is written after each finished step),
    without that step's files and the run's results and report (written after each step, here they
    would hold the last one). The run files of a real kill are tested by tests/test_cli.py (a
    SIGKILLed `slimkit run`) and tests/recipes/test_runner.py; this test is about restoring each
    step's model. The number of finished steps left."""
    shutil.copytree(done, to)
    state = json.loads((to / "run-state.json").read_text())
    last = state["steps"].pop()
    folder = to / Path(last["artifact"]).parent
    assert folder.parent == to / "steps" and folder.name.startswith(f"{len(state['steps']):02d}-"), last["artifact"]
    shutil.rmtree(folder)
    (to / "run-state.json").write_text(json.dumps(state))
    for name in ("results.json", "report.md", "report.html", "pareto.png"):
        (to / name).unlink(missing_ok=True)
    return len(state["steps"])


@pytest.mark.parametrize("name", NAMES)
def test_kill_after_the_step_then_resume_gives_the_same_weights(name, runs, tmp_path):
    out, results = runs(name)
    finished = _killed_as_the_last_step_starts(out, tmp_path / "run")
    assert finished == len(_recipe(name)["steps"])  # the baseline and every step but the last
    resumed = run_recipe(_recipe(name), tmp_path / "run")
    assert resumed.resumed_steps == finished
    last = results["steps"][-1]["artifact"]
    straight, again = load_state_dict(out / last), load_state_dict(tmp_path / "run" / last)
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight), f"{name}: resumed weights differ"

    def qualities(res):
        return [s["metrics"].get("eager", s["metrics"])["quality"] for s in res["steps"]]

    assert qualities(resumed.results) == qualities(results)


@pytest.mark.parametrize("name", NAMES)
def test_the_checkpoint_reloads_to_the_recorded_quality(name, runs, rebuild_run_step):
    out, results = runs(name)
    step = results["steps"][_at(name)]
    _, quality = rebuild_run_step(out, _task(name), _at(name), step)
    recorded = step["metrics"]["eager"]["quality"] if "eager" in step["metrics"] else step["metrics"]["quality"]
    assert quality == pytest.approx(recorded, abs=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_the_model_exports_to_onnx_runtime_and_matches_eager(name, runs, rebuild_run_step, tmp_path):
    pytest.importorskip("onnxruntime")
    from slimkit.backends.step import default_tolerance
    from slimkit.core.registry import BACKENDS

    out, results = runs(name)
    model, _ = rebuild_run_step(out, _task(name), _at(name), results["steps"][_at(name)])
    test = build_task(_task(name)).data.test
    x = test.inputs[0][:64]
    compiled = BACKENDS.get("onnxruntime").compile(model, (x[:1],), precision="fp32", threads=1,
                                                   workdir=tmp_path / "ort")
    with torch.no_grad():
        eager = model(x)
    rel = float((compiled(x) - eager).abs().max() / eager.abs().max())
    assert rel <= default_tolerance(model), f"{name}: ONNX Runtime differs from eager by {rel:.2g}"
