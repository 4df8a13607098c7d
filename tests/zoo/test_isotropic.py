"""ConvMixer (the isotropic zoo network): equal blocks, a residual over each whole block, errors."""

import pytest
import torch

from slimkit.measure.macs import count_macs
from slimkit.zoo import create_model
from slimkit.zoo.isotropic import MixerBlock


def test_convmixer_blocks_cost_the_same_and_tokens_keep_their_shape():
    model = create_model("convmixer", num_classes=12, dim=32, depth=4, kernel=5, patch=4).eval()
    x = torch.randn(2, 3, 32, 32)
    blocks = [m for m in model if isinstance(m, MixerBlock)]
    assert len(blocks) == 4
    tokens = model[0](x)
    assert tokens.shape == (2, 32, 8, 8)  # 4x4 patches of a 32x32 input
    costs = {count_macs(b, (tokens[:1],)) for b in blocks}
    assert len(costs) == 1  # isotropic: every block the same MACs
    # depthwise 5x5 + pointwise 32x32 on 64 tokens
    assert costs.pop() == 64 * (32 * 25 + 32 * 32)
    assert model(x).shape == (2, 12)


def test_mixer_block_is_a_residual_over_the_whole_block():
    block = MixerBlock(8, kernel=3).eval()
    x = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(block(x), x + block.pointwise(block.depthwise(x)))
    with torch.no_grad():  # a zero pointwise branch (BN scale 0, shift 0 and GELU(0) = 0) leaves the identity
        block.pointwise[1].weight.zero_()
        block.pointwise[1].bias.zero_()
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("kwargs", [{"kernel": 4}, {"depth": 0}, {"act": "swish"}])
def test_convmixer_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="kernel|depth|activation"):
        create_model("convmixer", **kwargs)
