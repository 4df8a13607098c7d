"""slimkit's training-time techniques in a user's own loop.

The ``prune`` and ``qat`` steps and distillation train through slimkit's loop with callbacks and
loss terms. A user with their own loop gets the same objects, driven by a few calls:

    hooks = sk.prune_hooks(model, optimizer, total_steps=epochs * len(loader), sparsity=0.8,
                           schedule="cubic")
    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        hooks.after_backward()      # pruned weights get no gradient
        optimizer.step()
        hooks.after_step()          # the schedule raises sparsity; masks re-applied
    model = hooks.finish()          # final masks, stored sparse, history recorded

    qmodel = sk.prepare_qat(model, loader)   # fake-quantized, trainable: train it as usual
    q = sk.convert_qat(qmodel)               # integer layers, as the qat step converts

    kd = sk.distill_loss(student, teacher, example_inputs, temperature=4.0)
    loss = F.cross_entropy(out, y) + kd(x, out)

Each builds what the recipe step builds (``start_pruning``/``finish_pruning``, ``start_qat``/
``finish_qat``, ``distillation_terms``), so there is one implementation.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn

from slimkit.api.verbs import _CONTEXT_ARGS, _HISTORY, _history, user_context
from slimkit.core.errors import ConfigError
from slimkit.train.callbacks import Callback, FitState


class LoopHooks:
    """Drives slimkit ``Callback``s from a hand-written loop: ``after_backward()`` between
    ``loss.backward()`` and ``optimizer.step()``, ``after_step()`` after it, ``end_epoch()`` at
    each epoch's end (optional), ``finish()`` once, which returns the finished model.

    ``total_steps`` is the number of optimizer steps the loop will take (schedules are spread
    over it); a trainer adapter may leave it None and set it (``set_total_steps``) when the
    trainer knows. The fit starts at the first call."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, callbacks: Sequence[Callback], *,
                 total_steps: int | None, seed: int = 0, finish: Callable[[], nn.Module] | None = None) -> None:
        self.state = FitState(model=model, optimizer=optimizer, total_steps=0, seed=seed)
        self.callbacks = list(callbacks)
        self._finish = finish
        self._started = self._finished = False
        self.result: nn.Module | None = None
        if total_steps is not None:
            self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        if self._started:
            raise RuntimeError("total_steps is set before training starts")
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ConfigError(f"total_steps must be the number of optimizer steps the loop takes (>= 1), "
                              f"got {total_steps!r}")
        self.state.total_steps = total_steps

    def _start(self) -> None:
        if self._finished:
            raise RuntimeError("these hooks have finished; make new ones for another training run")
        if not self.state.total_steps:
            raise ConfigError("total_steps is not set: pass it to the hooks, or let a trainer callback set it")
        if not self._started:
            self._started = True
            for cb in self.callbacks:
                cb.on_fit_start(self.state)

    def after_backward(self) -> None:
        """Gradients are complete, before clipping and ``optimizer.step()``."""
        self._start()
        for cb in self.callbacks:
            cb.after_backward(self.state)

    def after_step(self) -> None:
        """After ``optimizer.step()``."""
        self._start()
        for cb in self.callbacks:
            cb.on_step_end(self.state)
        self.state.step += 1
        self.state.batch += 1

    def end_epoch(self) -> None:
        self._start()
        for cb in self.callbacks:
            cb.on_epoch_end(self.state)
        self.state.epoch += 1

    def finish(self) -> nn.Module:
        """End the fit (final masks, etc.) and return the finished model (also ``self.result``)."""
        self._start()
        for cb in self.callbacks:
            cb.on_fit_end(self.state)
        self._finished = True
        self.result = self._finish() if self._finish is not None else self.state.model
        return self.result


def prune_hooks(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, total_steps: int | None = None,
                seed: int = 0, **options: Any) -> LoopHooks:
    """Pruning held through a user's loop, with the ``prune`` step's fields (``sparsity``,
    ``schedule``, ``criterion``, ``pattern``...; ``finetune`` is the user's loop, so not taken).
    Changes ``model`` in place while it trains; ``finish()`` returns it stored sparse. Under a
    trainer (``slimkit.api.integrations``), ``optimizer`` and ``total_steps`` come from it."""
    from slimkit.core.config import parse_config
    from slimkit.core.registry import STEPS
    from slimkit.techniques.pruning.step import finish_pruning, start_pruning

    if "finetune" in options:
        raise ConfigError("slimkit.prune_hooks: 'finetune' is the step's own training; your loop trains here")
    entry = STEPS.entry("prune")
    # the user's loop is the fine-tuning (the config's validator wants one for a schedule that runs
    # during training); its epochs are never read here
    cfg = parse_config(entry.config, {**options, "finetune": {"epochs": 1}}, "slimkit.prune_hooks")
    weights, callback, info = start_pruning(model, cfg, seed)

    def finish() -> nn.Module:
        result = finish_pruning(model, cfg, weights, {**info, "train": "user loop"})
        return _recorded(model, result, "prune")

    return LoopHooks(model, optimizer, [callback], total_steps=total_steps, seed=seed, finish=finish)


def prepare_qat(model: nn.Module, data: Iterable[Any], **options: Any) -> nn.Module:
    """A fake-quantized, trainable copy of ``model`` (LSQ steps calibrated on ``data``), with the
    ``qat`` step's fields (``weight_bits``, ``activation_bits``, ``init``, ``skip``...). Train it
    in your loop (its step sizes are parameters too: give the optimizer ``parameters()``), then
    ``convert_qat`` it."""
    import copy

    from slimkit.core.config import parse_config
    from slimkit.core.registry import STEPS
    from slimkit.techniques.quantization.step import start_qat

    if "finetune" in options:
        raise ConfigError("slimkit.prepare_qat: 'finetune' is the step's own training; your loop trains here")
    context = user_context(model, data, **{k: options.pop(k) for k in list(options) if k in _CONTEXT_ARGS})
    cfg = parse_config(STEPS.entry("qat").config, options, "slimkit.prepare_qat")
    prepared, started = start_qat(copy.deepcopy(model).to(context.device), cfg, context)
    prepared._slimkit_qat = (cfg, started, _history(model))
    return prepared


def convert_qat(model: nn.Module) -> nn.Module:
    """The trained ``prepare_qat`` model as integer QDQ layers (what the ``qat`` step returns)."""
    from slimkit.techniques.quantization.step import finish_qat

    record = getattr(model, "_slimkit_qat", None)
    if record is None:
        raise ConfigError("slimkit.convert_qat: this model did not come from slimkit.prepare_qat")
    cfg, started, before = record
    del model._slimkit_qat
    result = finish_qat(model, cfg, started, train="user loop")
    setattr(model, _HISTORY, before)
    return _recorded(model, result, "qat")


def _recorded(model: nn.Module, result: Any, technique: str) -> nn.Module:
    from slimkit.core.registry import STEPS

    structure = STEPS.get(technique).record(technique, result.structure)
    setattr(result.model, _HISTORY, [*_history(model), {"technique": technique, "structure": structure,
                                                         "info": result.info}])
    return result.model


class DistillLoss(nn.Module):
    """``kd(inputs, student_outputs)``: the weighted sum of the distillation terms (the teacher
    runs on ``inputs`` without gradients). Feature adapters, when the terms have any, are in
    ``parameters()``: add them to the optimizer."""

    def __init__(self, student: nn.Module, terms: list) -> None:
        super().__init__()
        self.student, self.terms = [student], terms  # a list: the student is not a submodule
        self.adapters = nn.ParameterList([p for t in terms for p in getattr(t, "trainable_parameters", lambda: [])()])

    def forward(self, inputs: Any, outputs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        from slimkit.core.outputs import primary_output
        from slimkit.train.objectives import Batch

        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        batch = Batch(model=self.student[0], inputs=inputs, outputs=primary_output(outputs),
                      targets=targets if targets is not None else torch.empty(0))
        return sum(term.weight * term(batch) for term in self.terms)

    def remove(self) -> None:
        """Detach the terms' forward hooks from the student and teacher (feature terms)."""
        for term in self.terms:
            getattr(term, "remove", lambda: None)()


def distill_loss(student: nn.Module, teacher: nn.Module, example_inputs: Any, **losses: Any) -> DistillLoss:
    """Distillation terms for a user's loop, with the ``distill`` step's ``losses`` fields as
    keywords (``logits={"temperature": 4}``, ``features={"pairs": {...}}``...; default: logits).
    ``example_inputs`` (a couple of rows) size the feature adapters."""
    from slimkit.core.config import parse_config
    from slimkit.techniques.distillation import losses as L
    from slimkit.techniques.distillation.step import Losses, distillation_terms

    spec = parse_config(Losses, losses or {"logits": {}}, "slimkit.distill_loss")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    return DistillLoss(student, distillation_terms(student, L.Teacher(teacher.eval()), spec, inputs, None))
