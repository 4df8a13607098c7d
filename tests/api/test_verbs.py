"""slimkit.api: each verb on a plain model and a DataLoader gives what its recipe step gives."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import slimkit.api as sk
from slimkit.core.config import parse_config
from slimkit.core.errors import CheckpointError, ConfigError
from slimkit.core.registry import STEPS
from slimkit.tasks.context import Context




def _loader(split, batch_size: int = 64) -> DataLoader:
    return DataLoader(TensorDataset(*split.inputs, split.targets), batch_size=batch_size, shuffle=False)


def _step(task, model, technique: str, options: dict):
    entry = STEPS.entry(technique)
    cfg = parse_config(entry.config, options, technique)
    return entry.obj.fn(copy.deepcopy(model), cfg, Context(task=task)).model


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


CASES = [
    ("prune", {"sparsity": 0.5}),
    ("quantize", {"calibration_samples": 128}),
    ("qat", {"calibration_samples": 64, "finetune": {"epochs": 1}}),
    ("prune_structured", {"target_macs": 0.7, "finetune": {"epochs": 1}}),
    ("cluster", {"clusters": 16}),
    ("factorize", {"ratio": 0.5, "layers": ["linear", "conv"], "min_weights": 256}),
    ("fuse", {}),
    ("quantize_weights", {"bits": 4, "group_size": None}),
    ("hash", {"compression": 0.25, "finetune": {"epochs": 1}}),
    ("lora", {"rank": 4, "finetune": {"epochs": 1}}),
    ("train", {"epochs": 1, "lr": 0.001}),
    ("early_exit", {"budget": 0.02, "finetune": {"epochs": 1}}),
    ("layer_skip", {"blocks": ["0.2", "1.2"], "finetune": {"epochs": 1}}),  # cnn_digits: no residual blocks
    ("nas", {"space": {"base": ["conv_r1_k3_s1_c8", "ir_r1_k3_s2_e2_c16"], "stem": 8,
                       "stages": [{}, {"kernel": [3, 5]}]}, "trials": 2, "finetune": {"epochs": 1}}),
]


@pytest.mark.parametrize("technique,options", CASES, ids=[c[0] for c in CASES])
def test_the_verb_gives_the_steps_weights(technique, options, trained):
    task, model = trained
    by_step = _step(task, model, technique, options)
    verb = getattr(sk, technique)
    data = task.data
    if technique == "fuse":
        by_verb = verb(model, data.train.example_inputs(8), **options)
    else:  # the task's own splits: a DataLoader's rows are the same values (test_data_in_the_shapes_users_have)
        # but stacked with other strides, which can move a conv's float rounding by an ulp
        by_verb = verb(model, data.train, val_data=data.val, **options)
    _same_weights(by_verb, by_step)
    x = data.test.inputs[0][:16]
    with torch.no_grad():
        assert torch.equal(by_verb.eval()(x), by_step.eval()(x))
    assert [h["technique"] for h in sk.history(by_verb)] == [technique]
    assert not sk.history(model)  # the model given is left as it was


def test_verbs_leave_the_given_model_untouched(trained):
    task, model = trained
    before = copy.deepcopy(model.state_dict())
    sk.prune(model, _loader(task.data.train), sparsity=0.8)
    _same_weights(model, _with_state(model, before))


def _with_state(model: nn.Module, state: dict) -> nn.Module:
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other


def test_save_and_load_rebuild_what_the_verbs_made(trained, tmp_path):
    task, model = trained
    data = task.data
    pruned = sk.prune_structured(model, _loader(data.train), target_macs=0.7)
    q = sk.quantize(pruned, _loader(data.train), calibration_samples=128)
    assert [h["technique"] for h in sk.history(q)] == ["prune_structured", "quantize"]
    path = sk.save(q, tmp_path / "q.safetensors")
    loaded = sk.load(path, task.build_model)
    x = data.test.inputs[0][:32]
    with torch.no_grad():
        assert torch.equal(loaded(x), q.eval()(x))
    assert [h["technique"] for h in sk.history(loaded)] == ["prune_structured", "quantize"]
    with pytest.raises(CheckpointError, match="which this model does not have"):
        sk.load(path, lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        sk.load(tmp_path / "junk.safetensors", task.build_model)


def test_distill_trains_the_student_on_the_teachers_outputs(trained):
    task, teacher = trained
    data = task.data
    student = _small_cnn()
    before = copy.deepcopy(student.state_dict())
    out = sk.distill(student, teacher, _loader(data.train), val_data=_loader(data.val),
                     losses={"logits": {}}, finetune={"epochs": 6, "lr": 0.01})
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())
    _same_weights(student, _with_state(student, before))  # the student given is untouched
    quality = sk.measure(out, _loader(data.test), repeats=3, warmup=1)["quality"]
    teacher_quality = sk.measure(teacher, _loader(data.test), repeats=3, warmup=1)["quality"]
    assert quality > 0.5 and teacher_quality > 0.5, (quality, teacher_quality)  # 10 classes: chance is 0.1


def _small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))


def test_data_in_the_shapes_users_have(trained):
    task, model = trained
    train = task.data.train
    x, y = train.inputs[0][:100], train.targets[:100]
    split, labelled = sk.as_split([(x[:50], y[:50]), (x[50:], y[50:])])
    assert labelled and torch.equal(split.inputs[0], x) and torch.equal(split.targets, y)
    split, labelled = sk.as_split(_loader(train, 32), max_samples=40)
    assert labelled and len(split) == 40
    split, _ = sk.as_split(_loader(train, 64))  # a whole DataLoader: the very rows, in order
    assert torch.equal(split.inputs[0], train.inputs[0]) and torch.equal(split.targets, train.targets)
    split, labelled = sk.as_split([x[:10], x[10:20]])  # bare tensors: inputs only
    assert not labelled and len(split) == 20
    split, _ = sk.as_split([{"pixels": x[:5], "label": y[:5]}], transform_fn=lambda b: (b["pixels"], b["label"]))
    assert torch.equal(split.targets, y[:5])


@pytest.mark.parametrize("data, message", [
    ([{"input_ids": torch.zeros(2, 3), "labels": torch.zeros(2)}], "is a mapping .*transform_fn="),
    ([], "yielded no batch"),
    ([(torch.zeros(2, 3), torch.zeros(3))], "different numbers of rows"),
    ([(torch.zeros(2, 3), torch.zeros(2)), torch.zeros(2, 3)], "batch 1 has no targets"),
    ([("a", "b")], "batch 0 is a tuple"),
    (torch.zeros(4, 3), "a bare tensor is ambiguous"),
])
def test_data_that_cannot_be_used_is_a_one_line_error(data, message):
    with pytest.raises(ConfigError, match=message):
        sk.as_split(data)


def test_a_wrong_option_names_the_verb_and_the_field(trained):
    task, model = trained
    with pytest.raises(ConfigError, match="slimkit.prune.*sparsty"):
        sk.prune(model, _loader(task.data.train), sparsty=0.5)
    with pytest.raises(ConfigError, match="needs labelled data"):
        sk.qat(model, [task.data.train.inputs[0][:64]], calibration_samples=32, finetune={"epochs": 1})


def test_measure_reports_bytes_macs_latency_and_the_users_metric(trained):
    task, model = trained
    test = task.data.test
    metrics = sk.measure(model, _loader(test), repeats=3, warmup=1)
    assert metrics["size_bytes"] > 0 and metrics["macs"] > 0 and 0.0 <= metrics["quality"] <= 1.0
    wrong = sk.measure(model, _loader(test), metric=lambda o, t: float((o.argmax(-1) != t).float().mean()),
                       repeats=3, warmup=1)
    assert wrong["quality"] == pytest.approx(1.0 - metrics["quality"])
    unlabelled = sk.measure(model, [test.inputs[0][:64]], repeats=3, warmup=1)
    assert "quality" not in unlabelled and unlabelled["macs"] == metrics["macs"]


def test_export_writes_each_format_and_refuses_an_unknown_one(trained, tmp_path):
    import onnxruntime as ort

    task, model = trained
    x = task.data.test.inputs[0][:4]
    (onnx_file,) = sk.export(model, x[:1], tmp_path / "m.onnx")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        assert float((got - model(x)).abs().max() / model(x).abs().max()) < 1e-4
    pytest.importorskip("openvino")
    files = sk.export(model, x[:1], tmp_path / "m.xml")
    assert sorted(f.suffix for f in files) == [".bin", ".xml"] and all(f.stat().st_size for f in files)
    (weights,) = sk.export(sk.prune(model, task.data.train, sparsity=0.5), x[:1], tmp_path / "p.safetensors")
    assert sk.history(sk.load(weights, task.build_model))[0]["technique"] == "prune"
    with pytest.raises(ConfigError, match="cannot tell the format of 'm.pt'"):
        sk.export(model, x[:1], tmp_path / "m.pt")


def test_deploy_returns_a_checked_callable_and_auto_picks_by_timing(trained, tmp_path):
    from slimkit.core.errors import SlimkitError

    task, model = trained
    x = task.data.test.inputs[0][:8]
    compiled = sk.deploy(model, x, backend="onnxruntime", workdir=tmp_path / "a")
    with torch.no_grad():
        assert float((compiled(x) - model(x)).abs().max() / model(x).abs().max()) <= 1e-4
    assert compiled.backend == "onnxruntime" and compiled.info["candidates"][0]["decision"] == "chosen"
    auto = sk.deploy(model, x, candidates=["eager", "onnxruntime"], workdir=tmp_path / "b")
    rows = {r["backend"]: r for r in auto.info["candidates"]}
    assert set(rows) == {"eager", "onnxruntime"} and all("median_ms" in r for r in rows.values())
    fastest = min(rows, key=lambda n: rows[n]["median_ms"])
    assert auto.backend == fastest and rows[fastest]["decision"].startswith("chosen")
    q = sk.quantize(model, task.data.train, calibration_samples=128)
    int8 = sk.deploy(q, x, backend="onnxruntime", workdir=tmp_path / "c")  # integer rounding allowed
    assert int8.info["candidates"][0]["tolerance"] >= 0.02
    with pytest.raises(SlimkitError, match="no backend qualifies .*onnxruntime: outputs differ"):
        sk.deploy(q, x, backend="onnxruntime", tolerance=1e-9, workdir=tmp_path / "d")


def test_sparse_verbs_rewind_to_the_initial_weights_given_in_code():
    import copy

    import slimkit.api as sk
    from slimkit.core.errors import ConfigError
    from slimkit.tasks import build_task

    task = build_task("digits-mlp")
    torch.manual_seed(0)
    model = task.build_model()
    initial = copy.deepcopy(model.state_dict())
    loader = list(zip(task.data.train.inputs[0].split(64), task.data.train.targets.split(64)))
    trained = sk.train(model, loader, epochs=5)
    ticket = sk.lottery(trained, loader, initial_weights=initial, sparsity=0.8, rounds=2, finetune={"epochs": 3})
    info = sk.history(ticket)[-1]["info"]
    assert info["sparsity"] == pytest.approx(0.8, abs=1e-3) and len(info["rounds"]) == 2
    with pytest.raises(ConfigError, match="initial_weights"):
        sk.sparse_train(model, loader, method="static", sparsity=0.8)
    gated = sk.variational_dropout(trained, loader, finetune={"epochs": 3})
    assert sk.history(gated)[-1]["info"]["sparsity"] > 0
    coded = sk.bayesian_compression(trained, loader, finetune={"epochs": 3}, entropy_code=False)
    assert all(b <= 8 for b in sk.history(coded)[-1]["info"]["bits_per_layer"].values())


def test_tinyml_writes_c_checked_on_the_users_rows(trained, tmp_path):
    from slimkit.backends.tinyml.build import host_compiler

    if host_compiler() is None:
        pytest.skip("no C compiler on PATH")
    task, model = trained
    loader = _loader(task.data.val)
    q = sk.quantize(model, loader, calibration_samples=128, weight_range="int8")
    report = sk.tinyml(q, loader, tmp_path, name="digits")
    assert report["bit_exact_rows"] == report["test_rows"] == len(task.data.val)
    assert report["c_quality"] == pytest.approx(report["int8_eager_quality"], abs=1 / len(task.data.val) + 1e-9)
    assert (tmp_path / "c" / "digits.c").is_file() and (tmp_path / "c" / "digits.h").is_file()
    with pytest.raises(ConfigError, match="C identifier"):
        sk.tinyml(q, loader, tmp_path, name="not valid")
