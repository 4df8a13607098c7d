"""Quantization arithmetic and observers against hand-computed values."""

import pytest
import torch

from slimkit.techniques.quantization.observers import make_observer
from slimkit.techniques.quantization.qscheme import (QuantSpec, dequantize, fake_quantize, qparams_from_range, quantize,
                                                      weight_qparams)


def test_symmetric_int8_by_hand():
    spec = QuantSpec(8, symmetric=True)
    scale, zp = qparams_from_range(torch.tensor(-2.0), torch.tensor(1.0), spec)
    assert scale.item() == pytest.approx(2.0 / 127.5) and zp.item() == 0
    q = quantize(torch.tensor([-2.0, 0.0, 1.0, 5.0]), scale, zp, spec)
    assert q.tolist() == [-127, 0, 64, 127]  # 1.0 / (2/127.5) = 63.75 -> 64; 5.0 is clamped


def test_asymmetric_uint8_represents_zero_exactly():
    spec = QuantSpec(8, symmetric=False)
    scale, zp = qparams_from_range(torch.tensor(-0.3), torch.tensor(2.2), spec)
    assert scale.item() == pytest.approx(2.5 / 255)
    assert zp.item() == round(0.3 / (2.5 / 255))
    x = torch.tensor([0.0])
    assert dequantize(quantize(x, scale, zp, spec), scale, zp, spec).item() == 0.0


def test_range_is_widened_to_include_zero():
    scale, zp = qparams_from_range(torch.tensor(1.0), torch.tensor(3.0), QuantSpec(8, symmetric=False))
    assert zp.item() == 0 and scale.item() == pytest.approx(3.0 / 255)


@pytest.mark.parametrize("spec", [QuantSpec(8, True, axis=0), QuantSpec(4, True, axis=0), QuantSpec(4, False, axis=0),
                                  QuantSpec(4, True, group_size=16), QuantSpec(3, False, group_size=8)])
def test_round_trip_error_is_at_most_half_a_step(spec):
    w = torch.randn(6, 32) * torch.linspace(0.1, 3, 6)[:, None]
    scale, zp = weight_qparams(w, spec)
    err = (dequantize(quantize(w, scale, zp, spec), scale, zp, spec) - w).abs()
    step = scale[:, None] if spec.group_size is None else scale.repeat_interleave(spec.group_size, dim=-1)
    assert bool((err <= step / 2 + 1e-6).all())
    per_channel_or_group = scale.numel() > 1
    assert per_channel_or_group  # one scale per row (or group), not one for the tensor


def test_fake_quantize_passes_gradients_inside_the_range_only():
    spec = QuantSpec(8, True)
    scale, zp = torch.tensor(0.01), torch.tensor(0, dtype=torch.int32)
    x = torch.tensor([0.5, 0.004, 3.0, -2.0], requires_grad=True)  # 3.0 and -2.0 lie outside +-1.27
    y = fake_quantize(x, scale, zp, spec)
    assert y.detach().tolist() == pytest.approx([0.5, 0.0, 1.27, -1.28])
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_minmax_observer_tracks_extremes_per_channel():
    obs = make_observer("minmax", axis=1)
    obs.observe(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    obs.observe(torch.tensor([[-1.0, 4.0]]))
    lo, hi = obs.range(QuantSpec())
    assert lo.tolist() == [-1.0, -2.0] and hi.tolist() == [3.0, 4.0]


def test_percentile_observer_clips_outliers():
    torch.manual_seed(0)
    x = torch.cat([torch.rand(100_000) * 2 - 1, torch.tensor([50.0])])
    obs = make_observer("percentile", percentile=99.9)
    obs.observe(x)
    lo, hi = obs.range(QuantSpec())
    assert 0.99 < hi.item() < 1.01 and -1.01 < lo.item() < -0.99  # the 50.0 outlier is clipped


@pytest.mark.parametrize("name", ["mse", "entropy"])
def test_clipping_observers_beat_minmax_on_heavy_tails(name):
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    spec = QuantSpec(4, True)  # at 4 bits the rounding step is coarse enough that clipping pays

    def mse(observer):
        observer.observe(x)
        scale, zp = observer.qparams(spec)
        return float(((dequantize(quantize(x, scale, zp, spec), scale, zp, spec) - x) ** 2).mean())

    minmax, clipped = mse(make_observer("minmax")), mse(make_observer(name))
    assert clipped < 0.8 * minmax
    obs = make_observer(name)
    obs.observe(x)
    assert obs.range(spec)[1] < x.max()  # it really clipped


def test_observer_without_data_is_a_clear_error():
    with pytest.raises(RuntimeError, match="saw no data"):
        make_observer("minmax").qparams(QuantSpec())


def test_observer_memory_is_bounded():
    obs = make_observer("percentile", max_samples=1000)
    for _ in range(50):
        obs.observe(torch.randn(10_000))
    assert sum(s.numel() for s in obs.samples) <= 1000


