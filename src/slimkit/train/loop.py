"""The one training loop. Every step that trains calls ``fit``; techniques add loss terms and
callbacks instead of writing loops of their own."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from slimkit.core.errors import SlimkitError
from slimkit.core.outputs import primary_output
from slimkit.data.base import DataSplits
from slimkit.train.callbacks import Callback, FitState
from slimkit.train.config import TrainConfig
from slimkit.train.objectives import Batch, LossTerm
from slimkit.train.progress import progress_bar

Validate = Callable[[nn.Module], float]


@dataclass
class FitResult:
    epochs: int
    steps: int
    best_epoch: int | None
    best_val: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    precision: str = "fp32"
    memory: dict[str, int] | None = None  # the first training step's, measured (``training_step_memory``)
    skipped_steps: int = 0  # optimizer steps skipped for non-finite gradients (fp16 loss scaling)
    checkpointing: dict[str, Any] | None = None  # the plan, if checkpointing was on
    world_size: int = 1  # processes that trained data-parallel (torchrun)

    def summary(self) -> dict[str, Any]:
        """The run in brief, with the validation quality of every epoch (empty without validation),
        seconds per epoch (training only), the precision, and the first step's measured memory."""
        last = self.history[-1] if self.history else {}
        return {"epochs": self.epochs, "steps": self.steps, "best_epoch": self.best_epoch,
                "best_val_quality": self.best_val, "final_train_loss": last.get("loss"),
                "val_history": [r["val_quality"] for r in self.history if "val_quality" in r],
                "epoch_seconds": [r["seconds"] for r in self.history if "seconds" in r],
                "precision": self.precision, "skipped_steps": self.skipped_steps, "world_size": self.world_size,
                **({"step_memory": self.memory} if self.memory else {}),
                **({"checkpointing": self.checkpointing} if self.checkpointing else {})}


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise SlimkitError("nothing to train: the model has no parameter with requires_grad=True")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "constant" or total <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


def fit(
    model: nn.Module,
    data: DataSplits,
    cfg: TrainConfig,
    *,
    loss_terms: Sequence[LossTerm],
    validate: Validate | None = None,
    callbacks: Sequence[Callback] = (),
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    description: str = "train",
) -> FitResult:
    """Train ``model`` in place on ``data.train`` with the sum of ``loss_terms``.

    Deterministic for a given ``seed`` (shuffling, batch transforms and initialisation of
    anything random in the terms). The optimizer steps once every ``cfg.accumulate`` batches
    (and at the end of each epoch), on their summed gradients; the schedule counts optimizer
    steps. With ``cfg.keep_best`` and a ``validate`` function, the weights of the epoch with the
    best validation quality are restored at the end. ``cfg.precision`` adds ``MixedPrecision``
    and ``cfg.checkpointing`` adds ``Checkpointing`` to the callbacks; the first training step's
    memory is measured (``slimkit.measure.memory.training_step_memory``'s accounting).
    """
    from slimkit.measure.memory import StepMemory
    from slimkit.train import distributed
    from slimkit.train.checkpointing import Checkpointing
    from slimkit.train.precision import MixedPrecision

    torch.manual_seed(seed)
    device = torch.device(device)
    mixed = MixedPrecision(cfg.precision, device) if cfg.precision != "fp32" else None
    planner = Checkpointing(cfg.checkpointing) if cfg.checkpointing is not None else None
    augment = None
    if cfg.augment is not None and not cfg.augment.is_empty():
        from slimkit.train.augmentation import Augmentation

        augment = Augmentation(cfg.augment)
    # augmentation first: the planner profiles, and every other callback sees, the batch the model trains on
    callbacks = [*(c for c in (augment, mixed, planner) if c is not None), *callbacks]
    model.to(device)
    loader = data.train.loader(cfg.batch_size, shuffle=True, seed=seed)
    # terms with learned parts of their own (distillation adapters) train with the model
    extra = [p for term in loss_terms for p in getattr(term, "trainable_parameters", lambda: [])()]
    for p in extra:
        p.data = p.data.to(device)
    optimizer = make_optimizer([*model.parameters(), *extra], cfg)
    parallel = distributed.DataParallel.wrap(model, device) if distributed.active() else None
    total = cfg.epochs * math.ceil(len(loader) / cfg.accumulate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total))
    state = FitState(model=model, optimizer=optimizer, total_steps=total, seed=seed,
                     generator=torch.Generator().manual_seed(seed))
    result = FitResult(epochs=cfg.epochs, steps=0, best_epoch=None, best_val=None, precision=cfg.precision)
    memory = StepMemory(device)
    best_state = None
    for cb in callbacks:
        cb.on_fit_start(state)
    with progress_bar(progress, description, cfg.epochs * len(loader)) as advance:
        for epoch in range(cfg.epochs):
            state.epoch = epoch
            model.train()
            running, seen = 0.0, 0
            started = time.perf_counter()
            for i, (inputs, targets, extras) in enumerate(loader):
                group = _group(i, len(loader), cfg.accumulate)
                if i % cfg.accumulate == 0:
                    optimizer.zero_grad(set_to_none=True)
                inputs = tuple(t.to(device) for t in inputs)
                extras = {k: t.to(device) for k, t in extras.items()}
                loss, rows = _train_batch(state, inputs, targets.to(device), extras, loss_terms, callbacks, group,
                                          memory if state.batch == 0 else None, parallel)
                state.batch += 1
                if (i + 1) % cfg.accumulate == 0 or i + 1 == len(loader):
                    _optimizer_step(state, callbacks, cfg)
                    scheduler.step()
                    state.step += 1
                running += float(loss) * rows
                seen += rows
                advance(f"epoch {epoch + 1}/{cfg.epochs} loss {running / seen:.4f}")
            if parallel is not None:  # every rank's rows: the epoch's loss over the whole split
                running, seen = parallel.all_sum(running, seen)
            record = {"epoch": epoch + 1, "loss": running / max(seen, 1), "seconds": time.perf_counter() - started}
            if validate is not None:
                val = float(validate(model))
                record["val_quality"] = val
                if result.best_val is None or val > result.best_val:
                    result.best_val, result.best_epoch = val, epoch + 1
                    if cfg.keep_best:
                        best_state = copy.deepcopy(model.state_dict())
            state.logs = record
            result.history.append(record)
            for cb in callbacks:
                cb.on_epoch_end(state)
    if best_state is not None:
        model.load_state_dict(best_state)
    for cb in callbacks:
        cb.on_fit_end(state)
    result.steps = state.step
    result.memory = memory.result(model) if state.batch else None
    result.skipped_steps = mixed.skipped_steps if mixed is not None else 0
    result.checkpointing = planner.summary() if planner is not None else None
    result.world_size = parallel.size if parallel is not None else 1
    model.eval()
    return result


def _group(index: int, batches: int, accumulate: int) -> int:
    """How many batches share the optimizer step of batch ``index`` (fewer at an epoch's end)."""
    return min(accumulate, batches - index // accumulate * accumulate)


def _train_batch(state: FitState, inputs, targets, extras, loss_terms, callbacks, group: int,
                 memory=None, parallel=None) -> tuple[torch.Tensor, int]:
    """Forward and backward of one batch (every pass of it); (summed loss, rows trained on).
    ``memory`` (a ``StepMemory``) tracks the passes' allocations. ``parallel`` (a
    ``distributed.DataParallel``): after the batch transforms (drawn alike on every rank), this
    rank trains on its share of the rows through DDP, its loss weighted by that share."""
    for cb in callbacks:
        inputs, targets, extras = cb.transform_batch(state, inputs, targets, extras)
    weight, forward = 1.0, state.model
    if parallel is not None:
        from slimkit.train.distributed import split_batch

        rows = len(targets)
        weight, forward = parallel.loss_weight(rows), parallel.wrapped
        inputs, targets, extras = split_batch(inputs, targets, extras, parallel.share(rows))
    with memory if memory is not None else contextlib.nullcontext():
        return _passes_of_batch(state, inputs, targets, extras, loss_terms, callbacks, group, weight, forward)


def _passes_of_batch(state: FitState, inputs, targets, extras, loss_terms, callbacks, group: int,
                     weight: float = 1.0, forward=None):
    forward = forward if forward is not None else state.model
    total: torch.Tensor | None = None
    for index, pass_context in enumerate(_passes(state, callbacks)):
        with pass_context:
            with contextlib.ExitStack() as stack:
                for cb in callbacks:
                    stack.enter_context(cb.forward_context(state))
                outputs = primary_output(forward(*inputs))
                if outputs.dtype in (torch.bfloat16, torch.float16):  # the loss in fp32 (mixed precision)
                    outputs = outputs.float()
                batch = Batch(model=state.model, inputs=inputs, targets=targets, outputs=outputs, extras=extras,
                              pass_index=index)
                loss = sum(term.weight * term(batch) for term in loss_terms)
            if not torch.isfinite(loss):
                raise SlimkitError(f"training diverged: loss is {float(loss)} at step {state.step} (lower the lr?)")
            scaled = loss * (weight / group) if group > 1 or weight != 1.0 else loss
            for cb in callbacks:
                scaled = cb.scale_loss(state, scaled)
            scaled.backward()
        total = loss.detach() if total is None else total + loss.detach()
    if total is None:
        raise SlimkitError(f"no forward pass at step {state.step}: a callback's forward_passes gave none")
    return total, len(targets)


def _passes(state: FitState, callbacks: Sequence[Callback]):
    """The pass contexts of this batch: those one callback asks for, else one plain pass."""
    asked = [(cb, p) for cb in callbacks if (p := cb.forward_passes(state)) is not None]
    if len(asked) > 1:
        names = ", ".join(type(cb).__name__ for cb, _ in asked)
        raise SlimkitError(f"forward_passes: only one callback may define a step's passes; {names} all do")
    return asked[0][1] if asked else [contextlib.nullcontext()]


def _optimizer_step(state: FitState, callbacks: Sequence[Callback], cfg: TrainConfig) -> None:
    """Unscale, let callbacks read or edit gradients, clip, step (unless a callback skips it)."""
    verdicts = [cb.unscale_gradients_(state) for cb in callbacks]
    state.stepped = all(v is not False for v in verdicts)
    if state.stepped:
        for cb in callbacks:
            cb.after_backward(state)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
        state.optimizer.step()
    for cb in callbacks:
        cb.on_step_end(state)
