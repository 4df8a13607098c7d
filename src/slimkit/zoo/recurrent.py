"""Recurrent models for the sequence tasks (``data/sequences.py``).

- ``rnn_steps``: a recurrent cell that runs a fixed number of steps on each input step, then a
  Linear classifier on its hidden state: the fixed-computation control of Adaptive Computation
  Time (``techniques/dynamic/act.py`` registers ``act_rnn``, the same cell and classifier with a
  halting unit deciding the steps per row). The cell reads the input and a first-step flag
  (Graves 2016: 1 on the first step of each input, 0 after), so it can tell a new input from
  a repeated one.
- ``rnn_tokens``: a dynamic RNN over variable-length token sequences: embedding, GRU or LSTM over
  a packed sequence (``pack_padded_sequence``), Linear on each row's last real step. Each row is
  computed for its real length only, so padding costs nothing (MACs count it that way too).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from slimkit.core.registry import MODELS

CellKind = Literal["rnn", "gru", "lstm"]
State = torch.Tensor | tuple[torch.Tensor, ...]


def make_cell(kind: CellKind, input_size: int, hidden: int) -> nn.Module:
    """A torch recurrent cell: tanh RNN (Graves's parity network), GRU or LSTM."""
    cells = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}
    if kind not in cells:
        raise ValueError(f"cell must be one of {sorted(cells)}, got {kind!r}")
    return cells[kind](input_size, hidden)


def cell_hidden_size(cell: nn.Module) -> int:
    """The width of the hidden state a cell returns (its ``hidden_size`` attribute)."""
    size = getattr(cell, "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError(f"{type(cell).__name__} has no integer hidden_size: give the hidden size explicitly")
    return size


def initial_state(cell: nn.Module, rows: int, hidden: int, like: torch.Tensor) -> State:
    """Zero state for ``rows`` rows: a pair (h, c) for an LSTMCell, the cell's own
    ``initial_state(rows, like)`` if it defines one, else one ``[rows, hidden]`` tensor."""
    if isinstance(cell, nn.LSTMCell):
        return (like.new_zeros(rows, hidden), like.new_zeros(rows, hidden))
    own = getattr(cell, "initial_state", None)
    if callable(own):
        return own(rows, like)
    return like.new_zeros(rows, hidden)


def hidden_of(state: State) -> torch.Tensor:
    """The hidden vector of a state (an LSTM's h of its (h, c) pair)."""
    return state[0] if isinstance(state, tuple) else state


def with_step_flag(x: torch.Tensor, first: bool) -> torch.Tensor:
    """``x`` with one more feature (the last dimension): 1 on an input's first step, 0 on the
    repeats (Graves 2016)."""
    return torch.cat([x, x.new_full((*x.shape[:-1], 1), 1.0 if first else 0.0)], dim=-1)


def input_steps(x: torch.Tensor) -> list[torch.Tensor]:
    """``[rows, features]`` is one input step, ``[rows, time, features]`` a sequence of them."""
    if x.dim() == 2:
        return [x]
    if x.dim() == 3:
        return list(x.unbind(1))
    raise ValueError(f"expected [rows, features] or [rows, time, features], got shape {tuple(x.shape)}")


class FixedSteps(nn.Module):
    """A cell run ``steps`` times on each input step (input plus the first-step flag): the
    fixed-computation RNN that ACT is compared with. Returns the final state. ``tokens=True``:
    the cell works on token states and ``[rows, tokens, features]`` is one input step."""

    def __init__(self, cell: nn.Module, steps: int, hidden_size: int | None = None, tokens: bool = False) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.cell, self.steps, self.tokens = cell, steps, tokens
        self.hidden_size = hidden_size or cell_hidden_size(cell)

    def forward(self, x: torch.Tensor, state: State | None = None) -> State:
        steps = [x] if self.tokens else input_steps(x)
        if state is None:
            state = initial_state(self.cell, x.shape[0], self.hidden_size, x)
        for xt in steps:
            for n in range(self.steps):
                state = self.cell(with_step_flag(xt, n == 0), state)
        return state


class RecurrentClassifier(nn.Module):
    """A recurrent core (``FixedSteps``, ``AdaptiveComputationTime`` or any module mapping inputs
    to a final state) and a Linear classifier on the final hidden vector. The core's
    ``input_dependent_cost`` and ``loss_terms()`` (ACT's ponder cost) are the model's."""

    def __init__(self, core: nn.Module, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.core = core
        self.head = nn.Linear(hidden, num_classes)

    @property
    def input_dependent_cost(self) -> bool:
        return getattr(self.core, "input_dependent_cost", False) is True

    def loss_terms(self) -> list:
        own = getattr(self.core, "loss_terms", None)
        return list(own()) if callable(own) else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(hidden_of(self.core(x)))


class TransformerCell(nn.Module):
    """A pre-norm transformer encoder layer as a recurrent cell over token states (the Universal
    Transformer's shared layer, Dehghani et al. 2019): ``state' = layer(state + Linear(input))``,
    ``input`` ``[rows, tokens, input_size]`` (the tokens and ACT's first-step flag), ``state``
    ``[rows, tokens, hidden_size]``, zero at the start."""

    def __init__(self, input_size: int, hidden_size: int, heads: int = 4, ff: int | None = None) -> None:
        super().__init__()
        if hidden_size % heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of heads {heads}")
        self.hidden_size = hidden_size
        self.inp = nn.Linear(input_size, hidden_size)
        self.layer = nn.TransformerEncoderLayer(hidden_size, heads, ff or 2 * hidden_size, dropout=0.0,
                                                batch_first=True, norm_first=True)

    def initial_state(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(rows, like.shape[1], self.hidden_size)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.layer(state + self.inp(x))


class TokenClassifier(RecurrentClassifier):
    """A vector's entries as tokens (each entry's value and its one-hot position) through a core
    over token states (``FixedSteps`` or ACT with a ``TransformerCell``), then the token mean and
    a Linear. The core's ``input_dependent_cost`` and ``loss_terms()`` are the model's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.eye(x.shape[1], dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1)
        tokens = torch.cat([x.unsqueeze(-1), positions], dim=-1)
        return self.head(hidden_of(self.core(tokens)).mean(1))


@MODELS.register("transformer_steps")
def transformer_steps(num_classes: int = 2, in_features: int = 8, hidden: int = 64, heads: int = 4,
                      steps: int = 1) -> nn.Module:
    """A ``TransformerCell`` run a fixed number of ``steps`` over a vector's entries as tokens:
    ``act_transformer``'s fixed-computation control (same parameters but the halting unit)."""
    cell = TransformerCell(in_features + 2, hidden, heads)
    return TokenClassifier(FixedSteps(cell, steps, tokens=True), hidden, num_classes)


@MODELS.register("rnn_steps")
def rnn_steps(num_classes: int = 2, in_features: int = 8, hidden: int = 128, cell: CellKind = "rnn",
              steps: int = 1) -> nn.Module:
    """A recurrent cell run a fixed number of ``steps`` per input (plus a first-step flag input),
    then a Linear classifier: ACT's fixed-computation control (``act_rnn`` adds the halting unit)."""
    core = FixedSteps(make_cell(cell, in_features + 1, hidden), steps)
    return RecurrentClassifier(core, hidden, num_classes)


class DynamicRNN(nn.Module):
    """Embedding, a GRU or LSTM over the packed sequence, Linear on each row's last real step.

    Inputs: token ids ``[rows, time]``, right-padded with ``pad_id``, and optionally the mask
    (1 = real token) or the lengths ``[rows]``; without either, a row's length is its count of
    non-padding ids. Rows are packed (``pack_padded_sequence``, unsorted), so the RNN computes
    each row's real steps only: a row's cost is its length, not the batch's. A row of padding
    only is run for one step.
    """

    input_dependent_cost = True  # a row's MACs are its length's

    def __init__(self, vocab: int, num_classes: int, embed_dim: int = 32, hidden: int = 64,
                 cell: Literal["gru", "lstm"] = "gru", layers: int = 1, pad_id: int = 0) -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        if not 0 <= pad_id < vocab:
            raise ValueError(f"pad_id {pad_id} is not a token id of a vocabulary of {vocab}")
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab, embed_dim, padding_idx=pad_id)
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def lengths(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each row's real length (at least 1), from the mask if given, else the non-padding ids."""
        real = mask if mask is not None else ids != self.pad_id
        return real.sum(1).clamp_min(1)

    def last_states(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                    lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The top layer's hidden state at each row's last real step ``[rows, hidden]``, packed."""
        lengths = self.lengths(ids, mask) if lengths is None else lengths
        packed = pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, final = self.rnn(packed)
        return (final[0] if isinstance(final, tuple) else final)[-1]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.last_states(ids, mask))


@MODELS.register("rnn_tokens")
def rnn_tokens(num_classes: int = 10, vocab: int = 11, embed_dim: int = 32, hidden: int = 64,
               cell: Literal["gru", "lstm"] = "gru", layers: int = 1, pad_id: int = 0) -> nn.Module:
    """A dynamic RNN classifier over variable-length token sequences (packed: padding costs nothing)."""
    return DynamicRNN(vocab, num_classes, embed_dim, hidden, cell, layers, pad_id)
