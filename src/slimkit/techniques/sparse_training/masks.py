"""Sparse from the start: masks chosen before (or while) training, held through the one loop.

- ``MaskedTraining``: a fixed keep-mask per weight; masked weights are zero, their gradients are
  zeroed before each optimizer step and the weights re-zeroed after it (Adam's moments never
  revive them). Static sparse training with a random mask is this with ``random_masks``.
- ``layer_densities``: how a global density is shared among layers: ``uniform`` (the same in
  each) or ``erk`` (Erdős–Rényi-Kernel, Evci et al. 2020: density proportional to
  ``sum(shape) / prod(shape)``, so small layers stay denser; densities above 1 are capped and the
  rest redistributed).
- ``snip_masks`` (Lee et al. 2019): connection sensitivity ``|g * w|`` at initialisation on a few
  batches, the highest kept over all layers.
- ``RigL`` (Evci et al. 2020): every ``interval`` steps until ``end`` of training, each layer
  drops the ``k`` active weights of smallest magnitude and grows the ``k`` inactive ones with the
  largest dense gradient (new weights start at zero), ``k = drop_fraction / 2 * (1 + cos(pi t /
  T_end)) * active``. The number of active weights per layer never changes.

Written here: RigL's reference is TensorFlow (google-research/rigl), SNIP's and the lottery
ticket's are research scripts, and the maintained PyTorch toolkits that had them (Distiller,
SparseML) are unmaintained; each is a few dozen lines on the loop's callbacks.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Literal

import torch
import torch.nn as nn

from slimkit.techniques.pruning.criteria import keep_count, masks_from_scores, topk_mask
from slimkit.train.callbacks import Callback, FitState

Distribution = Literal["uniform", "erk"]


class MaskedTraining(Callback):
    """Holds ``masks`` (True: kept) on ``weights`` through a fit."""

    def __init__(self, weights: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
        missing = set(weights) ^ set(masks)
        if missing:
            raise ValueError(f"masks and weights name different layers: {sorted(missing)}")
        self.weights = weights
        self.masks = {n: m.to(weights[n].device, torch.bool) for n, m in masks.items()}

    @torch.no_grad()
    def apply(self) -> None:
        for name, w in self.weights.items():
            w.mul_(self.masks[name])

    def on_fit_start(self, state: FitState) -> None:
        self.apply()

    def after_backward(self, state: FitState) -> None:
        for name, w in self.weights.items():
            if w.grad is not None:
                w.grad.mul_(self.masks[name])

    def on_step_end(self, state: FitState) -> None:
        self.apply()

    def on_fit_end(self, state: FitState) -> None:
        self.apply()  # keep_best may restore weights saved before a later mask change

    def density(self) -> float:
        kept = sum(int(m.sum()) for m in self.masks.values())
        return kept / sum(m.numel() for m in self.masks.values())


def layer_densities(shapes: dict[str, torch.Size], density: float, distribution: Distribution = "uniform") -> dict[str, float]:
    """Each layer's density so that the weights kept over all layers are ``density`` of them."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if distribution == "uniform":
        return {n: density for n in shapes}
    if distribution != "erk":
        raise ValueError(f"distribution must be 'uniform' or 'erk', got {distribution!r}")
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    total, dense = sum(numel.values()), set()
    while True:  # Evci et al.'s loop: cap layers at density 1 and share the rest among the others
        budget = density * total - sum(numel[n] for n in dense)
        free = [n for n in shapes if n not in dense]
        scale = budget / sum(raw[n] * numel[n] for n in free)
        over = [n for n in free if raw[n] * scale > 1]
        if not over:
            break
        dense.update(over)
    return {n: 1.0 if n in dense else raw[n] * scale for n in shapes}


def random_masks(weights: dict[str, torch.Tensor], density: float | dict[str, float], *,
                 distribution: Distribution = "uniform", seed: int = 0) -> dict[str, torch.Tensor]:
    """Keep-masks drawn at random: ``density`` overall (shared by ``distribution``) or per layer."""
    densities = density if isinstance(density, dict) else \
        layer_densities({n: w.shape for n, w in weights.items()}, density, distribution)
    generator = torch.Generator().manual_seed(seed)
    return {n: topk_mask(torch.rand(w.shape, generator=generator), keep_count(w.numel(), 1 - densities[n]))
            for n, w in weights.items()}


def snip_masks(model: nn.Module, weights: dict[str, nn.Parameter], batches: Iterable[tuple[tuple, torch.Tensor]],
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """SNIP: the ``density`` share of weights with the largest ``|dL/dw * w|`` over ``batches``,
    ranked over all layers together (the model's weights as they are: its initialisation)."""
    from slimkit.core.outputs import primary_output

    grads = {n: torch.zeros_like(w) for n, w in weights.items()}
    was = model.training
    model.train()
    for inputs, targets in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(primary_output(model(*inputs)), targets).backward()
        for n, w in weights.items():
            if w.grad is not None:
                grads[n] += w.grad.detach()
    model.zero_grad(set_to_none=True)
    model.train(was)
    scores = {n: (grads[n] * w.detach()).abs() for n, w in weights.items()}
    return masks_from_scores(scores, 1 - density, "global")


class RigL(MaskedTraining):
    """Dynamic sparse training: drop by magnitude, grow by gradient (see the module docstring)."""

    def __init__(self, weights: dict[str, nn.Parameter], masks: dict[str, torch.Tensor], *, interval: int = 100,
                 drop_fraction: float = 0.3, end: float = 0.75) -> None:
        super().__init__(weights, masks)
        if interval < 1 or not 0 < drop_fraction < 1 or not 0 < end <= 1:
            raise ValueError(f"RigL: interval >= 1, drop_fraction in (0, 1), end in (0, 1] "
                             f"(got {interval}, {drop_fraction}, {end})")
        self.interval, self.drop_fraction, self.end = interval, drop_fraction, end
        self.updates = 0
        self.changed = 0  # weights regrown over the fit

    def after_backward(self, state: FitState) -> None:
        step = state.step + 1
        horizon = self.end * state.total_steps
        if step % self.interval == 0 and step < horizon:
            self._update(0.5 * self.drop_fraction * (1 + math.cos(math.pi * step / horizon)))
        super().after_backward(state)

    @torch.no_grad()
    def _update(self, fraction: float) -> None:
        for name, w in self.weights.items():
            if w.grad is None:
                continue
            mask = self.masks[name]
            active = int(mask.sum())
            k = min(int(fraction * active), mask.numel() - active)
            if k <= 0:
                continue
            # drop: the k smallest magnitudes among the active weights
            magnitude = torch.where(mask, w.abs(), torch.full_like(w, math.inf))
            drop = torch.topk(magnitude.flatten(), k, largest=False).indices
            kept = mask.flatten().clone()
            kept[drop] = False
            # grow: the k largest dense gradients among the weights inactive before this update
            # (a weight just dropped cannot come straight back)
            grad = torch.where(mask, torch.full_like(w, -math.inf), w.grad.abs())
            grow = torch.topk(grad.flatten(), k).indices
            kept[grow] = True
            w.view(-1)[grow] = 0.0  # grown weights start at zero
            self.masks[name] = kept.reshape(mask.shape)
            self.changed += k
        self.updates += 1
        self.apply()
