"""Statistics that are means over a padded sequence batch count its real tokens only: bias
correction, pruning's activation scores and GPTQ's Hessians give the same result whatever the
padded positions hold, and (the control) a different one without the mask."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.techniques.pruning.structured import activation_stats
from slimkit.techniques.quantization.ptq import (_correct_bias_layerwise, _correctable_layers, correct_bias,
                                                 quantize_static)
from slimkit.techniques.quantization.weight_only import WeightOnlySpec, quantize_weight_only


class _TokenModel(nn.Module):
    """Per-position MLP over embeddings, mean-pooled over the real tokens."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(60, 16)
        self.up, self.down, self.norm = nn.Linear(16, 32), nn.Linear(32, 16), nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, ids, mask):
        h = self.embed(ids)
        h = self.norm(h + self.down(F.gelu(self.up(h))))
        m = mask[..., None].float()
        return self.head((h * m).sum(1) / m.sum(1))


def _batches(pad_seed: int, lengths=(9, 9, 9)):
    """Three batches of the same real tokens; padding ids drawn with ``pad_seed``."""
    g = torch.Generator().manual_seed(0)
    pads = torch.Generator().manual_seed(pad_seed)
    out = []
    for length in lengths:
        ids = torch.randint(1, 30, (5, length), generator=g)
        real = torch.randint(2, length + 1, (5,), generator=g)
        mask = (torch.arange(length)[None] < real[:, None]).long()
        ids = torch.where(mask.bool(), ids, torch.randint(30, 60, (5, length), generator=pads))
        out.append((ids, mask))
    return out


@pytest.fixture
def model():
    torch.manual_seed(0)
    return _TokenModel().eval()


@pytest.mark.parametrize("lengths", [(9, 9, 9), (9, 7, 9)], ids=["one pass", "layer by layer"])
def test_bias_correction_averages_real_tokens_only(model, lengths):
    a, b = _batches(1, lengths), _batches(2, lengths)
    q, _ = quantize_static(model, a, bias_correction=False, keep_float_weights=True, attention=False)

    def shifts(batches, mask_input):
        return correct_bias(copy.deepcopy(q), batches, mask_input=mask_input)

    with_mask = shifts(a, 1), shifts(b, 1)
    assert set(with_mask[0]) == {"up", "down", "head"} and min(with_mask[0].values()) > 0
    for name in with_mask[0]:
        assert with_mask[0][name] == pytest.approx(with_mask[1][name], rel=1e-5)
    without = shifts(a, None), shifts(b, None)
    assert any(abs(without[0][n] - without[1][n]) > 1e-4 * without[0][n] for n in ("up", "down"))
    if lengths[0] == lengths[1]:  # the one-pass algorithm agrees with the layer-by-layer one under the mask
        reference = copy.deepcopy(q)
        expected = _correct_bias_layerwise(reference, a, _correctable_layers(reference), 1)
        assert with_mask[0] == pytest.approx(expected, rel=1e-4)


def test_activation_scores_for_pruning_average_real_tokens_only(model):
    def stats(batches, mask_input):
        return {m: s for m, s in activation_stats(model, batches, mask_input).items()}

    a, b = stats(_batches(1), 1), stats(_batches(2), 1)
    for layer in (model.up, model.down):
        torch.testing.assert_close(a[layer], b[layer])
    assert not torch.allclose(stats(_batches(1), None)[model.up], stats(_batches(2), None)[model.up])


def test_gptq_hessians_come_from_real_tokens_only(model):
    def codes(batches, mask_input):
        q, _ = quantize_weight_only(model, WeightOnlySpec(4, 16, False), method="gptq", batches=batches,
                                    mask_input=mask_input)
        return q.up.weight

    torch.testing.assert_close(codes(_batches(1), 1), codes(_batches(2), 1))
    assert not torch.equal(codes(_batches(1), None), codes(_batches(2), None))
