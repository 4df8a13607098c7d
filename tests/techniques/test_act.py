"""Adaptive Computation Time: the halting rule, the mean-field state, rows leaving the batch, the
ponder cost's gradient, and per-row MACs. Each test fails if ACT were a fixed number of steps."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.measure.macs import count_macs
from slimkit.techniques.dynamic.act import AdaptiveComputationTime, PonderCost, act_rnn
from slimkit.train.objectives import Batch, TaskLoss, declared_loss_terms
from slimkit.zoo import create_model
from slimkit.zoo.recurrent import TransformerCell, make_cell

torch.set_num_threads(1)


def calls_per_batch(cell: nn.Module) -> list[int]:
    """Rows of each call of ``cell``, recorded by a forward hook."""
    rows: list[int] = []
    cell.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    return rows


class Counter(nn.Module):
    """A one-unit cell adding its row's rate (input feature 0) to its state at each step."""

    hidden_size = 1

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return state + x[:, :1]


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_halting_at_once_runs_the_cell_once(kind):
    torch.manual_seed(0)
    act = AdaptiveComputationTime(make_cell(kind, 5, 8), max_steps=6, halt_bias=30.0)
    rows = calls_per_batch(act.cell)
    x = torch.randn(4, 4)
    out = act(x)
    assert rows == [4]
    zero = torch.zeros(4, 8)
    first = act.cell(torch.cat([x, torch.ones(4, 1)], 1), (zero, zero) if kind == "lstm" else zero)
    torch.testing.assert_close(out, first, rtol=0, atol=0)  # p = R = 1: the first state exactly
    assert act.last_steps.tolist() == [1] * 4 and torch.allclose(act.last_ponder, torch.full((4,), 2.0))


def test_never_halting_runs_max_steps():
    torch.manual_seed(0)
    act = AdaptiveComputationTime(nn.GRUCell(5, 8), max_steps=5, halt_bias=-30.0)
    rows = calls_per_batch(act.cell)
    act(torch.randn(3, 4))
    assert rows == [3] * 5 and act.last_steps.tolist() == [5] * 3
    assert torch.allclose(act.last_ponder, torch.full((3,), 6.0))  # N + R with R = 1 - sum(h ~ 0)


def test_rows_halt_at_their_own_step_and_leave_the_batch():
    """Rates 1, 1/2, 1/4 reach the halting unit's threshold after 1, 2 and 4 steps; each later
    call of the cell gets only the rows still pondering."""
    act = AdaptiveComputationTime(Counter(), max_steps=8)
    with torch.no_grad():
        act.halt.weight.fill_(100.0)
        act.halt.bias.fill_(-90.0)  # h = sigmoid(100 s - 90): ~1 once s reaches 1, ~0 below 0.8
    rows = calls_per_batch(act.cell)
    out = act(torch.tensor([[1.0], [0.5], [0.25]]))
    assert rows == [3, 2, 1, 1]
    assert act.last_steps.tolist() == [1, 2, 4]
    # every earlier h is ~0, so R ~ 1 and the mean field is the halting step's state (s = 1)
    torch.testing.assert_close(out, torch.ones(3, 1), rtol=0, atol=1e-4)


def hand_act(cell, halt, x, max_steps, eps, lstm):
    """Graves's equations for one row, written out step by step."""
    s = (torch.zeros(1, cell.hidden_size), torch.zeros(1, cell.hidden_size)) if lstm else torch.zeros(1, cell.hidden_size)
    total, summed = None, 0.0
    for n in range(1, max_steps + 1):
        s = cell(torch.cat([x, torch.tensor([[1.0 if n == 1 else 0.0]])], 1), s)
        h = float(torch.sigmoid(halt(s[0] if lstm else s)))
        stop = n == max_steps or summed + h >= 1 - eps
        p = 1 - summed if stop else h
        part = tuple(p * t for t in s) if lstm else p * s
        total = part if total is None else (tuple(a + b for a, b in zip(total, part)) if lstm else total + part)
        if stop:
            return total, n, n + (1 - summed)
        summed += h
    raise AssertionError("unreachable")


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_mean_field_state_equals_a_hand_computation(kind):
    torch.manual_seed(1)
    act = AdaptiveComputationTime(make_cell(kind, 4, 6), max_steps=5, epsilon=0.05, halt_bias=-1.0)
    with torch.no_grad():
        act.halt.weight.mul_(6.0)  # rows halt after different numbers of steps
    x = torch.randn(8, 3)
    with torch.no_grad():
        out = act(x)
        expected = [hand_act(act.cell, act.halt, x[i:i + 1], 5, 0.05, kind == "lstm") for i in range(8)]
    steps = [e[1] for e in expected]
    assert len(set(steps)) > 1, "the rows should halt after different numbers of steps"
    assert act.last_steps.tolist() == steps
    torch.testing.assert_close(act.last_ponder, torch.tensor([float(e[2]) for e in expected]))
    for i, (state, _, _) in enumerate(expected):
        if kind == "lstm":
            for got, want in zip(out, state):
                torch.testing.assert_close(got[i:i + 1], want, rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(out[i:i + 1], state, rtol=1e-5, atol=1e-6)


def test_sequences_ponder_on_each_input_step():
    torch.manual_seed(0)
    act = AdaptiveComputationTime(nn.GRUCell(5, 8), max_steps=4, halt_bias=30.0)
    rows = calls_per_batch(act.cell)
    act(torch.randn(2, 3, 4))
    assert rows == [2, 2, 2] and act.last_steps.tolist() == [3, 3]  # one step per input step
    assert torch.allclose(act.last_ponder, torch.full((2,), 6.0))  # (N + R) summed over time


def test_ponder_cost_gradient_reaches_the_halting_unit_and_lowers_the_steps():
    torch.manual_seed(0)
    model = act_rnn(in_features=6, hidden=16, max_steps=8, halt_bias=-2.0)
    x = torch.randn(32, 6)
    term = PonderCost(weight=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = None
    for _ in range(30):
        out = model(x)
        loss = term(Batch(model=model, inputs=(x,), targets=torch.zeros(32, dtype=torch.long), outputs=out))
        before = before if before is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        assert model.core.halt.bias.grad is not None and float(model.core.halt.bias.grad) < 0
        opt.step()
    model(x)
    assert float(model.core.last_ponder.mean()) < before - 1.0


def test_the_model_declares_its_ponder_cost_to_training():
    model = create_model("act_rnn", tau=0.01)
    task = TaskLoss(F.cross_entropy)
    terms = declared_loss_terms(model, [task])
    assert [(t.name, t.weight) for t in terms] == [("ponder", 0.01)]
    assert declared_loss_terms(model, [task, PonderCost(0.5)]) == []  # a given term of that name wins
    assert declared_loss_terms(create_model("act_rnn", tau=0.0), [task]) == []
    assert declared_loss_terms(create_model("rnn_steps"), [task]) == []


def test_per_row_macs_grow_with_the_rows_steps():
    torch.manual_seed(0)
    model = act_rnn(in_features=6, hidden=16, max_steps=5).eval()
    x = torch.randn(1, 6)
    per_step = 16 * (7 + 16) + 16  # RNNCell [16, 7+16] and the halting unit [1, 16]
    with torch.no_grad():
        model.core.halt.bias.fill_(30.0)
        once = count_macs(model, (x,))
        model.core.halt.bias.fill_(-30.0)
        always = count_macs(model, (x,))
    assert once == per_step + 16 * 2  # one step, then the classifier
    assert always - once == 4 * per_step
    assert model.input_dependent_cost is True and create_model("rnn_steps").input_dependent_cost is False


def test_fixed_steps_control_has_the_same_parameters_but_the_halting_unit():
    act, fixed = create_model("act_rnn", hidden=32), create_model("rnn_steps", hidden=32, steps=3)
    count = sum(p.numel() for p in act.parameters()) - sum(p.numel() for p in fixed.parameters())
    assert count == 32 + 1


@pytest.mark.parametrize("field,value", [("max_steps", 0), ("epsilon", 1.0), ("tau", -1.0)])
def test_bad_settings_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        AdaptiveComputationTime(nn.GRUCell(3, 4), **{field: value})


class TokenCounter(nn.Module):
    """A one-unit cell over token states adding each token's rate (input feature 0) at each step."""

    hidden_size = 1

    def initial_state(self, rows, like):
        return like.new_zeros(rows, like.shape[1], 1)

    def forward(self, x, state):
        return state + x[..., :1]


def test_token_states_halt_per_row_and_rows_leave_the_batch():
    """Rows of 3 tokens whose mean rate is 1, 1/2 and 1/4 halt after 1, 2 and 4 steps; later calls
    of the cell get only the rows still pondering, whole (every token of the row)."""
    act = AdaptiveComputationTime(TokenCounter(), max_steps=8, tokens=True)
    with torch.no_grad():
        act.halt.weight.fill_(100.0)
        act.halt.bias.fill_(-90.0)
    shapes: list[tuple[int, ...]] = []
    act.cell.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    rates = torch.tensor([[1.5, 0.5, 1.0], [0.5, 0.5, 0.5], [0.25, 0.0, 0.5]]).unsqueeze(-1)
    out = act(rates)
    assert [s[:2] for s in shapes] == [(3, 3), (2, 3), (1, 3), (1, 3)]
    assert act.last_steps.tolist() == [1, 2, 4]
    assert out.shape == (3, 3, 1)
    # the halting step's state (every earlier h ~ 0): each token's rate times the row's steps
    torch.testing.assert_close(out, rates * torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="rows, tokens, features"):
        act(torch.ones(2, 3))


def test_act_on_a_transformer_block_halting_at_once_is_one_layer_pass():
    torch.manual_seed(0)
    cell = TransformerCell(5, 16, heads=2).eval()
    act = AdaptiveComputationTime(cell, max_steps=6, halt_bias=30.0, tokens=True).eval()
    x = torch.randn(3, 7, 4)
    with torch.no_grad():
        out = act(x)
        first = cell(torch.cat([x, torch.ones(3, 7, 1)], -1), torch.zeros(3, 7, 16))
    torch.testing.assert_close(out, first, rtol=0, atol=0)
    assert act.last_steps.tolist() == [1, 1, 1]


def test_act_transformer_macs_follow_each_rows_steps_and_the_control_matches_it():
    torch.manual_seed(0)
    model = create_model("act_transformer", hidden=32, heads=2, max_steps=6).eval()
    x = torch.randint(-1, 2, (1, 8)).float()
    macs = {}
    for bias in (30.0, -30.0):  # halts at once / never halts
        with torch.no_grad():
            model.core.halt.bias.fill_(bias)
            model.core.halt.weight.zero_()
        macs[bias] = count_macs(model, (x,))
        assert model.core.last_steps.tolist() == [1 if bias > 0 else 6]
    control = {k: create_model("transformer_steps", hidden=32, heads=2, steps=k).eval() for k in (1, 6)}
    for bias, k in ((30.0, 1), (-30.0, 6)):  # the same work as the control at that step count, +- the halting unit
        assert abs(macs[bias] - count_macs(control[k], (x,))) <= k * 33
    assert macs[-30.0] > 5 * macs[30.0]
    n_act = sum(p.numel() for p in model.parameters())
    assert n_act - sum(p.numel() for p in control[1].parameters()) == 33  # the halting unit: Linear(32, 1)
