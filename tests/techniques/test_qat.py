"""Quantization-aware training (LSQ): the quantizer's arithmetic and gradients, the QAT model,
its conversion to the integer layers PTQ makes, ONNX Runtime, the recipe step and accuracy."""

import copy
import json
import math

import pytest
import torch
import torch.nn as nn

from slimkit.tasks.context import Context
from slimkit.core.errors import ConfigError
from slimkit.core.step import rebuild_model
from slimkit.data.batches import calibration_batches
from slimkit.measure.quality import predict
from slimkit.recipes.runner import run_recipe
from slimkit.tasks import build_task
from slimkit.techniques.quantization.modules import QuantConv2d, QuantLinear
from slimkit.techniques.quantization.ptq import quantize_static, quantized_layers
from slimkit.techniques.quantization.qat import (LearnedStepQuant, QATLayer, convert_qat, prepare_qat, qat_layers,
                                                 weight_spec)
from slimkit.techniques.quantization.qscheme import QuantSpec, lsq_fake_quantize, lsq_initial_step
from slimkit.train.config import TrainConfig

THREE_BIT = QuantSpec(3, symmetric=True, narrow_range=True)  # codes -3..3


@pytest.fixture(scope="module")
def digits():
    """digits-mlp trained briefly, and the training batches QAT and PTQ calibrate on."""
    task = build_task("digits-mlp")
    torch.manual_seed(0)
    model = task.build_model()
    Context(task=task).train(model, TrainConfig(epochs=20, batch_size=32))
    return task, model.eval(), calibration_batches(task.data.train, 512, 64, seed=0)


@pytest.fixture(scope="module")
def trained_2bit(digits):
    """The digits MLP fine-tuned with 2-bit weights from PTQ's min-max scales, and its init."""
    task, model, batches = digits
    init, _ = prepare_qat(model, batches, bits_weights=2, init="minmax")
    qat, report = prepare_qat(model, batches, bits_weights=2, init="minmax")
    Context(task=task, seed=0).train(qat, TrainConfig(epochs=5, lr=1e-3))
    return init.eval(), qat.eval(), report


def _accuracy(task, model):
    return task.evaluate(predict(model.eval(), task.data.test, 256), task.data.test.targets)["quality"]


def test_lsq_forward_matches_hand_computed_values():
    x = torch.tensor([-0.9, -0.25, 0.1, 0.65, 2.0])  # / 0.25 = -3.6, -1, 0.4, 2.6, 8
    y = lsq_fake_quantize(x, torch.tensor(0.25), THREE_BIT)
    assert y.tolist() == [-0.75, -0.25, 0.0, 0.75, 0.75]  # codes -3 (clipped), -1, 0, 3, 3 (clipped)
    # unsigned 2-bit codes 0..3 with zero point 1: relative codes -1..2
    y = lsq_fake_quantize(torch.tensor([-0.5, 0.14, 0.5]), torch.tensor(0.2), QuantSpec(2, symmetric=False), 1)
    assert y.tolist() == pytest.approx([-0.2, 0.2, 0.4])  # -2.5 -> -1 (clipped), 0.7 -> 1, 2.5 -> 2
    assert weight_spec(2).qmin == -1 and weight_spec(2).qmax == 1  # ternary, zero-centred
    with pytest.raises(ValueError, match="narrow_range"):
        QuantSpec(4, symmetric=False, narrow_range=True)


def test_lsq_gradients_follow_the_paper_by_hand():
    x = torch.tensor([-0.9, -0.25, 0.1, 0.65, 2.0], requires_grad=True)
    step = torch.tensor(0.25, requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (lsq_fake_quantize(x, step, THREE_BIT) * upstream).sum().backward()
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]  # straight through inside, zero where clipped
    # d/ds: clipped code outside, round(v) - v inside: -3*1 + 0*2 + (-0.4)*3 + 0.4*4 + 3*5 = 12.4,
    # times g = 1 / sqrt(N * Q_P) with N = 5 values sharing the step and Q_P = 3
    assert float(step.grad) == pytest.approx(12.4 / math.sqrt(5 * 3), rel=1e-5)


def test_per_channel_step_gradients_match_autograd_of_the_formula():
    torch.manual_seed(0)
    w = torch.randn(4, 6, requires_grad=True)
    step = torch.tensor([0.3, 0.5, 0.2, 0.8], requires_grad=True)
    spec = QuantSpec(3, symmetric=True, axis=0, narrow_range=True)
    upstream = torch.randn(4, 6)
    (lsq_fake_quantize(w, step, spec) * upstream).sum().backward()
    # the same function written with a detach-trick straight-through round, differentiated by autograd
    w2, s2 = w.detach().clone().requires_grad_(), step.detach().clone().requires_grad_()
    v = (w2 / s2[:, None]).clamp(spec.qmin, spec.qmax)
    ((v + (v.round() - v).detach()) * s2[:, None] * upstream).sum().backward()
    g = 1 / math.sqrt(6 * spec.qmax)  # N = the 6 weights of one output channel
    assert torch.allclose(w.grad, w2.grad) and torch.allclose(step.grad, s2.grad * g, rtol=1e-5)
    assert bool((step.grad != 0).all())


def test_initial_steps_by_hand():
    w = torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.5, 0.5, -0.5, -0.5]])
    spec = QuantSpec(3, symmetric=True, axis=0, narrow_range=True)  # Q_P = 3
    assert lsq_initial_step(w, spec, "lsq").tolist() == pytest.approx([2 * 2.5 / math.sqrt(3), 2 * 0.5 / math.sqrt(3)])
    assert lsq_initial_step(w, spec, "minmax").tolist() == pytest.approx([4 / 3, 0.5 / 3])
    std = torch.tensor([1.0, -2.0, 3.0, -4.0]).std(unbiased=False)  # mean -0.5
    assert float(lsq_initial_step(w, spec, "lsq+")[0]) == pytest.approx(float((-0.5 - 3 * std).abs() / 4))
    # mse: row 2 (all +-0.5) is exact at its min-max step; a clip never increases its error
    assert float(lsq_initial_step(w, spec, "mse")[1]) == pytest.approx(0.5 / 3)


def test_gradients_reach_every_weight_bias_and_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))
    model(torch.randn(16, 1, 8, 8))  # BatchNorm statistics to fold
    x = torch.randn(32, 1, 8, 8)
    qat, report = prepare_qat(model.eval(), [(x,)], bits_weights=3)
    assert list(qat_layers(qat)) == report.quantized == ["0", "5", "7"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qat.modules())  # folded, as PTQ does
    assert report.shared_scales == [("0", "5"), ("5", "7")] and qat_layers(qat)["5"].input_quant is None
    nn.functional.cross_entropy(qat.train()(x), torch.randint(0, 3, (32,))).backward()
    for name, layer in qat_layers(qat).items():
        for p in (layer.layer.weight, layer.layer.bias, layer.weight_quant.step):
            assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), name
            assert float(p.grad.abs().sum()) > 0, name
    steps = [m.step for m in qat.modules() if isinstance(m, LearnedStepQuant) and m.spec.axis is None]
    assert len(steps) == 3 and all(float(s.grad.abs()) > 0 for s in steps)  # input of 0, outputs of 0 and 5


def test_fixed_steps_are_not_trained():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    qat, _ = prepare_qat(model, [(torch.randn(8, 4),)], bits_weights=2, learn_steps=False)
    assert all(not m.step.requires_grad for m in qat.modules() if isinstance(m, LearnedStepQuant))
    assert all(layer.layer.weight.requires_grad for layer in qat_layers(qat).values())


def test_minmax_init_is_ptq_round_to_nearest_and_training_recovers_accuracy(digits, trained_2bit):
    task, model, batches = digits
    init, qat, _ = trained_2bit
    ptq, _ = quantize_static(model, batches, weight_max=1, bias_correction=False)
    x = task.data.test.inputs[0]
    with torch.no_grad():
        assert torch.equal(init(x), ptq(x))  # untrained QAT is exactly PTQ's RTN model at the same bits
    fp32, rtn, trained = _accuracy(task, model), _accuracy(task, ptq), _accuracy(task, qat)
    assert fp32 - rtn >= 0.02  # ternary weights by round-to-nearest lose accuracy here...
    assert trained >= fp32 - 0.015 and trained >= rtn + 0.02  # ... and QAT wins it back
    moved = [float((a.weight_quant.step - b.weight_quant.step).abs().max().detach())
             for a, b in zip(qat_layers(qat).values(), qat_layers(init).values())]
    assert min(moved) > 0  # the steps were learned, not kept


def test_converted_model_is_the_qat_forward_on_int8_layers(digits, trained_2bit):
    task, _, _ = digits
    _, qat, report = trained_2bit
    x = task.data.test.inputs[0]
    with torch.no_grad():
        expected = qat(x)
        twins = {name: (t.weight_quant.scale().detach().clone(), t.layer.weight.detach().clone())
                 for name, t in qat_layers(qat).items()}
        converted = convert_qat(copy.deepcopy(qat))
        assert torch.equal(converted(x), expected)
    layers = quantized_layers(converted)
    assert list(layers) == report.quantized and not qat_layers(converted)
    for name, layer in layers.items():
        assert isinstance(layer, QuantLinear) and layer.weight_int8.dtype == torch.int8 and layer.weight_max == 1
        assert set(layer.weight_int8.unique().tolist()) == {-1, 0, 1}  # ternary codes in an int8 container
        step, w = twins[name]
        assert torch.equal(layer.weight_scale, step)  # the learned step is the weight scale
        assert not torch.allclose(step, w.abs().amax(1))  # ... not PTQ's max|w|
        assert not layer.input_quant.calibrating and layer.float_weight is None


def test_converted_model_runs_in_onnxruntime_on_integer_kernels(digits, trained_2bit, tmp_path, ort_optimized_ops):
    pytest.importorskip("onnxruntime")
    from slimkit.backends.onnxruntime import export_onnx
    from slimkit.core.registry import BACKENDS

    task, model, _ = digits
    converted = convert_qat(copy.deepcopy(trained_2bit[1]))
    test = task.data.test
    compiled = BACKENDS.get("onnxruntime").compile(converted, test.example_inputs(1), precision="fp32", threads=1,
                                                   workdir=tmp_path, device="cpu")
    eager, ort = predict(converted, test, 256), compiled(*test.inputs)
    assert float((ort - eager).abs().max()) <= 0.02 * float(eager.abs().max())  # deploy's quantized tolerance
    assert float((ort.argmax(1) == eager.argmax(1)).float().mean()) >= 0.99
    assert compiled.artifact_bytes < 0.3 * sum(p.numel() * 4 for p in model.parameters())
    ops = ort_optimized_ops(export_onnx(converted, test.example_inputs(1), tmp_path / "qat.onnx"))
    # the hidden layers run as QGemm; the classifier, whose output stays float, runs as a float Gemm
    # on its int8 weights dequantized at load time, exactly as in PTQ's graph
    assert ops.count("QGemm") == 2 and ops.count("Gemm") == 1 and "MatMul" not in ops


def test_layers_without_a_twin_are_skipped_and_low_bit_activations_do_not_convert():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 2, 2), nn.Flatten(), nn.Linear(50, 3))
    qat, report = prepare_qat(model.eval(), [(torch.randn(8, 1, 6, 6),)], bits_weights=4, skip=["4"])
    reasons = {s["module"]: s["reason"] for s in report.skipped}
    assert "ConvTranspose2d" in reasons["2"] and reasons["4"] == "listed in skip"
    kinds = {name: type(m) for name, m in qat.named_children()}  # the fused model is an fx GraphModule
    assert kinds["0"] is QATLayer and kinds["2"] is nn.ConvTranspose2d and kinds["4"] is nn.Linear
    assert isinstance(quantized_layers(convert_qat(qat))["0"], QuantConv2d)
    low, _ = prepare_qat(model.eval(), [(torch.randn(8, 1, 6, 6),)], bits_activations=4)
    assert low.get_submodule("0").input_quant.spec.qmax == 15
    with pytest.raises(ValueError, match="only 8-bit activations deploy"):
        convert_qat(low)


def test_bad_bits_are_clear_errors():
    from slimkit.recipes.schema import load_recipe

    with pytest.raises(ValueError, match="weight bits must be in 2..8"):
        prepare_qat(nn.Linear(2, 2), [(torch.randn(2, 2),)], bits_weights=1)
    with pytest.raises(ConfigError, match="weight_bits.*greater than or equal to 2"):
        load_recipe({"task": "digits-mlp", "steps": [{"qat": {"weight_bits": 1}}]})
    with pytest.raises(ConfigError, match="activation_bits"):
        load_recipe({"task": "digits-mlp", "steps": [{"qat": {"activation_bits": 4}}]})


def test_qat_step_in_a_recipe_then_deploy_and_restore(tmp_path):
    pytest.importorskip("onnxruntime")
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 10}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"qat": {"weight_bits": 3, "finetune": {"epochs": 2}}}, {"deploy": {"backend": "onnxruntime"}}]}
    result = run_recipe(recipe, tmp_path / "run").results
    base, qat, deploy = result["steps"]
    assert qat["info"]["weight_bits"] == 3 and qat["info"]["layers_quantized"] == 3
    assert qat["info"]["float_outputs"] == ["7"] and qat["info"]["train"]["epochs"] == 2
    assert qat["metrics"]["quality"] >= base["metrics"]["quality"] - 0.03
    assert deploy["metrics"]["backend"] == "onnxruntime"
    assert abs(deploy["metrics"]["quality"] - qat["metrics"]["quality"]) <= 0.01
    task = build_task("digits-mlp")
    state = json.loads((tmp_path / "run" / "run-state.json").read_text())
    structures = [(s["technique"], s.get("structure")) for s in state["steps"][:2]]
    rebuilt = rebuild_model(task.build_model, structures, str(tmp_path / "run" / qat["artifact"]))
    assert all(layer.weight_max == 3 for layer in quantized_layers(rebuilt).values())
    assert int(quantized_layers(rebuilt)["1"].weight_int8.abs().max()) <= 3
    assert _accuracy(task, rebuilt) == pytest.approx(qat["metrics"]["quality"], abs=1e-9)
