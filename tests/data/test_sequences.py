"""The synthetic sequence tasks: the same rows for a seed, labels that follow their rule."""

import torch

from slimkit.data.sequences import PAD_ID, addition_rows, load_addition_splits, load_parity_splits, parity_rows


def test_parity_rows_are_seeded_and_labelled_by_the_count_of_ones():
    x, y, d = parity_rows(2000, 12, torch.Generator().manual_seed(3))
    again = parity_rows(2000, 12, torch.Generator().manual_seed(3))
    other = parity_rows(2000, 12, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip((x, y, d), again)) and not torch.equal(x, other[0])
    assert set(x.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.equal(d, (x != 0).sum(1)) and d.min() == 1 and d.max() == 12
    for i in range(50):
        assert int(y[i]) == sum(1 for v in x[i].tolist() if v == 1.0) % 2
    assert 0.45 < float(y.float().mean()) < 0.55
    assert len(d.unique()) == 12 and float((x == -1).sum()) / float((x != 0).sum()) > 0.45  # signs balanced


def test_parity_splits_are_fixed_and_carry_the_difficulty():
    a, b = load_parity_splits(size=8, rows=(64, 16, 32)), load_parity_splits(size=8, rows=(64, 16, 32))
    assert a.sizes() == {"train": 64, "val": 16, "test": 32}
    assert torch.equal(a.test.inputs[0], b.test.inputs[0]) and torch.equal(a.test.targets, b.test.targets)
    assert torch.equal(a.test.extras["difficulty"], (a.test.inputs[0] != 0).sum(1))
    assert not torch.equal(a.train.inputs[0][:16], a.val.inputs[0])


def test_addition_rows_sum_their_real_digits_mod_10():
    ids, mask, y, lengths = addition_rows(500, 7, torch.Generator().manual_seed(0))
    again = addition_rows(500, 7, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((ids, mask, y, lengths), again))
    assert torch.equal(mask.sum(1), lengths) and lengths.min() == 1 and lengths.max() == 7
    assert (ids[mask == 0] == PAD_ID).all() and (ids[mask == 1] >= 1).all() and ids.max() <= 10
    for i in range(50):
        digits = [t - 1 for t in ids[i, :int(lengths[i])].tolist()]
        assert int(y[i]) == sum(digits) % 10


def test_addition_splits_mark_the_mask_input():
    splits = load_addition_splits(max_len=5, rows=(32, 8, 8))
    assert splits.train.mask_input == 1 and len(splits.train.inputs) == 2
    assert torch.equal(splits.test.extras["difficulty"], splits.test.inputs[1].sum(1))
