"""Architecture specs: parsing, building every block type, MobileNetV2 from a spec, scaling."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.zoo import create_model
from slimkit.zoo.arch import ArchSpec, DEFAULT_STAGES, StageSpec, build_arch, mobilenetv2_spec, parse_stage, scale_spec
from slimkit.zoo.blocks import DepthwiseSeparableConv, Fire, InvertedResidual, SqueezeExcite
from slimkit.zoo.shufflenet import ShuffleUnit


@pytest.mark.parametrize("width,small", [(1.0, True), (0.35, False), (1.4, True)])
def test_mobilenetv2_from_its_spec_is_the_zoo_model(width, small):
    ref = create_model("mobilenetv2_100", num_classes=10, width_mult=width, small_input=small).eval()
    net = build_arch(mobilenetv2_spec(width, small), num_classes=10).eval()
    net.load_state_dict(ref.state_dict())  # the same names and shapes, strictly
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)


def test_stage_strings_round_trip_and_bad_tokens_are_named():
    for text in DEFAULT_STAGES + mobilenetv2_spec().strings():
        stage = parse_stage(text)
        assert parse_stage(stage.to_string()) == stage
    assert parse_stage("ir_r2_k5_s2_e6_c40_se0.25_silu") == StageSpec(block="ir", depth=2, out=40, stride=2, kernel=5,
                                                                      expand=6, se=0.25, act="silu")
    with pytest.raises(ConfigError, match="cannot read 'x9'"):
        parse_stage("ir_r2_x9_c16")
    with pytest.raises(ConfigError, match="expand and se apply to 'ir'"):
        parse_stage("ds_r1_e6_c16")
    with pytest.raises(ConfigError, match="stage 'ir_r0_c16'"):
        parse_stage("ir_r0_c16")
    with pytest.raises(ConfigError, match="architecture spec"):
        build_arch({"stages": []})


def test_every_block_type_builds_where_the_spec_says():
    net = build_arch(ArchSpec(stages=DEFAULT_STAGES, stem=16, stem_stride=1), num_classes=7).eval()
    f = net.features
    kinds = [type(m) for m in f]
    assert kinds[2] is DepthwiseSeparableConv and kinds[3] is kinds[4] is InvertedResidual
    assert kinds[5] is kinds[6] is ShuffleUnit and isinstance(f[7][1], Fire)
    assert isinstance(f[7][0], nn.MaxPool2d)  # a stride-2 fire stage pools first
    assert not f[3].use_residual and f[4].use_residual  # the stride-2 first block has no residual
    assert f[3].block[0][0].out_channels == 24 * 4 and f[3].block[1][0].kernel_size == (5, 5)
    assert any(isinstance(m, SqueezeExcite) for m in f[3].modules()) and isinstance(f[3].block[0][2], nn.Hardswish)
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for m in f]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    for h in hooks:
        h.remove()
    assert shapes == [(16, 32, 32), (16, 32, 32), (24, 32, 32), (32, 16, 16), (32, 16, 16), (64, 8, 8), (64, 8, 8),
                      (96, 4, 4)]
    with pytest.raises(ConfigError, match="keeps its width"):
        build_arch({"stages": ["shuffle_r1_s1_c64"], "stem": 32})


def test_scaling_rounds_channels_and_depths_as_efficientnet_does():
    spec = ArchSpec(stages=["ir_r3_k3_s1_e6_c24", "fire_r1_s2_c16"], stem=32, head=1280)
    wide = scale_spec(spec, width=0.5, depth=1.5)
    assert [s.out for s in wide.stages] == [16, 16] and [s.depth for s in wide.stages] == [5, 2]  # ceil(1.5 * 3)
    assert wide.stem == 16 and wide.head == 1280  # the head is never narrowed
    assert scale_spec(spec, width=2.0).head == 2560
    with pytest.raises(ConfigError, match="positive"):
        scale_spec(spec, width=0)
