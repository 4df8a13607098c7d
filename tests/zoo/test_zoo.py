"""The model zoo: published sizes at 224, small-input variants, and conformance of every model.

Conformance: forward, backward, torch.export and the ONNX Runtime round trip run on every
registered model at a small input.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.core.registry import MODELS
from slimkit.measure.macs import count_macs
from slimkit.measure.size import count_params
from slimkit.zoo import create_model, list_models
from slimkit.zoo.blocks import (ChannelShuffle, DepthwiseSeparableConv, Fire, InvertedResidual, SqueezeExcite,
                                StochasticDepth, channel_shuffle, conv_bn_act, make_divisible)

# ---------------------------------------------------------------------------------------------
# Published figures at 1000 classes.
#
# Source: torchvision model docs, weights tables (https://pytorch.org/vision/stable/models.html,
# "Table of all available classification weights": "Params" and "GFLOPS"; the GFLOPS there are
# multiply-accumulates, i.e. GMACs, given to 2 decimals) and the 3-significant-digit figure of
# each builder's own page (the weights' ``meta["_ops"]``). torchvision measures each model at
# its weights' crop size: 224 for all of these except EfficientNet-B1/B2/B3 (240/288/300), so
# those three are measured here at their crop sizes (at 224 they are 0.570/0.659/0.963 GMACs,
# 17-47% below the published figures, which are not 224 figures).
#
# Tolerances: parameters exact. MACs: (a) our GMACs round to the 2-decimal table figure
# (|ours - table| <= 0.005 GMACs, which is up to 12% for the smallest models, e.g.
# MobileNetV3-Small 0.0565 -> 0.06), and (b) within 2% of the 3-significant-digit figure.
# name: (params, table GMACs, 3-digit GMACs, input size)
TORCHVISION = {
    "mobilenetv2_100": (3_504_872, 0.30, 0.301, 224),
    "mobilenetv3_large_100": (5_483_032, 0.22, 0.217, 224),
    "mobilenetv3_small_100": (2_542_856, 0.06, 0.057, 224),
    "efficientnet_b0": (5_288_548, 0.39, 0.386, 224),
    "efficientnet_b1": (7_794_184, 0.69, 0.687, 240),
    "efficientnet_b2": (9_109_994, 1.09, 1.088, 288),
    "efficientnet_b3": (12_233_232, 1.83, 1.827, 300),
    "shufflenet_v2_x0_5": (1_366_792, 0.04, 0.04, 224),  # its builder page also gives just 0.04
    "shufflenet_v2_x1_0": (2_278_604, 0.14, 0.145, 224),
    "shufflenet_v2_x1_5": (3_503_624, 0.30, 0.296, 224),
    "shufflenet_v2_x2_0": (7_393_996, 0.58, 0.583, 224),
    "squeezenet1_0": (1_248_424, 0.82, 0.819, 224),
    "squeezenet1_1": (1_235_496, 0.35, 0.349, 224),
    "resnet18": (11_689_512, 1.81, 1.814, 224),
    "resnet34": (21_797_672, 3.66, 3.664, 224),
}

# MobileNetV1 (Howard et al. 2017, Tables 1 and 6: 569M/325M/149M/41M mult-adds at 224).
# Parameters: the Keras/TF-slim count (conv-bias-free, BN, a 1024->1000 FC with bias) at 1.0;
# the paper's 2.6M/1.3M/0.5M for the narrower ones, exactly as our layout gives them.
MOBILENET_V1 = {
    "mobilenetv1_100": (4_231_976, 569e6),
    "mobilenetv1_075": (2_585_560, 325e6),
    "mobilenetv1_050": (1_331_592, 149e6),
    "mobilenetv1_025": (470_072, 41e6),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_params_and_macs_match_torchvision(name):
    params, table_gmacs, gmacs3, size = TORCHVISION[name]
    model = create_model(name)
    assert count_params(model) == params
    gmacs = count_macs(model, (torch.randn(1, 3, size, size),)) / 1e9
    assert abs(gmacs - table_gmacs) <= 0.005, f"{gmacs:.4f} GMACs does not round to {table_gmacs}"
    assert abs(gmacs / gmacs3 - 1) <= 0.02, f"{gmacs:.4f} GMACs vs {gmacs3}"


@pytest.mark.parametrize("name", sorted(MOBILENET_V1))
def test_mobilenet_v1_params_and_macs_match_the_paper(name):
    params, macs = MOBILENET_V1[name]
    model = create_model(name)
    assert count_params(model) == params
    ours = count_macs(model, (torch.randn(1, 3, 224, 224),))
    assert abs(ours / macs - 1) <= 0.02, f"{ours / 1e6:.1f}M MACs vs {macs / 1e6:.0f}M"


# ---------------------------------------------------------------------------------------------
# Conformance over the registry.

# Models that are not image classifiers of the 32x32 kind, and their input shape (no batch).
INPUT_SHAPES = {"lenet_300_100": (784,), "mlp_digits": (64,), "cnn_digits": (1, 8, 8), "lenet5": (1, 28, 28)}
DEFAULT_SHAPE = (3, 32, 32)
NOT_CLASSIFIERS = {"minilm_l6": "text encoder that needs transformers; tested in tests/tasks/test_minilm.py",
                   "minilm_cls": "MiniLM classifier (token ids and a mask); tested in tests/techniques/test_early_exit.py "
                                 "and by the corpus-cls task"}
INPUT_SHAPES.update({"rnn_steps": (8,), "act_rnn": (8,), "transformer_steps": (8,),
                     "act_transformer": (8,)})  # the parity task's vectors
TOKEN_MODELS = {"rnn_tokens": 11}  # models of token ids, and their vocabulary
# Classifiers whose forward takes decisions on the data: tested in their own files
NOT_EXPORTABLE = {"act_rnn": "halting decided per row in Python (tests/techniques/test_act.py)",
                  "act_transformer": "halting decided per row in Python (tests/techniques/test_act.py)",
                  "rnn_tokens": "packed sequences (tests/zoo/test_recurrent.py)"}
NUM_CLASSES = 10


def small_kwargs(name: str) -> dict:
    """The factory's arguments for a fast test: 10 classes, and the small-input variant if any."""
    params = inspect.signature(MODELS.get(name)).parameters
    kwargs = {"num_classes": NUM_CLASSES} if "num_classes" in params else {}
    if "small_input" in params:
        kwargs["small_input"] = True
    return kwargs


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model(name, **small_kwargs(name))
    if name in TOKEN_MODELS:
        return model, torch.randint(1, TOKEN_MODELS[name], (2, 12))
    return model, torch.randn(2, *INPUT_SHAPES.get(name, DEFAULT_SHAPE))


def registry_params() -> list:
    return [pytest.param(n, marks=pytest.mark.skip(reason=NOT_CLASSIFIERS[n])) if n in NOT_CLASSIFIERS else n
            for n in list_models()]


# Configurations of one family that differ from the family's representative only in width or
# depth multipliers: the same ONNX operator types (checked for every one of them: the op-type sets
# of each family are identical), so the default suite exports the representative and `make
# test-all` (the `slow` mark) exports them all.
SCALED_CONFIGS = {"efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "mobilenetv1_025", "mobilenetv1_050",
                  "mobilenetv1_075", "mobilenetv2_035", "mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_140",
                  "mobilenetv3_large_075", "mobilenetv3_small_075", "shufflenet_v2_x0_5", "shufflenet_v2_x1_5",
                  "shufflenet_v2_x2_0", "resnet34", "squeezenet1_0"}


def export_params() -> list:
    """Every registered classifier; the width and depth variants of a family (SCALED_CONFIGS) are
    marked slow."""
    def marks(n: str) -> list:
        if n in NOT_EXPORTABLE:
            return [pytest.mark.skip(reason=NOT_EXPORTABLE[n])]
        return [pytest.mark.slow] if n in SCALED_CONFIGS else []

    return [pytest.param(n, marks=marks(n)) for n in list_models() if n not in NOT_CLASSIFIERS]


def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set BatchNorm statistics from a batch, so eval outputs are O(1) rather than vanishing."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.cat([x, torch.randn_like(x)]))
    return model.eval()


def test_registry_holds_the_zoo():
    expected = {"mobilenetv1_025", "mobilenetv1_050", "mobilenetv1_075", "mobilenetv1_100",
                "mobilenetv2_035", "mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_100", "mobilenetv2_140",
                "mobilenetv3_small_075", "mobilenetv3_small_100", "mobilenetv3_large_075", "mobilenetv3_large_100",
                "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
                "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
                "squeezenet1_0", "squeezenet1_1", "resnet18", "resnet34",
                "lenet_300_100", "lenet5", "mlp_digits", "cnn_digits", "cnn_shapes", "minilm_l6"}
    assert expected <= set(list_models()) and SCALED_CONFIGS <= set(list_models())
    for name in list_models():
        if name not in NOT_CLASSIFIERS:
            params = inspect.signature(MODELS.get(name)).parameters
            assert "num_classes" in params and MODELS.entry(name).summary, name


@pytest.mark.parametrize("name", registry_params())
def test_forward_and_backward(name):
    model, x = build(name)
    model.train()
    out = model(x)
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([1, 7])).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", export_params())
def test_torch_export_and_onnx_match_eager(name):
    model, x = build(name)
    calibrate(model, x)
    with torch.no_grad():
        expected = model(x)
    scale = float(expected.abs().max())
    assert scale > 1e-3, "outputs vanish: the comparisons would say nothing"

    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-6 * scale)

    for module in ("onnx", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} not installed: torch.export checked, ONNX not")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: torch.export checked, ONNX not")
    onnx_program = torch.onnx.export(program, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == tuple(expected.shape)
    err = float(abs(got - expected.numpy()).max())
    print(f"{name}: output scale {scale:.3g}, max |onnxruntime - eager| {err:.3g}")
    assert err <= 1e-4 * scale  # atol 1e-4 relative to the output scale (max |output|)


# ---------------------------------------------------------------------------------------------
# Small inputs: 8x8 digits and 28x28 MNIST (1 channel), 32x32 shapes (RGB).

SMALL_FAMILIES = ["mobilenetv1_025", "mobilenetv2_035", "mobilenetv3_small_075", "mobilenetv3_large_075",
                  "efficientnet_b0", "shufflenet_v2_x0_5", "squeezenet1_0", "squeezenet1_1", "resnet18"]


@pytest.mark.parametrize("name", SMALL_FAMILIES)
def test_small_input_variants(name):
    torch.manual_seed(0)
    gray = create_model(name, num_classes=10, in_chans=1, small_input=True).eval()
    rgb = create_model(name, num_classes=10, small_input=True).eval()
    with torch.no_grad():
        for model, shape in ((gray, (1, 8, 8)), (gray, (1, 28, 28)), (rgb, (3, 32, 32))):
            out = model(torch.randn(2, *shape))
            assert out.shape == (2, 10) and torch.isfinite(out).all()
        # a 32x32 image keeps at least 4x4 positions up to the head (the standard stem leaves 1x1)
        assert rgb.features(torch.randn(1, 3, 32, 32)).shape[-1] >= 4
        standard = create_model(name, num_classes=10).eval()
        assert standard.features(torch.randn(1, 3, 32, 32)).shape[-1] == 1


# ---------------------------------------------------------------------------------------------
# Shared blocks.


def test_make_divisible_matches_torchvision_rounding():
    assert make_divisible(32 * 0.35) == 16  # 8 would be more than 10% below 11.2
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(24 * 0.75) == 24 and make_divisible(40 * 0.75) == 32 and make_divisible(35.2) == 32
    assert make_divisible(3, min_value=1, divisor=1) == 3


def test_conv_bn_act_is_unchanged():
    layer = conv_bn_act(3, 8)
    assert [type(m) for m in layer] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert layer[0].bias is None and layer[0].padding == (1, 1)


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_stochastic_depth_drops_whole_samples_in_training_only():
    drop = StochasticDepth(0.5)
    x = torch.ones(400, 3, 2, 2)
    kept = drop(x)
    per_sample = kept.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0} and (per_sample == per_sample[:, :1]).all()
    assert 0.3 < (per_sample[:, 0] > 0).float().mean() < 0.7
    assert torch.equal(drop.eval()(x), x)


def test_families_share_the_blocks():
    def kinds(name):
        return {type(m) for m in create_model(name, num_classes=10).modules()}

    assert DepthwiseSeparableConv in kinds("mobilenetv1_025")
    assert InvertedResidual in kinds("mobilenetv2_035")
    assert {InvertedResidual, SqueezeExcite, nn.Hardswish, nn.Hardsigmoid} <= kinds("mobilenetv3_small_075")
    assert {InvertedResidual, SqueezeExcite, StochasticDepth} <= kinds("efficientnet_b0")
    assert ChannelShuffle in kinds("shufflenet_v2_x0_5")
    assert Fire in kinds("squeezenet1_1")


def test_efficientnet_stochastic_depth_is_optional():
    model = create_model("efficientnet_b0", num_classes=10, stochastic_depth_prob=0.0)
    assert not any(isinstance(m, StochasticDepth) for m in model.modules())
    probs = [m.p for m in create_model("efficientnet_b0", num_classes=10).modules() if isinstance(m, StochasticDepth)]
    # 0.2 * index / 16 over the 16 blocks, as torchvision; the last (192->320) has no residual
    assert len(probs) == 9 and max(probs) == pytest.approx(0.2 * 14 / 16)


def test_bad_widths_are_config_errors():
    with pytest.raises(ConfigError, match="ShuffleNetV2 width_mult"):
        create_model("shufflenet_v2_x1_0", width_mult=0.75)
    with pytest.raises(ConfigError, match="width_mult must be positive"):
        create_model("mobilenetv2_100", width_mult=0)


def test_squeezenet_batch_norm_variant_normalises_every_conv_and_leaves_logits_unclamped():
    plain = create_model("squeezenet1_1", num_classes=12, small_input=True)
    bn = create_model("squeezenet1_1", num_classes=12, small_input=True, batch_norm=True)
    convs = [m for m in plain.features.modules() if isinstance(m, nn.Conv2d)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == len(convs) == 25
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert isinstance(plain.classifier[2], nn.ReLU) and isinstance(bn.classifier[2], nn.Identity)
    # the conv weights keep their shapes, in the same order; only BatchNorm parameters are added
    conv_shapes = [tuple(p.shape) for n, p in bn.named_parameters() if p.dim() == 4]
    assert conv_shapes == [tuple(p.shape) for n, p in plain.named_parameters() if p.dim() == 4]
    torch.manual_seed(0)
    logits = bn.eval()(torch.randn(8, 3, 32, 32))
    assert logits.shape == (8, 12) and (logits < 0).any()  # the plain model's final ReLU forbids this


def test_lenet5_widths_give_the_caffe_and_the_1998_layouts():
    assert count_params(create_model("lenet5")) == 431_080  # Caffe's: conv20, conv50, fc500
    small = create_model("lenet5", widths=(6, 16, 120))  # LeCun et al. 1998's widths
    assert count_params(small) == 6 * 25 + 6 + 16 * 6 * 25 + 16 + 256 * 120 + 120 + 120 * 10 + 10 == 34_622
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)
