"""The synthetic sequence tasks (``data/sequences.py``) that exercise dynamic computation:
``parity`` for Adaptive Computation Time, ``addition`` for a dynamic RNN over packed sequences.
Baseline budgets train in one to three minutes on one CPU thread."""

from __future__ import annotations

from slimkit.core.registry import TASKS
from slimkit.tasks.base import Task, TaskConfig, classification_task
from slimkit.train.config import TrainConfig


@TASKS.register("parity", config=TaskConfig)
def parity(cfg: TaskConfig) -> Task:
    """Graves's parity: 8 entries, 1..8 of them +-1, label = parity of the +1 count; an ACT tanh RNN."""
    from slimkit.data.sequences import load_parity_splits

    return classification_task(cfg, default_model="act_rnn", num_classes=2, load_data=load_parity_splits,
                               baseline=TrainConfig(epochs=20, batch_size=128, lr=3e-3, grad_clip=1.0),
                               description=parity.__doc__)


@TASKS.register("addition", config=TaskConfig)
def addition(cfg: TaskConfig) -> Task:
    """1..10 decimal digits, one token per step, label = last digit of their sum; a packed GRU."""
    from slimkit.data.sequences import load_addition_splits

    return classification_task(cfg, default_model="rnn_tokens", num_classes=10, load_data=load_addition_splits,
                               baseline=TrainConfig(epochs=20, batch_size=64, lr=3e-3, grad_clip=1.0),
                               description=addition.__doc__)
