"""One-shot NAS: a weight-sharing supernet over a search space, trained once, from which every
candidate is evaluated without training (Once-for-All, Cai et al. 2020; BigNAS, Yu et al. 2020).

The supernet is the space's largest network: every dimension at its largest choice (deepest
stages, widest channels, largest kernel and expansion, SE on). A candidate is a slice of it:

- **depth**: the first ``depth`` blocks of each stage run, the rest are skipped;
- **width** and **expansion**: the first channels of every conv, BatchNorm and linear layer
  (BigNAS's slicing; OFA sorts channels by importance before shrinking, which progressive
  shrinking needs and the sandwich rule does not);
- **kernel**: the centre of the largest kernel (single-path NAS's sharing; OFA's learned kernel
  transform matrices are left out);
- **SE**: the first squeeze channels, or none.

Training follows BigNAS's **sandwich rule** with **in-place distillation**: every batch runs the
largest candidate on the labels, the smallest and ``random`` sampled candidates on the largest's
soft predictions (KL divergence), their gradients summed into one optimizer step. It runs in the
one training loop: ``Sandwich`` is a callback whose ``forward_passes`` select the candidate of
each pass, ``InplaceDistillation`` the loss term that reads which pass it is.

A candidate is then ``extract``-ed as an ordinary ``ArchNet`` (the zoo's builder, deployable and
compressible like any model) holding the sliced weights; its BatchNorm statistics are
re-estimated on training batches (``recalibrate_batchnorm``), since the running statistics the
supernet kept mix every candidate it trained. ``Supernet.forward`` in eval mode and the
extracted network agree (tested), so a candidate is evaluated either way.

Only inverted-residual stages can share weights this way (a space choosing block types, or with
stages of other types, is refused with the reason): their every dimension is a slice of the
largest. A stage whose expansion makes the expanded width equal its input runs without its
expansion conv, as the zoo's block does.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.nas.space import SearchSpace
from slimkit.train.callbacks import Callback
from slimkit.train.objectives import Batch
from slimkit.zoo.arch import ArchNet, ArchSpec, build_arch
from slimkit.zoo.blocks import InvertedResidual, SqueezeExcite


def _check(space: SearchSpace) -> None:
    for i, choice in enumerate(space.stages):
        if choice.block is not None and len(choice.block) > 1:
            raise ConfigError(f"supernet: stage {i} chooses its block type ({choice.block}); weights are shared "
                              "only within one block type (search such a space with trained candidates)")
    for i, stage in enumerate(space.spec({}).stages):
        if stage.block != "ir":
            raise ConfigError(f"supernet: stage {i} is a {stage.block!r} stage; only inverted-residual ('ir') "
                              "stages share weights across depth, width, kernel and expansion")


def _roles(block: InvertedResidual) -> dict[str, nn.Module]:
    """The parts of an inverted residual by role: expand (if any), dw, se (if any), proj."""
    roles: dict[str, nn.Module] = {}
    for layer in block.block:
        if isinstance(layer, SqueezeExcite):
            roles["se"] = layer
        elif layer[0].groups > 1:
            roles["dw"] = layer
        else:
            roles["proj" if "dw" in roles else "expand"] = layer
    return roles


def _slice(source: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The first entries of ``source`` along every dimension, but the centre of a conv kernel's
    two spatial dimensions."""
    if source.shape == shape:
        return source
    index: list[slice] = []
    for dim, (have, want) in enumerate(zip(source.shape, shape)):
        if want > have:
            raise ValueError(f"cannot slice {tuple(source.shape)} to {tuple(shape)}")
        start = (have - want) // 2 if source.dim() == 4 and dim >= 2 else 0
        index.append(slice(start, start + want))
    return source[tuple(index)]


def _copy_into(target: nn.Module, source: nn.Module) -> None:
    """Every parameter and buffer of ``target`` from the same-named one of ``source``, sliced."""
    tensors = dict(source.state_dict())
    with torch.no_grad():
        for name, t in target.state_dict().items():
            t.copy_(_slice(tensors[name], t.shape))


def _conv_bn(layer: nn.Sequential, x: torch.Tensor, out: int, training: bool, *, kernel: int | None = None,
             stride: int | None = None, depthwise: bool = False) -> torch.Tensor:
    """A zoo ``conv_bn_act`` on the first ``out`` channels (and the centre ``kernel``)."""
    conv, bn = layer[0], layer[1]
    weight = conv.weight[:out, : (1 if depthwise else x.shape[1])]
    k = kernel or conv.kernel_size[0]
    if k != weight.shape[-1]:
        weight = _slice(weight, torch.Size((*weight.shape[:2], k, k)))
    x = F.conv2d(x, weight, None, stride or conv.stride, k // 2, 1, out if depthwise else 1)
    x = F.batch_norm(x, bn.running_mean[:out], bn.running_var[:out], bn.weight[:out], bn.bias[:out], training,
                     bn.momentum if bn.momentum is not None else 0.1, bn.eps)
    return layer[2](x) if len(layer) > 2 else x


def _se(se: SqueezeExcite, x: torch.Tensor, squeeze: int) -> torch.Tensor:
    channels = x.shape[1]
    scale = F.adaptive_avg_pool2d(x, 1)
    scale = se.act(F.conv2d(scale, se.fc1.weight[:squeeze, :channels], se.fc1.bias[:squeeze]))
    scale = se.gate(F.conv2d(scale, se.fc2.weight[:channels, :squeeze], se.fc2.bias[:channels]))
    return x * scale


class Supernet(nn.Module):
    """The weight-sharing network of a search space; see the module docstring. ``set_active(params)``
    chooses the candidate that ``forward`` runs; ``extract(params)`` returns it as an ``ArchNet``."""

    def __init__(self, space: SearchSpace, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        _check(space)
        self.space = space
        dims = space.dimensions()
        self.largest = {k: max(v) for k, v in dims.items()}
        self.smallest = {k: min(v) for k, v in dims.items()}
        self.num_classes, self.in_chans = num_classes, in_chans
        self.net = build_arch(space.spec(self.largest), num_classes, in_chans)
        self._starts: list[int] = []  # index in net.features of each stage's first block
        index = 1
        for stage in self.net.spec.stages:
            self._starts.append(index)
            index += stage.depth
        self.active: ArchSpec = self.net.spec
        self.set_active(self.largest)

    def dimensions(self) -> dict[str, list[Any]]:
        return self.space.dimensions()

    def set_active(self, params: dict[str, Any]) -> ArchSpec:
        """Make ``params`` (a candidate of the space) the network ``forward`` runs; its spec."""
        self.active = self.space.spec(params)
        return self.active

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A candidate drawn uniformly, dimension by dimension."""
        return {k: rng.choice(v) for k, v in self.space.dimensions().items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, training = self.net.features, self.training
        x = features[0](x)  # the stem: not searched
        channels = x.shape[1]
        for stage, start in zip(self.active.stages, self._starts):
            for b in range(stage.depth):
                block = features[start + b]
                roles = _roles(block)
                stride = stage.stride if b == 0 else 1
                expanded = int(round(channels * stage.expand))
                h = x
                if expanded != channels:
                    h = _conv_bn(roles["expand"], h, expanded, training)
                h = _conv_bn(roles["dw"], h, expanded, training, kernel=stage.kernel, stride=stride, depthwise=True)
                if stage.se:
                    h = _se(roles["se"], h, max(1, int(channels * stage.se)))
                h = _conv_bn(roles["proj"], h, stage.out, training)
                x = h + x if stride == 1 and channels == stage.out else h
                channels = stage.out
        if self.net.spec.head:
            x = _conv_bn(features[-1], x, self.net.spec.head, training)
        x = self.net.pool(x)
        x = self.net.classifier[0](x)
        linear = self.net.classifier[1]
        return F.linear(x, linear.weight[:, : x.shape[1]], linear.bias)

    def extract(self, params: dict[str, Any]) -> ArchNet:
        """The candidate ``params`` as a standalone ``ArchNet`` holding the supernet's sliced weights
        (and sliced running statistics: ``recalibrate_batchnorm`` them before evaluating)."""
        spec = self.space.spec(params)
        sub = build_arch(spec, self.num_classes, self.in_chans).to(next(self.parameters()).device)
        features = self.net.features
        _copy_into(sub.features[0], features[0])
        index = 1
        for stage, start in zip(spec.stages, self._starts):
            for b in range(stage.depth):
                mine, theirs = _roles(sub.features[index]), _roles(features[start + b])
                for role, module in mine.items():
                    _copy_into(module, theirs[role])
                index += 1
        if spec.head:
            _copy_into(sub.features[-1], features[-1])
        _copy_into(sub.classifier, self.net.classifier)
        return sub


def recalibrate_batchnorm(model: nn.Module, batches: Sequence[torch.Tensor] | Iterator[torch.Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics as the plain average over ``batches``
    (inputs only; no gradients, nothing else changes), then leave the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return model


# --- training: the sandwich rule in the one loop -----------------------------------------------


class _Activate:
    """The context of one sandwich pass: its candidate is active inside, the previous one after."""

    def __init__(self, net: Supernet, params: dict[str, Any], log: list[ArchSpec]) -> None:
        self.net, self.params, self.log = net, params, log

    def __enter__(self) -> ArchSpec:
        self.previous = self.net.active
        spec = self.net.set_active(self.params)
        self.log.append(spec)
        return spec

    def __exit__(self, *exc: object) -> None:
        self.net.active = self.previous


class Sandwich(Callback):
    """A training-loop callback: each batch runs the largest candidate, the smallest and
    ``random_subnets`` sampled ones (BigNAS's sandwich rule), one forward+backward pass each, in
    that order, their gradients summed into one optimizer step. Samples draw from ``seed``."""

    def __init__(self, supernet: Supernet, random_subnets: int = 2, seed: int = 0) -> None:
        if random_subnets < 0:
            raise ConfigError(f"random_subnets must be >= 0, got {random_subnets}")
        self.supernet, self.random_subnets = supernet, random_subnets
        self.rng = random.Random(seed)
        self.passes_run: list[ArchSpec] = []  # the candidates of the last batch

    def on_fit_start(self, state) -> None:
        self.supernet.set_active(self.supernet.largest)

    def forward_passes(self, state):
        net = self.supernet
        candidates = [net.largest, net.smallest, *(net.sample(self.rng) for _ in range(self.random_subnets))]
        self.passes_run = []
        return [_Activate(net, params, self.passes_run) for params in candidates]

    def on_fit_end(self, state) -> None:
        self.supernet.set_active(self.supernet.largest)


class InplaceDistillation:
    """The sandwich's loss term: the first pass (the largest candidate) learns the labels with
    ``task_loss``; every later pass learns the largest's predictions of the same batch (KL
    divergence to its softmax, detached), BigNAS's in-place distillation. ``distill=False``: every
    pass learns the labels."""

    name = "inplace_distillation"

    def __init__(self, task_loss: Callable[[Batch], torch.Tensor], weight: float = 1.0, distill: bool = True,
                 temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.task_loss, self.weight, self.distill, self.temperature = task_loss, weight, distill, temperature
        self._teacher: torch.Tensor | None = None

    def __call__(self, batch: Batch) -> torch.Tensor:
        if batch.pass_index == 0 or not self.distill:
            if batch.pass_index == 0:
                self._teacher = batch.outputs.detach()
            return self.task_loss(batch)
        if self._teacher is None or self._teacher.shape != batch.outputs.shape:
            raise ConfigError("in-place distillation: the largest candidate's pass must come first in each batch")
        t = self.temperature
        return F.kl_div(F.log_softmax(batch.outputs / t, -1), F.log_softmax(self._teacher / t, -1),
                        reduction="batchmean", log_target=True) * t * t


# --- the whole one-shot routine on a task ------------------------------------------------------


def train_supernet(supernet: Supernet, ctx: Any, cfg: Any, *, random_subnets: int = 2, distill: bool = True,
                   description: str = "supernet") -> Any:
    """Train ``supernet`` on the task of ``ctx`` (a ``Context``) with the sandwich rule and
    in-place distillation, in the one training loop; the ``FitResult``. The loop's per-epoch
    validation sees the largest candidate under the mixed running statistics, so ``keep_best`` is
    off: the last epoch's weights are kept."""
    from slimkit.train.objectives import TaskLoss

    sandwich = Sandwich(supernet, random_subnets, seed=ctx.seed)
    term = InplaceDistillation(TaskLoss(ctx.task.loss), distill=distill)
    result = ctx.train(supernet, cfg.model_copy(update={"keep_best": False}), loss_terms=[term], callbacks=[sandwich],
                       task_loss_weight=0.0, description=description)
    supernet.set_active(supernet.largest)
    return result


def calibration_batches(inputs: torch.Tensor, rows: int, batch_size: int = 256) -> list[torch.Tensor]:
    """The first ``rows`` rows of ``inputs`` in batches (the same rows for every candidate)."""
    rows = min(rows, len(inputs))
    return [inputs[i: i + batch_size] for i in range(0, rows, batch_size)]


def evaluate_candidate(supernet: Supernet, params: dict[str, Any], ctx: Any, calibration_rows: int = 2000
                       ) -> tuple[ArchNet, float]:
    """The candidate extracted from the supernet with its BatchNorm statistics re-estimated on
    the first ``calibration_rows`` training rows, and its validation quality."""
    net = supernet.extract(params)
    device = next(net.parameters()).device
    recalibrate_batchnorm(net, (b.to(device) for b in calibration_batches(ctx.data.train.inputs[0], calibration_rows)))
    return net, float(ctx.validate(net))
