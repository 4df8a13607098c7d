"""Real positions of padded sequence batches: ``real_rows`` and mask inference."""

import torch

from slimkit.api.data import as_split
from slimkit.data.positions import infer_mask_input, real_positions, real_rows


def test_real_rows_keeps_the_masked_positions_of_matching_tensors_only():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    x = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    assert real_rows(x) is x  # no mask set
    with real_positions(mask):
        rows = real_rows(x)
        torch.testing.assert_close(rows, torch.stack([x[0, 0], x[0, 1], x[1, 0]]))
        scores = torch.zeros(2, 4, 3, 3)  # [batch, heads, q, k]: not [batch, positions, ...]
        assert real_rows(scores) is scores
        assert real_rows(torch.zeros(2, 3)).shape == (2, 3)  # 2-D: no channel rows to select
        with real_positions(None):
            assert real_rows(x) is x
        assert real_rows(x).shape == (3, 4)  # the outer mask is back
    assert real_rows(x) is x


def test_the_attention_mask_is_recognised_among_token_inputs():
    ids = torch.tensor([[101, 7, 102, 0], [101, 102, 0, 0]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    assert infer_mask_input((ids, mask)) == 1
    assert infer_mask_input((ids, types, mask)) == 2  # token type ids start with 0: not a mask
    assert infer_mask_input((mask, ids)) == 0
    assert infer_mask_input((ids,)) is None
    assert infer_mask_input((torch.randn(2, 4), mask)) is None  # float input: not token ids
    assert infer_mask_input((ids, mask.flip(1))) is None  # left padding: the first position is not a token
    assert infer_mask_input((mask, mask.clone())) is None  # two candidates: ambiguous


def test_a_users_token_batches_become_a_split_that_knows_its_mask():
    ids = torch.randint(1, 50, (8, 6))
    mask = torch.ones_like(ids)
    mask[:4, 3:] = 0
    split, _ = as_split([((ids, mask), torch.zeros(8))])
    assert split.mask_input == 1
    images, _ = as_split([torch.randn(4, 3, 8, 8)])
    assert images.mask_input is None
