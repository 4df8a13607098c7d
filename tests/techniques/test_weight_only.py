"""Weight-only int4/int8 quantization: storage, round to nearest, GPTQ, export, the step."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import CheckpointError, ConfigError
from slimkit.core.step import rebuild_model, restore_step
from slimkit.measure.quality import predict
from slimkit.recipes.runner import run_recipe
from slimkit.tasks import build_task
from slimkit.techniques.quantization.gptq import HessianAccumulator, gptq_quantize
from slimkit.techniques.quantization.weight_only import (WeightOnlyConv2d, WeightOnlyEmbedding, WeightOnlyLinear,
                                                          WeightOnlySpec, quantize_weight_only)

SPECS = [WeightOnlySpec(4, 32, False), WeightOnlySpec(4, 64, True), WeightOnlySpec(8, 32, False),
         WeightOnlySpec(4, None, False), WeightOnlySpec(8, None, True)]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_round_to_nearest_is_within_half_a_step_and_stores_the_bytes_it_should(spec):
    torch.manual_seed(0)
    linear = nn.Linear(128, 12)
    q = WeightOnlyLinear(linear, spec)
    groups = 128 // (spec.group_size or 128)
    assert q.group == (spec.group_size or 128) and q.n_groups == groups
    codes = q.codes()
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2 ** spec.bits - 1
    assert int(codes.max()) - int(codes.min()) >= 2 ** spec.bits - 2  # the range is used, not collapsed
    step = q.weight_scale.repeat_interleave(q.group, dim=1)
    error = (q.dequantized_weight() - linear.weight).abs()
    assert bool((error <= step / 2 + 1e-6).all())  # min-max covers every weight: nothing is clipped
    zp_bytes = 0 if spec.symmetric else 12 * (-(-groups * spec.bits // 8))
    assert q.stored_bytes() == 12 * 128 * spec.bits // 8 + 12 * groups * 4 + zp_bytes
    x = torch.randn(5, 128)
    assert torch.allclose(q(x), F.linear(x, q.dequantized_weight(), linear.bias), atol=1e-6)


def test_conv_and_embedding_quantize_their_rows_and_compute_with_the_dequantized_weight():
    torch.manual_seed(0)
    conv, emb = nn.Conv2d(8, 6, 3, padding=1, groups=2), nn.Embedding(50, 64, padding_idx=0)
    spec = WeightOnlySpec(4, 16, False)
    qc, qe = WeightOnlyConv2d(conv, spec), WeightOnlyEmbedding(emb, spec)
    assert qc.dequantized_weight().shape == conv.weight.shape and qc.group == 36  # 4*3*3 is no multiple of 16
    x = torch.randn(2, 8, 7, 7)
    assert torch.allclose(qc(x), F.conv2d(x, qc.dequantized_weight(), conv.bias, 1, 1, 1, 2), atol=1e-5)
    assert (qc(x) - conv(x)).abs().max() < 0.1 * conv(x).abs().max()
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    assert torch.allclose(qe(ids), F.embedding(ids, qe.dequantized_weight()), atol=1e-6)
    assert (qe(ids) - emb(ids)).abs().max() <= qe.weight_scale.max() / 2 + 1e-6


def test_gptq_equals_round_to_nearest_when_inputs_are_uncorrelated():
    """With a diagonal Hessian no column's error can be compensated by another: GPTQ's codes are
    round to nearest's exactly (a check of the error propagation's algebra)."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 8)
    spec = WeightOnlySpec(4, 32, False)
    codes, scale, zp = gptq_quantize(linear.weight, torch.diag(torch.rand(64) + 0.5), spec, damp=0.0)
    rtn = WeightOnlyLinear(linear, spec)
    assert torch.equal(codes, rtn.codes())
    assert torch.allclose(scale, rtn.weight_scale) and torch.equal(zp.float(), rtn.zero_points())


def test_gptq_lowers_the_output_error_on_correlated_inputs():
    torch.manual_seed(0)
    linear = nn.Linear(128, 32)
    mix = torch.randn(128, 128) / 128 ** 0.5 + torch.eye(128) * 0.3
    x_cal, x_test = torch.randn(2048, 128) @ mix, torch.randn(512, 128) @ mix
    acc = HessianAccumulator(128)
    for chunk in x_cal.split(256):
        acc.add(chunk)
    assert torch.allclose(acc.h, 2 * x_cal.double().T @ x_cal.double() / 2048, rtol=1e-6)
    spec = WeightOnlySpec(4, 32, False)
    gptq = WeightOnlyLinear(linear, spec, **dict(zip(("codes", "scale", "zero_point"),
                                                     gptq_quantize(linear.weight, acc.h, spec))))
    rtn = WeightOnlyLinear(linear, spec)
    with torch.no_grad():
        err_gptq = ((gptq(x_test) - linear(x_test)) ** 2).mean()
        err_rtn = ((rtn(x_test) - linear(x_test)) ** 2).mean()
    assert err_gptq < 0.7 * err_rtn


@pytest.fixture(scope="module")
def mlp():
    task = build_task("digits-mlp")
    torch.manual_seed(0)
    from slimkit.tasks.context import Context
    from slimkit.train.config import TrainConfig

    model = task.build_model()
    Context(task=task).train(model, TrainConfig(epochs=8, lr=2e-3))
    return task, model.eval()


def test_model_level_gptq_beats_round_to_nearest_and_reports_sizes(mlp):
    task, model = mlp
    test, train = task.data.test, task.data.train
    batches = [(train.inputs[0][i:i + 64],) for i in range(0, 512, 64)]
    ref = predict(model, test, 256)
    spec = WeightOnlySpec(4, 32, False)
    outs = {}
    for method in ("rtn", "gptq"):
        q, report = quantize_weight_only(model, spec, method=method, batches=batches)
        assert set(report.layers) == {"1", "4", "7"}  # every Linear, in forward order
        assert all(v["method"] == method for v in report.layers.values())
        assert report.to_dict()["quantized_ratio"] < 0.2
        outs[method] = predict(q, test, 256)
    mse = {m: float(((o - ref) ** 2).mean()) for m, o in outs.items()}
    assert mse["gptq"] < mse["rtn"]
    accuracy = task.evaluate(outs["gptq"], test.targets)["quality"]
    assert accuracy >= task.evaluate(ref, test.targets)["quality"] - 0.03


def test_unquantizable_layers_are_skipped_with_the_reason_and_bad_arguments_are_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding_mode="reflect", padding=1), nn.Flatten(), nn.Linear(4 * 25, 7),
                          nn.Linear(7, 2))
    q, report = quantize_weight_only(model, WeightOnlySpec(4, 32, False), kinds=("linear", "conv"))
    reasons = {s["module"]: s["reason"] for s in report.skipped}
    assert "reflect" in reasons["0"] and "odd" not in reasons.get("2", "") and "7 weights per row" in reasons["3"]
    assert isinstance(q[2], WeightOnlyLinear) and type(q[0]) is nn.Conv2d
    with pytest.raises(ValueError, match="kinds"):
        quantize_weight_only(model, kinds=("lstm",))
    with pytest.raises(ValueError, match="calibration"):
        quantize_weight_only(model, method="gptq")
    with pytest.raises(ValueError, match="power of two"):
        WeightOnlySpec(4, 48)
    with pytest.raises(ValueError, match="4- or 8-bit"):
        WeightOnlySpec(3, 32)


@pytest.mark.parametrize("spec", SPECS[:3], ids=str)
def test_onnx_runtime_runs_int4_linears_as_matmul_nbits_and_other_runtimes_get_standard_ops(spec, tmp_path,
                                                                                           ort_optimized_ops):
    pytest.importorskip("onnxruntime")
    import onnx

    from slimkit.backends.onnxruntime import export_onnx, load_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))
    q, _ = quantize_weight_only(model, spec)
    x = torch.randn(3, 64)
    for contrib in (True, False):
        path = export_onnx(q, (x,), tmp_path / f"m-{contrib}.onnx", contrib_ops=contrib)
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ("MatMulNBits" in ops) == contrib
        assert torch.allclose(load_onnx(path, threads=1).run(x), q(x), atol=1e-5)
    assert ort_optimized_ops(tmp_path / "m-True.onnx").count("MatMulNBits") == 2


def test_quantize_weights_step_on_a_recipe_then_deploy_and_resume(tmp_path):
    pytest.importorskip("onnxruntime")
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 8}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"quantize_weights": {"group_size": 32, "calibration_samples": 256}},
                        {"deploy": {"backend": "onnxruntime"}}]}
    result = run_recipe(recipe, tmp_path / "run").results
    base, quant, deploy = result["steps"]
    info = quant["info"]
    assert info["layers_quantized"] == 3 and info["bits_per_layer"] == {"1": 4, "4": 4, "7": 4}
    assert info["quantized_ratio"] < 0.2
    assert quant["metrics"]["quality"] >= base["metrics"]["quality"] - 0.03
    assert deploy["metrics"]["quality"] == pytest.approx(quant["metrics"]["quality"], abs=0.003)
    assert deploy["metrics"]["size_bytes"] < 0.3 * base["metrics"]["size_bytes"]
    task = build_task("digits-mlp")
    state = json.loads((tmp_path / "run" / "run-state.json").read_text())
    structures = [(s["technique"], s.get("structure")) for s in state["steps"][:2]]
    rebuilt = rebuild_model(task.build_model, structures, str(tmp_path / "run" / quant["artifact"]))
    assert isinstance(rebuilt[1], WeightOnlyLinear)
    quality = task.evaluate(predict(rebuilt, task.data.test, 256), task.data.test.targets)["quality"]
    assert quality == pytest.approx(quant["metrics"]["quality"], abs=1e-9)
    config = state["steps"][1]["structure"]["config"]
    with pytest.raises(CheckpointError, match="names layer '9', which this model does not have"):
        restore_step("quantize_weights", task.build_model(), {"config": config, "layers": {"1": 4, "9": 4}})
    with pytest.raises(CheckpointError, match=r"structure: field 'layers.1': Input should be 4 or 8"):
        restore_step("quantize_weights", task.build_model(), {"config": config, "layers": {"1": 3}})


def test_bad_step_fields_are_named():
    from slimkit.recipes.schema import load_recipe

    with pytest.raises(ConfigError, match="group_size"):
        load_recipe({"task": "digits-mlp", "steps": [{"quantize_weights": {"group_size": 48}}]})
    with pytest.raises(ConfigError, match="bits"):
        load_recipe({"task": "digits-mlp", "steps": [{"quantize_weights": {"bits": 3}}]})


def test_mixed_precision_promotes_the_most_sensitive_layers_until_the_drop_fits(mlp):
    task, model = mlp
    x = task.data.val.inputs[0]
    with torch.no_grad():
        ref = model(x)

    def fidelity(m):  # 1 - relative output MSE: continuous, so every layer has a measurable sensitivity
        with torch.no_grad():
            return 1 - float(((m(x) - ref) ** 2).mean() / ref.var())

    from slimkit.techniques.quantization.weight_only import choose_bits

    spec = WeightOnlySpec(4, None, False)
    all_low = 100 * (1 - fidelity(quantize_weight_only(model, spec)[0]))
    assert all_low > 0
    loose = choose_bits(model, spec, fidelity, max_drop=2 * all_low)
    assert set(loose.bits.values()) == {4} and loose.drop == pytest.approx(all_low)
    tight = choose_bits(model, spec, fidelity, max_drop=0.5 * all_low)
    assert tight.drop <= 0.5 * all_low
    assert 100 * (1 - fidelity(tight.model)) == pytest.approx(tight.drop)
    promoted = [n for n, b in tight.bits.items() if b != 4]
    ranked = sorted(tight.sensitivity, key=lambda n: -tight.sensitivity[n])
    assert promoted and promoted == ranked[:len(promoted)]  # the most sensitive first
    assert {v["bits"] for n, v in tight.report.layers.items() if n in promoted} <= {8}
    # one promotion fewer would not fit: the mix is the smallest the search allows
    fewer = {**tight.bits, promoted[-1]: 4} if tight.bits[promoted[-1]] == 8 else None
    if fewer is not None:
        assert 100 * (1 - fidelity(quantize_weight_only(model, spec, bits=fewer)[0])) > 0.5 * all_low


def test_quantize_weights_step_with_a_quality_budget_reports_bits_and_sensitivity(tmp_path):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 8}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"quantize_weights": {"group_size": None, "algorithm": "rtn", "max_quality_drop": 0.5}}]}
    base, quant = run_recipe(recipe, tmp_path / "run").results["steps"]
    info = quant["info"]
    assert info["validation_drop_pt"] <= 0.5 and set(info["sensitivity_pt"]) == {"1", "4", "7"}
    assert set(info["bits_per_layer"]) | set(info["layers_float"]) == {"1", "4", "7"}
    assert set(info["bits_per_layer"].values()) <= {4, 8}
