"""Isolated backend measurement, the ``deploy`` step (named and auto) and ``slimkit backends``."""

import json

import pytest
import torch

from slimkit.backends.measure import ModelSpec, measure_backend, measure_backends
from slimkit.core.errors import ConfigError, SlimkitError
from slimkit.core.io import save_state_dict
from slimkit.measure.config import MeasureConfig
from slimkit.recipes.runner import run_recipe
from slimkit.recipes.schema import load_recipe
from slimkit.tasks import build_task

MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """digits-cnn with random weights saved as a spec (numerics do not need training)."""
    task = build_task("digits-cnn")
    torch.manual_seed(0)
    model = task.build_model().eval()
    weights = save_state_dict(tmp_path_factory.mktemp("w") / "w.safetensors", model.state_dict())
    return task, model, ModelSpec({"name": "digits-cnn"}, str(weights))


def test_isolated_measurement_rebuilds_the_model_and_matches_in_process(digits, tmp_path):
    task, model, spec = digits
    cfg = MeasureConfig(**MEASURE)
    runs = measure_backends(task, [("eager", "fp32"), ("onnxruntime", "fp32")], cfg, tmp_path, spec=spec, model=model)
    eager, onnx = runs
    assert eager.ok and onnx.ok, (eager.error, onnx.error)
    assert eager.max_abs_diff == 0  # the child rebuilt exactly this model from the spec
    assert onnx.max_rel_diff < 1e-5 and onnx.quality == pytest.approx(eager.quality, abs=1e-9)
    assert (tmp_path / "onnxruntime-fp32" / "model.onnx").stat().st_size == onnx.artifact_bytes
    assert onnx.latency_b1["batch_size"] == 1 and onnx.latency_bN["batch_size"] == 8
    local = measure_backend(task, "onnxruntime", "fp32", cfg, tmp_path / "local", model=model, isolate=False,
                            reference=None)
    assert local.ok and local.quality == pytest.approx(onnx.quality, abs=1e-9)


def test_a_failing_backend_is_reported_not_raised(digits, tmp_path):
    task, _, spec = digits
    bad = ModelSpec(spec.task, str(tmp_path / "missing.safetensors"))
    run = measure_backend(task, "onnxruntime", "fp32", MeasureConfig(**MEASURE), tmp_path, spec=bad)
    assert not run.ok and "missing.safetensors" in run.error
    run = measure_backend(task, "xla", "fp32", MeasureConfig(**MEASURE), tmp_path, spec=spec)
    assert not run.ok and run.error.startswith("unavailable: ")


def _recipe(steps, task="digits-cnn"):
    return {"task": task, "seed": 1, "baseline": {"train": {"epochs": 1}}, "measure": MEASURE, "steps": steps}


def test_deploy_auto_picks_the_fastest_within_tolerance_and_later_steps_use_it(tmp_path):
    recipe = _recipe([{"fuse": {}}, {"deploy": {"candidates": ["onnxruntime"], "versus_baseline": True}},
                      {"train": {"epochs": 1}}])
    result = run_recipe(recipe, tmp_path / "run").results
    base, fuse, deploy, train = result["steps"]
    assert fuse["info"]["bn_folded"] == 3 and fuse["metrics"]["backend"] == "eager"
    info = deploy["info"]
    assert [(c["backend"], c["precision"]) for c in info["candidates"]] == [("eager", "fp32"), ("onnxruntime", "fp32")]
    chosen = [c for c in info["candidates"] if c["decision"].startswith("chosen")]
    assert len(chosen) == 1 and chosen[0]["backend"] == info["backend"]
    fastest = min(info["candidates"], key=lambda c: c["b1_ms"])
    assert info["backend"] == fastest["backend"]  # both are within tolerance: the faster one wins
    for step in (deploy, train):  # the deploy step and every later one are measured on the chosen backend
        m = step["metrics"]
        assert m["backend"] == info["backend"] and m["eager"]["quality"] == pytest.approx(m["quality"], abs=1e-9)
        first = (tmp_path / "run" / m["artifact"].split(" + ")[0])
        assert first.is_file() and m["size_bytes"] >= first.stat().st_size
    assert train["deployment"] == {"backend": info["backend"], "precision": "fp32"}
    assert [s["target"]["backend"] for s in result["steps"]] == ["eager", "eager", info["backend"], info["backend"]]
    assert base["deployment"] is None and train["target"] == {"backend": info["backend"], "precision": "fp32",
                                                              "device": "cpu", "topology": None}
    for c in info["candidates"]:  # versus_baseline: the unfused baseline timed beside the fused model
        assert c["versus_b1_ms"] > 0 and c["speedup_vs_versus_b1"] == pytest.approx(c["versus_b1_ms"] / c["paired_b1_ms"])
        assert c["speedup_vs_versus_bN"] == pytest.approx(c["versus_bN_ms"] / c["paired_bN_ms"])
    ort_dir = tmp_path / "run" / "steps" / "02-deploy" / "candidates" / "onnxruntime-fp32"
    # ONNX Runtime is rebuilt without spin-waiting threads for the interleaved comparison
    assert (ort_dir / "versus" / "model.onnx").is_file() and (ort_dir / "paired" / "model.onnx").is_file()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Candidates of deploy" in report and "chosen: fastest at b1" in report and "× vs baseline b1" in report


def test_deploy_tolerance_rejects_backends_that_differ(tmp_path):
    recipe = _recipe([{"deploy": {"candidates": ["onnxruntime"], "tolerance": 1e-30}}])
    info = run_recipe(recipe, tmp_path / "run").results["steps"][1]["info"]
    rows = {c["backend"]: c for c in info["candidates"]}
    assert info["backend"] == "eager"  # eager is the reference, so it differs by exactly 0
    assert rows["onnxruntime"]["decision"].startswith("rejected: outputs differ from eager fp32")


def test_named_deploy_then_resume(tmp_path):
    recipe = _recipe([{"deploy": {"backend": "onnxruntime"}}, {"train": {"epochs": 1}}])
    calls = []

    def killed(*args, **kwargs):
        calls.append(kwargs["description"])
        if kwargs["description"] == "train":
            raise KeyboardInterrupt
        from slimkit.train.loop import fit

        return fit(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "run", train_fn=killed)
    resumed = run_recipe(recipe, tmp_path / "run")
    assert resumed.resumed_steps == 2
    last = resumed.results["steps"][-1]
    assert last["metrics"]["backend"] == "onnxruntime" and last["metrics"]["artifact"].endswith("model.onnx")


@pytest.mark.parametrize("params, message", [
    ({"backend": "onnxrt"}, "unknown backend 'onnxrt'; did you mean 'onnxruntime'"),
    ({"backend": "onnxruntime", "precision": ["fp32", "bf16"]}, "give one precision"),
    ({"backend": "eager", "candidates": ["tvm"]}, "applies to backend 'auto' only"),
    ({"precision": "fp8"}, "precision"),
    ({"tolerance": 0}, "tolerance"),
    ({"backnd": "auto"}, "backnd"),
])
def test_bad_deploy_config_names_the_problem(params, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(_recipe([{"deploy": params}]))


def test_deploy_outside_a_run_is_a_clear_error():
    from slimkit.backends.step import DeployConfig, deploy
    from slimkit.tasks.context import Context

    with pytest.raises(SlimkitError, match="inside a recipe run"):
        deploy(torch.nn.Linear(2, 2), DeployConfig(), Context(task=build_task("digits-cnn")))


def test_backends_command_json(tmp_path):
    from typer.testing import CliRunner

    from slimkit.cli import app

    result = CliRunner().invoke(app, ["backends", "--task", "digits-mlp", "--epochs", "1", "--backend", "onnxruntime",
                                      "--backend", "xla", "--repeats", "3", "--threads", "1", "--batch-n", "8", "--json",
                                      "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"eager", "onnxruntime", "xla"}
    assert rows["eager"]["speedup_b1"] == 1.0 and rows["onnxruntime"]["max_abs_diff"] < 1e-4
    assert rows["onnxruntime"]["quality"] == pytest.approx(rows["eager"]["quality"], abs=1e-9)
    assert not rows["xla"]["ok"] and "torch_xla" in rows["xla"]["error"]
    assert (tmp_path / "b" / "onnxruntime-fp32" / "model.onnx").is_file()


def test_backends_command_rejects_unknown_names():
    from typer.testing import CliRunner

    from slimkit.cli import app

    result = CliRunner().invoke(app, ["backends", "--task", "digits-mlp", "--backend", "tensorrtt"])
    assert result.exit_code == 2 and "did you mean 'tensorrt'" in result.output
    result = CliRunner().invoke(app, ["backends", "--task", "digits-mlp", "--precision", "int3"])
    assert result.exit_code == 2 and "unknown precision 'int3'" in result.output


def test_verdict_checks_numerics_then_quality():
    from slimkit.backends.step import _verdict

    row = {"ok": True, "error": None, "max_rel_diff": 0.01, "quality": 0.97, "val_quality": 0.97}
    assert _verdict(row, 1e-4, None, 0.98).startswith("rejected: outputs differ")
    assert _verdict(row, 0.05, None, 0.98) == "eligible"  # no quality budget given
    assert _verdict(row, 0.05, 0.5, 0.98) == "rejected: validation quality drops by 1 points > max_quality_drop 0.5"
    assert _verdict(row, 0.05, 2, 0.98) == "eligible"
    assert _verdict({**row, "ok": False, "error": "unavailable: x"}, 1e-4, None, 0.98) == "unavailable: x"


def test_an_integer_model_is_judged_by_its_graph_and_quality_not_by_rounding():
    """tolerance None (integer layers): a runtime's output difference alone never rejects; an
    exported graph that differs from eager before optimisations does, and so does lost quality."""
    from slimkit.backends.step import _verdict

    rounding = {"ok": True, "error": None, "max_rel_diff": 0.034, "val_quality": 0.97,
                "info": {"graph_rel_diff": 1e-7}}
    assert _verdict(rounding, None, 1.0, 0.975) == "eligible"
    assert _verdict({**rounding, "val_quality": 0.95}, None, 1.0, 0.975).startswith(
        "rejected: validation quality drops by 2.5 points")
    wrong = {**rounding, "info": {"graph_rel_diff": 0.2}}
    assert _verdict(wrong, None, 1.0, 0.975).startswith("rejected: the exported graph, run without optimisations")
    # a model whose outputs float-level noise moves by 0.3 cannot be held to 0.01: a tie flipped by
    # another order of float ops is amplified; 0.2 is within that
    assert _verdict(wrong, None, 1.0, 0.975, graph_tolerance=0.3) == "eligible"


def test_the_graph_tolerance_grows_only_for_a_model_that_float_noise_moves():
    from slimkit.backends.step import GRAPH_TOLERANCE, _graph_tolerance
    from slimkit.tasks import build_task
    from slimkit.tasks.context import Context

    task = build_task("digits-mlp")
    ctx = Context(task=task)
    smooth = task.build_model()
    assert _graph_tolerance(smooth, ctx) == GRAPH_TOLERANCE

    class Chaotic(torch.nn.Module):  # rounds to a grid far finer than float noise, then scrambles
        def forward(self, x):
            return torch.sin(torch.round(smooth(x) / 1e-7) * 1.3)

    assert _graph_tolerance(Chaotic(), ctx) > 0.25


def test_quality_budget_is_points_on_the_validation_split():
    """A candidate worse by more than the budget on validation is rejected, whatever its test
    quality; one within the budget on validation is eligible even if its test quality fell more."""
    from slimkit.backends.step import _verdict

    worse_on_val = {"ok": True, "error": None, "max_rel_diff": 0.0, "quality": 0.99, "val_quality": 0.975}
    assert _verdict(worse_on_val, 0.05, 1.0, 0.99).startswith("rejected: validation quality drops by 1.5 points")
    worse_on_test = {**worse_on_val, "quality": 0.90, "val_quality": 0.985}
    assert _verdict(worse_on_test, 0.05, 1.0, 0.99) == "eligible"
    assert _verdict({**worse_on_val, "val_quality": None}, 0.05, 1.0, 0.99).startswith("rejected: no validation")


def test_a_measured_candidate_carries_its_validation_quality(tmp_path):
    from slimkit.backends.measure import ModelSpec, measure_backends, write_table
    from slimkit.core.io import save_state_dict
    from slimkit.measure.config import MeasureConfig
    from slimkit.measure.quality import predict
    from slimkit.tasks import build_task

    task = build_task("digits-mlp")
    torch.manual_seed(0)
    model = task.build_model().eval()
    weights = save_state_dict(tmp_path / "w.safetensors", model.state_dict())
    cfg = MeasureConfig(batch_n=4, repeats=3, warmup=1, threads=1, memory=False)
    expected = task.evaluate(predict(model, task.data.val), task.data.val.targets)["quality"]
    for isolate in (True, False):
        runs = measure_backends(task, [("eager", "fp32")], cfg, tmp_path / f"c{isolate}",
                                spec=ModelSpec({"name": "digits-mlp"}, str(weights)), model=model, isolate=isolate)
        assert runs[0].ok, runs[0].error
        assert write_table(runs)[0]["val_quality"] == pytest.approx(expected)


def test_default_tolerance_is_looser_for_quantized_models():
    from slimkit.backends.step import default_tolerance
    from slimkit.techniques.quantization.ptq import prepare_static

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    assert default_tolerance(model) == 1e-4
    assert default_tolerance(prepare_static(model)[0]) == 0.02


def test_a_backend_owns_its_device_rule():
    """Shared measurement code asks the backend where it runs; none is special-cased by name."""
    import inspect

    from slimkit.backends import measure
    from slimkit.core.registry import BACKENDS, load_builtins

    load_builtins()
    assert BACKENDS.get("tensorrt").device_for("cpu") == "cuda"
    assert BACKENDS.get("onnxruntime").device_for("cpu") == "cpu"
    source = inspect.getsource(measure)
    assert not any(f'== "{name}"' in source for name in BACKENDS.names() if name != "eager")


def test_custom_task_deploys_from_another_folder(tmp_path, monkeypatch):
    """The worker imports the custom task's module the way the run did: from the recipe's folder."""
    import sys

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "blob_task_for_deploy.py").write_text(
        "import torch\n\n"
        "def make_model():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n\n"
        "def load_data():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(96, 4, generator=g)\n"
        "    y = (x[:, 0] > 0).long()\n"
        "    return {'train': (x[:64], y[:64]), 'val': (x[64:80], y[64:80]), 'test': (x[80:], y[80:])}\n")
    (folder / "recipe.yaml").write_text(json.dumps({
        "task": {"name": "custom", "model": "blob_task_for_deploy:make_model", "data": "blob_task_for_deploy:load_data",
                 "train": {"epochs": 1}},
        "measure": MEASURE, "steps": [{"deploy": {"backend": "onnxruntime"}}]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_recipe adds the recipe's folder
    monkeypatch.delitem(sys.modules, "blob_task_for_deploy", raising=False)
    result = run_recipe(load_recipe(folder / "recipe.yaml"), tmp_path / "run")
    deployed = result.results["steps"][-1]
    assert deployed["deployment"] == {"backend": "onnxruntime", "precision": "fp32"}
    assert deployed["metrics"]["artifact"].endswith("model.onnx")
    sys.modules.pop("blob_task_for_deploy", None)
