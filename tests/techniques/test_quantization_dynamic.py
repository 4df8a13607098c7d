"""Dynamic int8: run-time activation quantization, the MatMulInteger export, the recipe step."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.step import restore_step
from slimkit.core.errors import ConfigError
from slimkit.recipes.runner import run_recipe
from slimkit.techniques.quantization.dynamic import DynamicQuantLinear, quantize_dynamic
from slimkit.techniques.quantization.modules import default_weight_max
from slimkit.techniques.quantization.step import QuantizeConfig


def _tokens(seed=0):
    """Tokens whose ranges differ 100x (a transformer's hidden states do)."""
    torch.manual_seed(seed)
    return torch.randn(3, 10, 96) * torch.logspace(-1, 1, 10)[None, :, None]


def test_per_token_codes_and_scales_are_hand_computed():
    layer = DynamicQuantLinear(nn.Linear(3, 2), "token")
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    codes, scale, zero_point = layer.quantize_input(x)
    assert torch.allclose(scale[0], torch.tensor([2.0 / 127]))
    assert codes[0].tolist() == [128 + 64, 128 - 127, 128 + 32]  # round(63.5) is 64 (half to even)
    assert codes[1].tolist() == [128, 128, 128] and zero_point.unique().tolist() == [128.0]  # zeros stay finite


def test_per_tensor_codes_follow_onnx_dynamic_quantize_linear():
    layer = DynamicQuantLinear(nn.Linear(4, 2), "tensor")
    x = torch.tensor([[-1.0, 0.0, 1.0, 3.0]])
    codes, scale, zero_point = layer.quantize_input(x)
    assert float(scale) == pytest.approx(4.0 / 255) and float(zero_point) == 64.0  # round(63.75) = 64
    assert codes.tolist() == [[0.0, 64.0, 128.0, 255.0]]


def test_weights_are_int8_per_channel_and_the_output_approximates_float_without_equalling_it():
    torch.manual_seed(0)
    linear = nn.Linear(96, 32)
    layer = DynamicQuantLinear(linear, "token", weight_max=63)
    assert layer.weight_int8.dtype == torch.int8 and int(layer.weight_int8.abs().max()) == 63
    assert layer.stored_bytes() == 96 * 32 + 4 * 32
    x = _tokens()
    with torch.no_grad():
        ref, out = linear(x), layer(x)
    err = (out - ref).norm() / ref.norm()
    assert 0 < err < 0.02


def test_per_token_beats_per_tensor_on_tokens_of_different_ranges():
    torch.manual_seed(0)
    linear = nn.Linear(96, 32)
    x = _tokens()
    with torch.no_grad():
        ref = linear(x)
        small = slice(0, 3)  # the three smallest tokens, where one shared scale leaves few levels
        errors = {g: float(((DynamicQuantLinear(linear, g)(x) - ref)[:, small]).norm() / ref[:, small].norm())
                  for g in ("token", "tensor")}
    assert errors["token"] < 0.2 * errors["tensor"], errors


@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_onnx_runtime_runs_integer_kernels_and_matches_eager(tmp_path, ort_optimized_ops, granularity):
    ort = pytest.importorskip("onnxruntime")
    from slimkit.backends.onnxruntime import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 128), nn.GELU(), nn.Linear(128, 16)).eval()
    q, report = quantize_dynamic(model, granularity=granularity, weight_max=63)
    x = _tokens()
    path = export_onnx(q, (x[:1],), tmp_path / "dynamic.onnx")
    ops = ort_optimized_ops(path)
    integer = [op for op in ops if op in ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")]
    assert len(integer) == 2 and not {"MatMul", "Gemm", "FusedMatMul"} & set(ops), ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seq in (x, x[:1]):  # dynamic batch
        out = session.run(None, {session.get_inputs()[0].name: seq.numpy()})[0]
        with torch.no_grad():
            expected = q(seq).numpy()
        # the same integer products; with a bias the fused kernel of ONNX Runtime 1.32 dropped it
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert report.to_dict()["quantized_ratio"] == pytest.approx((96 * 128 + 4 * 128 + 128 * 16 + 4 * 16)
                                                                / (4 * (96 * 128 + 128 * 16)))


def test_convolutions_and_skipped_layers_stay_float_with_a_reason():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 8), nn.ReLU(), nn.Linear(8, 2))
    q, report = quantize_dynamic(model, skip=["4"])
    assert isinstance(q[0], nn.Conv2d) and isinstance(q[2], DynamicQuantLinear) and type(q[4]) is nn.Linear
    assert {s["module"] for s in report.skipped} == {"0", "4"}
    assert "static int8" in next(s["reason"] for s in report.skipped if s["module"] == "0")
    with pytest.raises(ValueError, match="no module"):
        quantize_dynamic(model, skip=["nope"])


def test_a_static_only_field_with_method_dynamic_is_an_error():
    with pytest.raises(Exception, match="bias_correction: for method 'static' only"):
        QuantizeConfig(method="dynamic", bias_correction=False)
    QuantizeConfig(method="dynamic", smoothquant=0.5, calibration_samples=64)  # SmoothQuant calibrates dynamic too
    with pytest.raises(Exception, match="calibrates only with smoothquant"):
        QuantizeConfig(method="dynamic", calibration_samples=64)
    recipe = {"task": "digits-mlp", "steps": [{"quantize": {"method": "dynamic", "observer": "mse"}}]}
    with pytest.raises(ConfigError, match="observer"):
        run_recipe(recipe, None)


def test_quantize_step_dynamic_keeps_accuracy_deploys_on_onnxruntime_and_resumes(tmp_path, rebuild_run_step):
    pytest.importorskip("onnxruntime")
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 10}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"quantize": {"method": "dynamic"}}, {"deploy": {"backend": "onnxruntime"}}]}
    result = run_recipe(recipe, tmp_path / "run").results
    base, quant, deploy = result["steps"]
    assert quant["info"]["method"] == "dynamic" and quant["info"]["layers_quantized"] == 3
    assert quant["metrics"]["quality"] >= base["metrics"]["quality"] - 0.01
    assert deploy["metrics"]["quality"] >= base["metrics"]["quality"] - 0.01
    assert deploy["metrics"]["size_bytes"] < 0.4 * base["metrics"]["size_bytes"]
    rebuilt, quality = rebuild_run_step(tmp_path / "run", "digits-mlp", 1, quant)
    assert sum(isinstance(m, DynamicQuantLinear) for m in rebuilt.modules()) == 3
    assert quality == pytest.approx(quant["metrics"]["quality"], abs=1e-9)


def test_embedding_tables_become_int8_rows_and_the_checkpoint_restores():
    from slimkit.techniques.quantization.step import quantize_embeddings
    from slimkit.techniques.quantization.weight_only import WeightOnlyEmbedding

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 4)).eval()

    cfg = QuantizeConfig(method="dynamic")
    q, _ = quantize_dynamic(build(), weight_max=63)
    q, names = quantize_embeddings(q, cfg)
    assert names == ["0"] and isinstance(q[0], WeightOnlyEmbedding) and q[0].weight_packed.dtype == torch.uint8
    ids = torch.randint(0, 50, (3, 7))
    reference = build()(ids)
    assert 0 < float((q(ids) - reference).abs().max()) < 0.05 * float(reference.abs().max())
    assert quantize_embeddings(build(), QuantizeConfig(embeddings="float"))[1] == []
    structure = {"config": cfg.to_json_dict(), "weight_max": 63}
    fresh = restore_step("quantize", build(), structure)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(ids), q(ids))


class _SharedInput(nn.Module):
    """Three linears reading one tensor (query/key/value style) with outlier input channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = (nn.Linear(64, 32) for _ in range(3))
        self.out = nn.Linear(96, 8)

    def forward(self, x):
        return self.out(torch.cat([self.q(x), self.k(x), self.v(x)], -1))


def _outlier_tokens(n=8):
    torch.manual_seed(1)
    x = torch.randn(n, 12, 64)
    x[..., [3, 40]] *= 60  # a transformer's outlier channels
    return x


def test_smoothquant_before_dynamic_shares_factors_cuts_error_and_matches_onnx_runtime(tmp_path, ort_optimized_ops):
    ort = pytest.importorskip("onnxruntime")
    from slimkit.backends.onnxruntime import export_onnx

    model = _SharedInput().eval()
    x = _outlier_tokens()
    batches = [(x[i:i + 4],) for i in range(0, 8, 4)]
    with torch.no_grad():
        ref = model(x)
        plain, _ = quantize_dynamic(model, granularity="tensor")
        smooth, report = quantize_dynamic(model, granularity="tensor", smoothquant=0.8, batches=batches)
        assert report.smoothed == ["q", "k", "v", "out"] and report.to_dict()["smoothed"] == 4
        assert torch.equal(smooth.k.input_smoothing, smooth.q.input_smoothing)
        assert torch.equal(smooth.v.input_smoothing, smooth.q.input_smoothing)
        assert smooth.q.input_smoothing[[3, 40]].max() < 0.2 * smooth.q.input_smoothing.median()
        # the float product is unchanged by the factors: the dense weight acts on the raw input
        assert torch.allclose(F.linear(x, smooth.q.dense_weight(), smooth.q.bias), model.q(x),
                              rtol=0.02, atol=0.02 * float(model.q(x).abs().max()))
        err = {name: float((m(x) - ref).norm() / ref.norm()) for name, m in (("plain", plain), ("smooth", smooth))}
    assert err["smooth"] < 0.5 * err["plain"], err
    # ONNX Runtime runs the platform's weight range: on x86 CPUs without VNNI its u8 x s8 kernels add
    # product pairs in int16 and saturate with 8-bit weights (measured on an AVX2 EPYC: 97 of 768
    # outputs off by up to 2.1), so its outputs match the module's only with 7-bit weights there
    if default_weight_max() != 127:
        with torch.no_grad():
            smooth, _ = quantize_dynamic(model, granularity="tensor", smoothquant=0.8, batches=batches,
                                         weight_max=default_weight_max())
    path = export_onnx(smooth, (x[:1],), tmp_path / "smooth.onnx")
    ops = ort_optimized_ops(path)
    integer = [op for op in ops if op in ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")]
    assert len(integer) == 4 and not {"MatMul", "Gemm", "FusedMatMul"} & set(ops), ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = smooth(x).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    with pytest.raises(ValueError, match="calibration batches"):
        quantize_dynamic(model, smoothquant=0.5)


def test_quantize_step_dynamic_with_smoothquant_restores(tmp_path):
    from slimkit.core.step import restore_step

    model = _SharedInput().eval()
    x = _outlier_tokens()
    q, report = quantize_dynamic(model, granularity="tensor", smoothquant=0.5, batches=[(x,)])
    structure = {"config": {"method": "dynamic", "granularity": "tensor", "smoothquant": 0.5}, "weight_max": 127,
                 "smoothed": report.smoothed}
    fresh = restore_step("quantize", _SharedInput().eval(), structure)
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))
