"""The training loader: sequence splits are grouped by length, every row once per epoch."""

import torch

from slimkit.data.base import Split


def _sequences(n: int = 1000, width: int = 64) -> Split:
    torch.manual_seed(0)
    lengths = torch.randint(3, width + 1, (n,))
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1000, (n, width)) * mask
    return Split((ids, mask), torch.arange(n), mask_input=1)


def test_length_grouped_batches_cover_every_row_once_and_pad_less():
    split = _sequences()
    loader = split.loader(16, shuffle=True, seed=0)
    epochs = []
    for _ in range(2):
        rows, padded, batches = [], 0, 0
        for inputs, targets, extras in loader:
            batches += 1
            assert extras == {} and inputs[0].shape[1] == int(inputs[1].sum(1).max())  # trimmed to its longest row
            rows += targets.tolist()
            padded += inputs[1].numel()
        assert sorted(rows) == list(range(1000)) and batches == len(loader)
        epochs.append(rows)
        random_padding = sum(int(split.inputs[1][torch.randperm(1000)[i:i + 16]].sum(1).max()) * 16
                             for i in range(0, 1000, 16))
        assert padded < 0.75 * random_padding
    assert epochs[0] != epochs[1]  # a fresh order each epoch
    again = [t.tolist() for _, t, _ in split.loader(16, shuffle=True, seed=0)]
    assert sum(again, []) == epochs[0]  # fixed by the seed


def test_unshuffled_and_non_sequence_loaders_keep_plain_batches():
    split = _sequences(40)
    assert [t.tolist() for _, t, _ in split.loader(16, shuffle=False, seed=0)] == \
        [list(range(0, 16)), list(range(16, 32)), list(range(32, 40))]
    flat = Split((torch.randn(40, 3),), torch.arange(40), extras={"t": torch.arange(40) * 2})
    for _, targets, extras in flat.loader(16, shuffle=True, seed=0):
        assert torch.equal(extras["t"], targets * 2)  # extras stay with their rows
