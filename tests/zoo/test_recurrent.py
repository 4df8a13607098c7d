"""Recurrent zoo models: the dynamic RNN over packed sequences computes each row as if it were
alone and unpadded, and its MACs count each row's real length."""

import pytest
import torch

from slimkit.measure.macs import count_macs
from slimkit.zoo import create_model

torch.set_num_threads(1)


def padded_batch(lengths, max_len=9, vocab=11):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (len(lengths), max_len), generator=g)
    mask = (torch.arange(max_len)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask  # right-padded with id 0


@pytest.mark.parametrize("cell,layers", [("gru", 1), ("lstm", 1), ("gru", 2)])
def test_packed_rows_equal_each_row_alone_and_the_padded_run(cell, layers):
    torch.manual_seed(0)
    model = create_model("rnn_tokens", cell=cell, layers=layers).eval()
    lengths = [9, 3, 1, 6, 4]
    ids, mask = padded_batch(lengths)
    with torch.no_grad():
        packed = model.last_states(ids, mask)
        alone = torch.cat([model.last_states(ids[i:i + 1, :n]) for i, n in enumerate(lengths)])
        outputs, _ = model.rnn(model.embed(ids))  # every position, padding included
        at_last = outputs[torch.arange(len(lengths)), torch.tensor(lengths) - 1]
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(packed, at_last, rtol=0, atol=1e-6)
    # the padded run's final state is not the answer for short rows: padding would have cost and changed it
    assert (outputs[:, -1] - packed).abs().amax(1)[1:].min() > 1e-3
    # lengths from the padding id equal the mask's; the logits do not depend on the padding
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids, mask), rtol=0, atol=0)
        torch.testing.assert_close(model(ids, mask)[1:2], model(ids[1:2, :3]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cell,gates", [("gru", 3), ("lstm", 4)])
def test_macs_count_each_rows_real_length(cell, gates):
    model = create_model("rnn_tokens", cell=cell, embed_dim=8, hidden=16, num_classes=10)
    ids, mask = padded_batch([9, 3, 1, 6])
    per_step = gates * 16 * (8 + 16)
    assert count_macs(model, (ids, mask)) == per_step * (9 + 3 + 1 + 6) + 4 * 16 * 10
    assert count_macs(model, (ids[2:3], mask[2:3])) == per_step + 16 * 10


@pytest.mark.parametrize("cls,gates", [(torch.nn.LSTM, 4), (torch.nn.GRU, 3), (torch.nn.RNN, 1)])
def test_padded_recurrent_layers_count_every_position(cls, gates):
    """On a padded batch every position is computed, the fused CPU LSTM kernel included."""
    layer = cls(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    hand = 2 * 5 * 2 * gates * 16 * ((8 + 16) + (32 + 16))  # rows, steps, directions; layer 1, layer 2
    assert count_macs(layer, (torch.randn(2, 5, 8),)) == hand


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="cell"):
        create_model("rnn_tokens", cell="rnn")
    with pytest.raises(ValueError, match="pad_id"):
        create_model("rnn_tokens", pad_id=11)
