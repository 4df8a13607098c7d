"""Adaptive Computation Time (Graves 2016, arXiv:1603.08983): a recurrent cell that decides per
row how many steps to think about each input.

``AdaptiveComputationTime`` wraps any recurrent cell (``nn.RNNCell``, ``nn.GRUCell``,
``nn.LSTMCell``, or a module ``cell(input, state) -> state`` with ``hidden_size``). For each
input step it runs the cell repeatedly on the input plus a first-step flag; after step n a
halting unit ``h^n = sigmoid(Linear(hidden^n))`` (bias initialised positive, Graves: so the
first steps do not halt at once) reads the hidden state. A row halts at the first step N whose
summed halting probabilities reach ``1 - epsilon``, or at ``max_steps``. Its remainder is
``R = 1 - sum_{n<N} h^n``; the state handed on is the mean field ``sum_n p^n s^n`` with
``p^n = h^n`` before N and ``p^N = R`` (for an LSTM both h and c). The ponder cost of a row is
``N + R`` summed over its input steps; ``PonderCost`` (``tau`` x its batch mean) is the loss term
that trades accuracy for steps, its gradient flowing through R.

Rows that halt leave the batch: later steps run the cell on the rows still pondering only, so a
row's MACs grow with its own steps (at batch 1, a row that halts at step 1 runs the cell once).
After every forward pass ``last_steps`` (N per row, cell evaluations summed over input steps)
and ``last_ponder`` (N + R per row) tell what each row did.

With ``tokens=True`` the cell is a transformer block over token states ``[rows, tokens,
features]`` (``TransformerCell``: the Universal Transformer's shared layer, Dehghani et al. 2019)
and the input is one step of tokens; the halting unit reads the token mean, so a whole row halts
at once. Departure from the Universal Transformer, which halts per position: on a CPU the time
saved comes from rows leaving the batch, and a halted position still takes part in the others'
attention, so per-position halting saves little there. ``act_transformer`` is that model.

``act_rnn`` is the zoo model built on it: ``rnn_steps``'s cell and classifier with the halting
unit instead of a fixed step count (registered here, beside its implementation: the zoo sits below
the techniques in the package layers and cannot import this module).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from slimkit.core.registry import MODELS
from slimkit.train.objectives import Batch
from slimkit.zoo.recurrent import (CellKind, RecurrentClassifier, State, TokenClassifier, TransformerCell,
                                   cell_hidden_size, hidden_of, initial_state, input_steps, make_cell, with_step_flag)


class AdaptiveComputationTime(nn.Module):
    """A recurrent cell that ponders each input for a learned, per-row number of steps (see the
    module docstring). ``forward(x, state=None) -> state``: ``x`` is ``[rows, features]`` (one
    input step) or ``[rows, time, features]`` (a sequence, every row the same length); the cell
    reads ``features + 1`` inputs (the first-step flag) when ``step_flag`` is on."""

    input_dependent_cost = True  # a row's MACs are its own steps'

    def __init__(self, cell: nn.Module, hidden_size: int | None = None, *, max_steps: int = 10,
                 epsilon: float = 0.01, halt_bias: float = 1.0, tau: float = 1e-3, step_flag: bool = True,
                 tokens: bool = False) -> None:
        super().__init__()
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if not 0.0 < epsilon < 1.0:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.cell = cell
        self.hidden_size = hidden_size or cell_hidden_size(cell)
        self.max_steps, self.epsilon, self.tau, self.step_flag = max_steps, epsilon, tau, step_flag
        self.tokens = tokens
        self.halt = nn.Linear(self.hidden_size, 1)
        nn.init.constant_(self.halt.bias, halt_bias)
        self.ponder_cost: torch.Tensor | None = None  # N + R per row of the last pass, with its gradient
        self.last_steps: torch.Tensor | None = None
        self.last_ponder: torch.Tensor | None = None

    def loss_terms(self) -> list["PonderCost"]:
        """The term ACT trains with: ``tau`` x the mean ponder cost (added by ``Context.train``)."""
        return [PonderCost(weight=self.tau)] if self.tau > 0 else []

    def forward(self, x: torch.Tensor, state: State | None = None) -> State:
        if state is None:
            state = initial_state(self.cell, x.shape[0], self.hidden_size, x)
        ponder = x.new_zeros(x.shape[0])
        steps = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if self.tokens and x.dim() != 3:
            raise ValueError(f"a token-state ACT takes [rows, tokens, features], got shape {tuple(x.shape)}")
        for xt in [x] if self.tokens else input_steps(x):
            state, n, remainder = self._ponder(xt, state)
            ponder = ponder + n + remainder
            steps = steps + n
        self.ponder_cost = ponder
        self.last_steps, self.last_ponder = steps, ponder.detach()
        return state

    def _ponder(self, x: torch.Tensor, state: State) -> tuple[State, torch.Tensor, torch.Tensor]:
        """One input step: (mean-field state, steps N, remainder R) per row. Only rows still
        pondering run the cell; halted rows' weighted states are already in the sum."""
        rows = x.shape[0]
        active = torch.arange(rows, device=x.device)
        total = _zeros_like_state(state)
        steps = torch.zeros(rows, dtype=torch.long, device=x.device)
        remainder = x.new_zeros(rows)
        summed = x.new_zeros(rows)  # sum of h^1..h^(n-1) of the active rows
        for n in range(1, self.max_steps + 1):
            inp = with_step_flag(x, n == 1) if self.step_flag else x
            state = self.cell(inp, state)
            summary = hidden_of(state)
            if self.tokens:  # the halting unit reads the token mean: one decision per row
                summary = summary.mean(1)
            h = torch.sigmoid(self.halt(summary)).squeeze(-1)
            halting = torch.ones_like(h, dtype=torch.bool) if n == self.max_steps \
                else summed + h >= 1.0 - self.epsilon
            p = torch.where(halting, 1.0 - summed, h)
            total = _map_state(lambda acc, s: acc.index_add(0, active, p.view(-1, *[1] * (s.dim() - 1)) * s),
                               total, state)
            done = active[halting]
            steps[done] = n
            remainder = remainder.index_add(0, done, (1.0 - summed)[halting])
            if bool(halting.all()):
                break
            keep = ~halting
            active, summed, x = active[keep], (summed + h)[keep], x[keep]
            state = _map_state(lambda s: s[keep], state)
        return total, steps, remainder


def _map_state(fn, *states: State) -> State:
    """``fn`` on a state's tensors (the pair of an LSTM, or one tensor)."""
    if isinstance(states[0], tuple):
        return tuple(fn(*parts) for parts in zip(*states))
    return fn(*states)


def _zeros_like_state(state: State) -> State:
    return _map_state(torch.zeros_like, state)


def act_modules(model: nn.Module) -> list[AdaptiveComputationTime]:
    """Every ACT module inside ``model`` (the model itself included)."""
    return [m for m in model.modules() if isinstance(m, AdaptiveComputationTime)]


@dataclass
class PonderCost:
    """Graves's ponder cost as a loss term: ``weight`` (tau) x the batch mean of each row's N + R,
    summed over the model's ACT modules, from their last forward pass (the one of this batch).
    Its gradient reaches the halting units through the remainders R (N is a count)."""

    weight: float = 1e-3
    name: str = "ponder"

    def __call__(self, batch: Batch) -> torch.Tensor:
        modules = act_modules(batch.model)
        if not modules:
            raise ValueError("ponder cost: the model has no AdaptiveComputationTime module")
        costs = [m.ponder_cost for m in modules]
        if any(c is None for c in costs):
            raise ValueError("ponder cost: an ACT module has not run in this batch's forward pass")
        return sum(c.mean() for c in costs)


@MODELS.register("act_rnn")
def act_rnn(num_classes: int = 2, in_features: int = 8, hidden: int = 128, cell: CellKind = "rnn",
            max_steps: int = 10, epsilon: float = 0.01, halt_bias: float = 1.0, tau: float = 3e-3) -> nn.Module:
    """Adaptive Computation Time on a recurrent cell (Graves 2016), then a Linear classifier:
    ``rnn_steps`` with a halting unit choosing each row's steps, trained with ``tau`` x ponder cost.
    ``tau`` 3e-3 is the parity task's measured choice: its steps grow with the count of nonzero
    entries (2.0 to 2.6) at 99.98% accuracy; 1e-3 ponders about 3 steps whatever the row, 5e-3 and
    more trade accuracy away (benchmarks/results/dynamic_act.md, docs/dynamic.md)."""
    core = AdaptiveComputationTime(make_cell(cell, in_features + 1, hidden), max_steps=max_steps, epsilon=epsilon,
                                   halt_bias=halt_bias, tau=tau)
    return RecurrentClassifier(core, hidden, num_classes)


@MODELS.register("act_transformer")
def act_transformer(num_classes: int = 2, in_features: int = 8, hidden: int = 64, heads: int = 4,
                    max_steps: int = 8, epsilon: float = 0.01, halt_bias: float = 1.0, tau: float = 3e-3) -> nn.Module:
    """Adaptive Computation Time on a transformer block (a Universal Transformer whose rows halt
    as a whole): each of the ``in_features`` entries of a vector is a token (its value and a
    one-hot position), one shared ``TransformerCell`` runs as many steps as the row's halting
    unit asks, then the token mean and a Linear classify. ``transformer_steps`` is its
    fixed-step control."""
    core = AdaptiveComputationTime(TransformerCell(in_features + 2, hidden, heads), max_steps=max_steps,
                                   epsilon=epsilon, halt_bias=halt_bias, tau=tau, tokens=True)
    return TokenClassifier(core, hidden, num_classes)
