"""Masks through the one training loop: pruned weights stay zero while the rest fine-tune, and a
gradual schedule or movement scores decide which weights go, step by step."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from slimkit.techniques.pruning.criteria import cubic_sparsity
from slimkit.train.callbacks import Callback, FitState

# (scores by layer, target sparsity) -> keep-masks by layer
MaskFn = Callable[[dict[str, torch.Tensor], float], dict[str, torch.Tensor]]


class PruningCallback(Callback):
    """Keeps ``masks`` applied during training and updates them on a schedule.

    - ``schedule="oneshot"``: the masks are computed once, before the first step, at the final
      sparsity; training only recovers the accuracy the cut cost (magnitude or random scores).
    - ``schedule="cubic"``: sparsity rises from 0 along Zhu & Gupta's cubic over the first
      ``end`` share of the steps, the masks recomputed ``updates`` times on the way.

    Scores: ``magnitude`` (|w|, the current weights), ``movement`` (Sanh et al. 2020: minus the
    accumulated ``grad * w``, how far training pushes each weight away from zero; needs training)
    or ``random`` (a control). Gradients of pruned weights are zeroed before each optimizer step,
    and the weights re-zeroed after it, so Adam's moments never revive them; under movement a
    pruned weight's score still follows its gradient (times the value it had), and a weight whose
    score climbs back into the kept set returns with that value.
    """

    def __init__(self, weights: dict[str, nn.Parameter], sparsity: float, mask_fn: MaskFn, *,
                 criterion: str = "magnitude", schedule: str = "oneshot", end: float = 0.75, updates: int = 20,
                 seed: int = 0) -> None:
        if criterion not in ("magnitude", "movement", "random"):
            raise ValueError(f"criterion must be magnitude, movement or random, got {criterion!r}")
        if criterion == "movement" and schedule != "cubic":
            raise ValueError("movement scores come from training: use the cubic schedule with it")
        if schedule not in ("oneshot", "cubic"):
            raise ValueError(f"schedule must be oneshot or cubic, got {schedule!r}")
        self.weights, self.sparsity, self.mask_fn = weights, sparsity, mask_fn
        self.criterion, self.schedule, self.end, self.updates = criterion, schedule, end, updates
        generator = torch.Generator().manual_seed(seed)
        self.random = {n: torch.rand(w.shape, generator=generator) for n, w in weights.items()} \
            if criterion == "random" else None
        self.movement = {n: torch.zeros_like(w) for n, w in weights.items()} if criterion == "movement" else None
        # movement: the value each weight had when it was pruned. Its score keeps collecting
        # -grad * value while it is out (Sanh et al.'s straight-through scores), and it comes back
        # with that value if its score rises again
        self.frozen = {n: torch.zeros_like(w) for n, w in weights.items()} if criterion == "movement" else None
        self.masks: dict[str, torch.Tensor] = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        self.current = 0.0
        self._every = 1

    def scores(self) -> dict[str, torch.Tensor]:
        if self.random is not None:
            return self.random
        if self.movement is not None:
            return {n: -s for n, s in self.movement.items()}
        return {n: w.detach().abs() for n, w in self.weights.items()}

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Recompute the masks at ``sparsity`` and zero what they drop."""
        masks = self.mask_fn(self.scores(), sparsity)
        if self.frozen is not None:
            for name, w in self.weights.items():
                old, new = self.masks[name], masks[name]
                self.frozen[name] = torch.where(old & ~new, w, self.frozen[name])  # going out: remember it
                w.copy_(torch.where(~old & new, self.frozen[name], w))  # coming back: as it left
        self.masks = masks
        self.current = sparsity
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for name, w in self.weights.items():
            w.mul_(self.masks[name])

    def on_fit_start(self, state: FitState) -> None:
        if self.schedule == "oneshot":
            self.prune_to(self.sparsity)
        horizon = max(1, math.ceil(self.end * state.total_steps))
        self._every = max(1, horizon // max(1, self.updates))

    def after_backward(self, state: FitState) -> None:
        for name, w in self.weights.items():
            if w.grad is None:
                continue
            if self.movement is not None:
                value = torch.where(self.masks[name], w.detach(), self.frozen[name])
                self.movement[name].add_(w.grad.detach() * value)
            w.grad.mul_(self.masks[name])

    def on_step_end(self, state: FitState) -> None:
        step = state.step + 1  # the loop counts this step after the callbacks
        if self.schedule == "cubic" and (step % self._every == 0 or step >= state.total_steps):
            target = cubic_sparsity(step, state.total_steps, self.sparsity, end=self.end)
            # magnitude masks only grow; movement masks may change at any update (weights whose
            # scores rise come back)
            if target > self.current + 1e-9 or self.criterion == "movement":
                self.prune_to(target)
                return
        self.apply()

    def on_fit_end(self, state: FitState) -> None:
        if self.current < self.sparsity:
            self.prune_to(self.sparsity)  # the schedule's last point, or a run shorter than its horizon
        else:
            self.apply()  # keep_best may have restored weights saved before a later mask update
