"""Static int8 PTQ: QDQ modules, calibration, the integer path in ONNX Runtime, the recipe step."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.step import restore_step
from slimkit.tasks.context import Context
from slimkit.measure.quality import predict
from slimkit.data.batches import calibration_batches
from slimkit.recipes.runner import run_recipe
from slimkit.tasks import build_task
from slimkit.techniques.quantization.modules import (ActQuant, QuantConv2d, QuantLinear, default_weight_max,
                                                     in_place_fake_quant)
from slimkit.techniques.quantization.ptq import (calibrate, convert, keep_model_outputs_float, prepare_static,
                                                 quantized_layers, quantize_static, share_quantization_params)
from slimkit.techniques.quantization.qscheme import QuantSpec
from slimkit.train.config import TrainConfig


@pytest.fixture(scope="module")
def digits():
    """digits-cnn trained briefly (quantization error is only meaningful on a trained model)."""
    task = build_task("digits-cnn")
    torch.manual_seed(0)
    model = task.build_model()
    Context(task=task).train(model, TrainConfig(epochs=3))
    return task, model.eval()


def _quantized(task, model, weight_max=None, observer="minmax"):
    q, report = prepare_static(model, observer=observer, weight_max=weight_max or default_weight_max())
    train = task.data.train.inputs[0]
    calibrate(q, [(train[i:i + 64],) for i in range(0, 512, 64)])
    return convert(q), report


def test_act_quant_observes_then_quantizes_with_hand_computed_qparams():
    aq = ActQuant(QuantSpec(bits=8, symmetric=False))
    x = torch.tensor([[-1.0, 0.5], [2.0, 3.0]])
    assert torch.equal(aq(x), x)  # calibrating: the identity
    aq.freeze()
    scale = 4.0 / 255  # range [-1, 3] over 255 steps; zero point places 0.0 on a code
    assert float(aq.scale) == pytest.approx(scale) and int(aq.zero_point) == round(1.0 / scale)
    y = aq(torch.tensor([0.0, 1.0, 10.0, -5.0]))
    assert y[0] == 0.0 and abs(float(y[1]) - 1.0) <= scale / 2
    assert float(y[2]) == pytest.approx((255 - int(aq.zero_point)) * scale)  # clipped to the top code
    assert float(y[3]) == pytest.approx(-int(aq.zero_point) * scale)
    # the in-place form bias correction runs gives the decomposed ops' values exactly, ties included
    x = torch.cat([torch.randn(10_000) * 3, (torch.arange(-300, 300) + 0.5) * scale])
    with in_place_fake_quant(aq):
        fast = aq(x)
    assert torch.equal(fast, aq(x)) and not aq.in_place


def test_every_conv_and_linear_becomes_int8_and_accuracy_holds(digits):
    task, model = digits
    q, report = _quantized(task, model)
    layers = quantized_layers(q)
    assert len(layers) == 5 and report.quantized == list(layers) and not report.skipped
    for layer in layers.values():
        assert layer.weight_int8.dtype == torch.int8 and not layer.input_quant.calibrating
        assert int(layer.weight_int8.abs().max()) == layer.weight_max  # the largest weight uses the top code
    fp32 = task.evaluate(predict(model, task.data.test, 256), task.data.test.targets)["quality"]
    int8 = task.evaluate(predict(q, task.data.test, 256), task.data.test.targets)["quality"]
    assert int8 >= fp32 - 0.01
    outputs, reference = predict(q, task.data.test, 256), predict(model, task.data.test, 256)
    assert not torch.equal(outputs, reference)  # it really quantizes


@pytest.mark.parametrize("backend, package", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_integer_runtimes_match_the_fake_quant_reference_within_one_lsb(digits, tmp_path, backend, package):
    pytest.importorskip(package)
    from slimkit.core.registry import BACKENDS

    task, model = digits
    q, _ = _quantized(task, model)
    test = task.data.test
    compiled = BACKENDS.get(backend).compile(q, test.example_inputs(1), precision="fp32", threads=1,
                                             workdir=tmp_path, device="cpu")
    lsb = float(list(quantized_layers(q).values())[-1].output_quant.scale)
    assert float((compiled(*test.inputs) - q(*test.inputs)).abs().max()) <= 1.01 * lsb
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    if backend == "onnxruntime":
        assert compiled.artifact_bytes < 0.32 * fp32_bytes  # int8 initializers, not float copies
    else:  # OpenVINO reads the QDQ graph through its ONNX frontend; only the IR is left
        assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".tmp*"))


def test_onnxruntime_runs_the_graph_on_integer_kernels(digits, tmp_path, ort_optimized_ops):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from slimkit.backends.onnxruntime import export_onnx

    task, model = digits
    q, _ = _quantized(task, model)
    path = export_onnx(q, task.data.test.example_inputs(1), tmp_path / "q.onnx")
    ops = ort_optimized_ops(path)
    assert ops.count("QLinearConv") == 3 and ops.count("QGemm") == 2 and "Conv" not in ops
    assert not onnx.load(str(path)).graph.metadata_props  # the exporter's debug records are stripped


def test_openvino_runs_every_conv_and_linear_on_integer_kernels(digits, tmp_path):
    ov = pytest.importorskip("openvino")
    from slimkit.backends.openvino import save_ir

    task, model = digits
    q, _ = _quantized(task, model)
    xml, _ = save_ir(q, task.data.test.example_inputs(1), tmp_path / "q.xml")
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    kernels = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "FullyConnected"):
            kernels[op.get_friendly_name()] = info["runtimePrecision"].astype(str)
    # two layers of 64 channels share one zero-point constant in the export; read naively,
    # OpenVINO ran both in float
    assert len(kernels) == 5 and set(kernels.values()) <= {"u8", "i8"}, kernels


def _quantize(model, batches, bias_correction):
    q, report = quantize_static(model, batches, weight_max=default_weight_max(), bias_correction=bias_correction)
    return q, report.bias_shifts


def test_bias_correction_removes_the_mean_output_error_and_lowers_held_out_error(digits):
    task, model = digits
    batches = calibration_batches(task.data.train, 512, 64, seed=0)
    plain, _ = _quantize(model, batches, bias_correction=False)
    corrected, shifts = _quantize(model, batches, bias_correction=True)
    assert sorted(shifts) == sorted(quantized_layers(corrected)) and max(shifts.values()) > 0
    assert all(layer.float_weight is None for layer in quantized_layers(corrected).values())  # released
    calib = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        ref, before, after = model(calib), plain(calib), corrected(calib)
    # on the calibration data the logits' error has (nearly) zero mean per class after correction
    assert float((after - ref).mean(0).abs().max()) < 0.25 * float((before - ref).mean(0).abs().max())
    test = task.data.test
    ref, before, after = (predict(m, test, 256) for m in (model, plain, corrected))
    assert float(((after - ref) ** 2).mean()) < 0.85 * float(((before - ref) ** 2).mean())  # held out


class _Block(nn.Module):
    """A post-LayerNorm transformer MLP block: GELU, a residual add, a LayerNorm."""

    def __init__(self):
        super().__init__()
        self.up, self.down, self.norm = nn.Linear(16, 32), nn.Linear(32, 16), nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(x + self.down(F.gelu(self.up(x))))


class _SharedBlock(nn.Module):
    """One block called twice (its layers are corrected on their first call)."""

    def __init__(self):
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(8, 16), _Block(), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.block(self.block(self.stem(x))))


@pytest.mark.parametrize("kind", ["cnn", "transformer", "shared", "unequal batches"])
def test_one_pass_bias_correction_shifts_like_the_layer_by_layer_algorithm(kind):
    from slimkit.techniques.quantization.ptq import _correct_bias_layerwise, _correctable_layers, correct_bias

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, stride=2, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                        nn.Linear(72, 5))
    model, shapes, smoothquant = {
        "cnn": (cnn, [(3, 16, 16)] * 4, None),
        "transformer": (nn.Sequential(nn.Linear(8, 16), _Block(), _Block(), nn.Linear(16, 4)), [(5, 8)] * 4, 0.8),
        "shared": (_SharedBlock(), [(5, 8)] * 4, None),
        "unequal batches": (cnn, [(3, 16, 16), (3, 20, 20), (3, 16, 16)], None),  # no single batch: layer by layer
    }[kind]
    with torch.no_grad():
        cnn[1].running_mean.uniform_(-0.5, 0.5), cnn[1].running_var.uniform_(0.5, 2)
    batches = [(torch.randn(6, *shape) * 2 + 0.3,) for shape in shapes]
    q, _ = quantize_static(model.eval(), batches, bias_correction=False, keep_float_weights=True,
                           smoothquant=smoothquant)
    reference = copy.deepcopy(q)
    passes = []
    q.register_forward_pre_hook(lambda module, args: passes.append(args[0].shape[0]))
    shifts = correct_bias(q, batches)
    expected = _correct_bias_layerwise(reference, batches, _correctable_layers(reference))
    assert list(shifts) == list(expected) == list(quantized_layers(q)) and min(shifts.values()) > 0
    assert passes == ([24] if kind != "unequal batches" else [6] * 3 * len(shifts))  # one pass of all the batches
    for name, layer in quantized_layers(q).items():
        assert layer.float_weight is None  # released
        assert shifts[name] == pytest.approx(expected[name], rel=1e-4)
        torch.testing.assert_close(layer.bias, quantized_layers(reference)[name].bias, rtol=0, atol=1e-6)


def test_outputs_no_integer_kernel_consumes_stay_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(16, 4)
    q, _ = prepare_static(model)
    assert keep_model_outputs_float(q, (x,)) == ["2"]
    first, last = quantized_layers(q)["0"], quantized_layers(q)["2"]
    assert last.output_quant is None and first.output_quant is not None
    calibrate(q, [(x,)])
    convert(q)
    logits = last._apply_layer(last.input_quant(first(x)), last.dequantized_weight())
    assert torch.equal(q(x), logits)  # not rounded to an 8-bit grid at the end

    class Residual(nn.Module):  # a Linear feeding a float op (an add) keeps its output float
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + x

    q, _ = prepare_static(Residual().eval())
    assert keep_model_outputs_float(q, (x,)) == ["fc"] and q.fc.output_quant is None
    # a conv keeps its output quantizer even before a float op (ONNX Runtime needs it for QLinearConv)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)).eval()
    q, _ = prepare_static(cnn)
    assert keep_model_outputs_float(q, (torch.randn(2, 1, 8, 8),)) == ["3"]
    assert quantized_layers(q)["0"].output_quant is not None
    with pytest.raises(ValueError, match="not a quantized layer"):
        prepare_static(model, float_outputs=["1"])


def test_scales_shared_across_max_pool_and_reshape_keep_those_ops_in_int8(digits, tmp_path, ort_optimized_ops):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from slimkit.backends.onnxruntime import export_onnx

    task, model = digits
    batches = calibration_batches(task.data.train, 256, 64, seed=0)
    q, _ = prepare_static(model, weight_max=default_weight_max())
    keep_model_outputs_float(q, batches[0])
    calibrate(q, batches)
    convert(q)
    layers = quantized_layers(q)
    before = float(layers["6"].input_quant.scale)
    pairs = share_quantization_params(q)
    # digits-cnn: conv 0.0 -> conv 1.0 -> max-pool -> conv 3.0 -> max-pool -> flatten -> linear 6 -> linear 8
    assert pairs == [("0.0", "1.0"), ("1.0", "3.0"), ("3.0", "6"), ("6", "8")]
    for producer, consumer in pairs:
        out, inp = layers[producer].output_quant, layers[consumer].input_quant
        assert float(inp.scale) == float(out.scale) and int(inp.zero_point) == int(out.zero_point)
        assert inp._qparams == (float(out.scale), int(out.zero_point))  # what forward reads
    assert float(layers["6"].input_quant.scale) >= before  # the pool's input range covers its output's
    path = export_onnx(q, task.data.test.example_inputs(1), tmp_path / "q.onnx")
    ops = ort_optimized_ops(path)
    assert ops.count("QLinearConv") == 3 and ops.count("NhwcMaxPool") == 2 and "MaxPool" not in ops
    # the int8 model still scores like the float one
    fp32 = task.evaluate(predict(model, task.data.test, 256), task.data.test.targets)["quality"]
    assert task.evaluate(predict(q, task.data.test, 256), task.data.test.targets)["quality"] >= fp32 - 0.01


def test_layers_without_an_int8_twin_are_skipped_with_the_reason():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 2, 2), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(1, 1, 6, 6))
    q, report = prepare_static(model.eval(), skip=["4"])
    kinds = {name: type(m) for name, m in q.named_children()}
    assert kinds["0"] is QuantConv2d and kinds["2"] is nn.ConvTranspose2d and kinds["4"] is nn.Linear
    reasons = {s["module"]: s["reason"] for s in report.skipped}
    assert "ConvTranspose2d" in reasons["2"] and reasons["4"] == "listed in skip"


def test_bad_skip_names_and_unused_layers_are_clear_errors():
    from slimkit.core.errors import ConfigError, SlimkitError

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with pytest.raises(ConfigError, match=r"skip names no module.*\['9'\]"):
        prepare_static(model, skip=["9"])

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x)

    q, _ = prepare_static(Unused().eval())
    calibrate(q, [(torch.randn(8, 4),)])
    with pytest.raises(SlimkitError, match="no calibration data reached 'spare.input_quant'"):
        convert(q)


def test_quantized_modules_reload_from_a_state_dict_as_frozen(digits):
    task, model = digits
    q, _ = _quantized(task, model, weight_max=127)
    fresh, _ = prepare_static(task.build_model().eval(), weight_max=127)
    fresh.load_state_dict(q.state_dict())
    x = task.data.test.inputs[0][:32]
    assert torch.equal(fresh(x), q(x))
    assert all(not m.calibrating for m in fresh.modules() if isinstance(m, ActQuant))
    with pytest.raises(ValueError, match="weight_max"):
        QuantLinear(nn.Linear(2, 2), weight_max=100)


def test_quantize_step_then_deploy_on_onnxruntime_and_resume(tmp_path, rebuild_run_step):
    pytest.importorskip("onnxruntime")
    recipe = {"task": "digits-cnn", "seed": 0, "baseline": {"train": {"epochs": 2}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"quantize": {"calibration_samples": 256}}, {"deploy": {"backend": "onnxruntime"}}]}
    result = run_recipe(recipe, tmp_path / "run").results
    base, quant, deploy = result["steps"]
    assert quant["info"]["layers_quantized"] == 5 and quant["info"]["calibration_samples"] == 256
    assert quant["info"]["float_outputs"] == ["8"] and quant["info"]["bias_corrected"] == 5
    assert quant["metrics"]["quality"] >= base["metrics"]["quality"] - 0.02
    assert deploy["metrics"]["backend"] == "onnxruntime"
    assert deploy["metrics"]["quality"] >= base["metrics"]["quality"] - 0.02
    assert deploy["metrics"]["size_bytes"] < 0.5 * base["metrics"]["size_bytes"]
    # the checkpoint of the quantize step rebuilds into the same model (what resume does)
    rebuilt, rebuilt_quality = rebuild_run_step(tmp_path / "run", "digits-cnn", 1, quant)
    assert isinstance(quantized_layers(rebuilt)["0.0"], QuantConv2d)
    assert rebuilt_quality == pytest.approx(quant["metrics"]["quality"], abs=1e-9)


def _outlier_model_and_batches():
    """A linear whose input has a few channels 50x larger than the rest (the LayerNorm-output
    outliers of transformers): per-tensor activation quantization wastes its range on them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    gain = torch.ones(64)
    gain[[3, 17, 40]] = 50.0

    def batch(n):
        return (torch.randn(n, 64) * gain,)

    return model, [batch(64) for _ in range(4)], batch(512)


def test_smoothquant_keeps_the_float_product_and_cuts_the_error_of_outlier_inputs():
    from slimkit.techniques.quantization.ptq import quantize_static

    model, batches, (x,) = _outlier_model_and_batches()
    with torch.no_grad():
        ref = model(x)
        plain, _ = quantize_static(model, batches, bias_correction=False)
        smooth, report = quantize_static(model, batches, bias_correction=False, smoothquant=0.5)
        assert report.smoothed == ["0", "2"] and quantized_layers(plain)["0"].input_smoothing is None
        layer = quantized_layers(smooth)["0"]
        factors = 1 / layer.input_smoothing
        assert factors[[3, 17, 40]].min() > 3 * factors.median()  # the outlier channels are divided most
        # the float product is unchanged: (x / s) (W s)^T == x W^T
        w = model[0].weight * factors
        assert torch.allclose(F.linear(layer.smooth_input(x), w, model[0].bias), model[0](x), rtol=1e-4, atol=1e-4)
        err_plain = ((plain(x) - ref) ** 2).mean()
        err_smooth = ((smooth(x) - ref) ** 2).mean()
    assert err_smooth < 0.5 * err_plain


def test_smoothed_layers_export_to_onnx_runtime_and_restore_from_a_state_dict(tmp_path):
    pytest.importorskip("onnxruntime")
    from slimkit.backends.onnxruntime import export_onnx, load_onnx
    from slimkit.techniques.quantization.ptq import quantize_static

    model, batches, (x,) = _outlier_model_and_batches()
    q, report = quantize_static(model, batches, smoothquant=0.5, weight_max=default_weight_max())
    path = export_onnx(q, (x[:8],), tmp_path / "smooth.onnx")
    with torch.no_grad():
        out, ref = load_onnx(path, threads=1).run(x[:8]), q(x[:8])
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()
    structure = {"config": {"smoothquant": 0.5}, "weight_max": default_weight_max(),
                 "float_outputs": report.float_outputs, "smoothed": report.smoothed}
    fresh = restore_step("quantize", model, structure)
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x[:8]), ref)


def test_mixed_precision_keeps_the_most_sensitive_layers_float_until_the_drop_fits(digits):
    from slimkit.techniques.quantization.ptq import choose_float_layers, quantize_static

    task, model = digits
    x = task.data.val.inputs[0]
    batches = [(task.data.train.inputs[0][i:i + 64],) for i in range(0, 256, 64)]
    with torch.no_grad():
        ref = model(x)

    def fidelity(m):  # 1 - relative output MSE: continuous, so every layer's sensitivity shows
        with torch.no_grad():
            return 1 - float(((m(x) - ref) ** 2).mean() / ref.var())

    full = 100 * (1 - fidelity(quantize_static(model, batches, weight_max=63)[0]))
    result = choose_float_layers(model, batches, fidelity, 0.3 * full, weight_max=63)
    assert result.drop <= 0.3 * full and result.float_layers
    ranked = sorted(result.sensitivity, key=lambda n: -result.sensitivity[n])
    assert result.float_layers == ranked[:len(result.float_layers)]
    assert set(result.float_layers).isdisjoint(quantized_layers(result.model))
    assert {s["module"] for s in result.report.skipped} == set(result.float_layers)
    assert 100 * (1 - fidelity(result.model)) == pytest.approx(result.drop)
    loose = choose_float_layers(model, batches, fidelity, 2 * full, weight_max=63)
    assert loose.float_layers == [] and len(quantized_layers(loose.model)) == 5


def test_quantize_step_with_a_quality_budget_reports_bits_and_restores(tmp_path, rebuild_run_step):
    recipe = {"task": "digits-cnn", "seed": 0, "baseline": {"train": {"epochs": 2}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"quantize": {"calibration_samples": 256, "max_quality_drop": 0.0}}]}
    base, quant = run_recipe(recipe, tmp_path / "run").results["steps"]
    info = quant["info"]
    assert info["validation_drop_pt"] <= 0.0 and len(info["sensitivity_pt"]) == 5
    assert set(info["bits_per_layer"]) == set(info["sensitivity_pt"])
    assert {n for n, b in info["bits_per_layer"].items() if b == 32} == set(info["layers_float"])
    rebuilt, quality = rebuild_run_step(tmp_path / "run", "digits-cnn", 1, quant)
    assert set(quantized_layers(rebuilt)).isdisjoint(info["layers_float"])
    assert quality == pytest.approx(quant["metrics"]["quality"], abs=1e-9)


class _SamePaddedNet(nn.Module):
    """Conv -> BatchNorm -> ReLU6 behind "same" padding computed with ``int()`` of the input size
    (as transformers' MobileNetV2): fx cannot trace it, so only torch.export's dataflow folds it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = 1 if int(x.shape[-1]) % 2 else 0
        y = self.act(self.bn(self.conv(F.pad(x, (pad, 1, pad, 1)))))
        return self.head(y.mean((2, 3)))


def test_batchnorms_fx_cannot_reach_are_folded_before_quantizing_and_the_fold_restores():
    from slimkit.techniques.quantization.ptq import quantize_static
    from slimkit.techniques.quantization.step import QuantizeConfig, QuantizeStructure

    torch.manual_seed(0)
    model = _SamePaddedNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    batches = [(torch.randn(16, 3, 9, 9),)]
    q, report = quantize_static(model, batches)
    assert report.bn_folds == [("bn", "conv")] and report.to_dict()["bn_folded_via_export"] == 1
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    assert isinstance(q.conv, QuantConv2d)  # the folded conv (its bias holds the statistics) is int8
    x = batches[0][0]
    with torch.no_grad():
        assert float((q(x) - model(x)).abs().max() / model(x).abs().max()) < 0.1
    structure = QuantizeStructure(config=QuantizeConfig(), weight_max=127, float_outputs=report.float_outputs,
                                  bn_folds=report.bn_folds)
    restored = restore_step("quantize", _SamePaddedNet(), structure.to_json_dict())
    restored.load_state_dict(q.state_dict())
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), q(x))


class _DepthwiseConv(nn.Conv2d):
    """Only the constructor differs from nn.Conv2d (transformers' EfficientNetDepthwiseConv2d)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1, groups=channels)


def test_a_conv_subclass_that_only_changes_its_constructor_is_quantized():
    from slimkit.encoding.twins import plain_type

    class Scaled(nn.Conv2d):  # overrides how it computes: not a plain conv
        def forward(self, x):
            return super().forward(x) * 2

    assert plain_type(_DepthwiseConv(4)) is nn.Conv2d and plain_type(Scaled(4, 4, 3)) is None
    model = nn.Sequential(_DepthwiseConv(4), nn.ReLU(), Scaled(4, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    q, report = prepare_static(model)
    assert isinstance(q.get_submodule("0"), QuantConv2d) and "0" in report.quantized
    assert "2" not in report.quantized and not any(isinstance(m, QuantConv2d) for m in q.get_submodule("2").modules())


class _Attention(nn.Module):
    """One self-attention block written by hand: query/key/value projections read one tensor."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(d)
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm(x)

        def split(y):
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / (d // self.heads) ** 0.5
        context = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, t, d)
        return x + self.out(context)


def _attention_and_batches():
    torch.manual_seed(0)
    model = _Attention().eval()
    batches = [(torch.randn(8, 16, 32),) for _ in range(4)]
    return model, batches


def test_attention_operands_are_found_by_dataflow_and_quantized_symmetric():
    from slimkit.techniques.quantization.ptq import attention_operands

    model, batches = _attention_and_batches()
    prepared, _ = prepare_static(model)
    assert attention_operands(prepared, batches[0]) == ["query", "key"]  # P @ V: the softmax side is float
    mlp, _ = prepare_static(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)))
    assert attention_operands(mlp, (torch.randn(2, 8),)) == []
    with torch.no_grad():
        q, report = quantize_static(model, batches, bias_correction=False)
        plain, plain_report = quantize_static(model, batches, bias_correction=False, attention=False)
        layers = quantized_layers(q)
        assert report.attention_outputs == ["query", "key"] and plain_report.attention_outputs == []
        for name in ("query", "key"):
            quant = layers[name].output_quant
            assert quant.spec.symmetric and int(quant.zero_point) == 0
            assert name not in report.float_outputs and quantized_layers(plain)[name].output_quant is None
        assert layers["value"].output_quant is None
        x = batches[0][0]
        # the scores' operands are rounded to the int8 grid: outputs move, a little
        diff = (q(x) - plain(x)).abs().max()
        assert 0 < diff < 0.05 * model(x).abs().max()


def test_linears_reading_one_tensor_share_smoothing_and_input_scale_and_restore():
    model, batches = _attention_and_batches()
    with torch.no_grad():
        q, report = quantize_static(model, batches, bias_correction=False, smoothquant=0.8)
    layers = quantized_layers(q)
    assert report.smoothed == ["query", "key", "value", "out"]
    for name in ("key", "value"):
        assert torch.equal(layers[name].input_smoothing, layers["query"].input_smoothing)
        assert float(layers[name].input_quant.scale) == float(layers["query"].input_quant.scale)
        assert int(layers[name].input_quant.zero_point) == int(layers["query"].input_quant.zero_point)
    assert not torch.equal(layers["out"].input_smoothing[:32], layers["query"].input_smoothing)
    structure = {"config": {"smoothquant": 0.8}, "weight_max": 127, "float_outputs": report.float_outputs,
                 "smoothed": report.smoothed, "attention_outputs": report.attention_outputs}
    fresh = restore_step("quantize", model, structure)
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(batches[0][0]), q(batches[0][0]))


def test_openvino_runs_attention_scores_on_integers(tmp_path):
    pytest.importorskip("openvino")
    from slimkit.backends.openvino import save_ir
    from slimkit.backends.openvino_inspect import inspect_ir

    model, batches = _attention_and_batches()
    found = {}
    for attention in (True, False):
        with torch.no_grad():
            q, _ = quantize_static(model, batches, smoothquant=0.8, attention=attention)
        xml = save_ir(q, batches[0], tmp_path / f"attention-{attention}.xml")[0]
        found[attention] = inspect_ir(xml, shape=[1, 16, 32])
        # one quantizer for the three projections' shared input, not three
        assert found[attention].smoothing_multiplies == 2
    # with the operands quantized, the fused attention (scores, softmax, context) runs on integers
    def integer_score_nodes(ins):
        return [op for op in ins.ops if op.integer and op.layer_type in ("Subgraph", "MatMul")]
    assert integer_score_nodes(found[True]), [(o.layer_type, o.precision, o.output_shape) for o in found[True].ops]
    assert not integer_score_nodes(found[False])
