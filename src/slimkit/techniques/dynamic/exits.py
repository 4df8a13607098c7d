"""Early exits (BranchyNet, Teerapittayanon et al. 2016): classifier heads after chosen segments of
a backbone, and inference that stops at the first head confident enough.

``EarlyExitNetwork`` holds the backbone as the chain of segments its forward pass already was
(the children of an ``nn.Sequential``) and a head after some of them; the last segment ends in the
backbone's own classifier, the final exit.

- Training (``model.train()``): every segment and head runs; the final logits are returned (the
  task's loss trains them) and the heads' logits are kept in ``exit_outputs`` for ``ExitLoss``
  (weighted cross-entropy per head, optionally distilled from the final exit).
- Inference: each exit has a threshold on its confidence (the largest softmax probability, or one
  minus the normalised entropy). Rows whose confidence reaches it take that head's logits and
  leave the batch; the others continue on the remaining rows only, so at batch 1 the network
  returns at the first confident exit and computes nothing after it. A threshold of infinity never
  exits and its head is not even run: every threshold at infinity is the backbone, bit for bit.
  ``last_exits`` records which exit each row of the last call took.

``calibrate`` picks one threshold shared by the exits: the lowest (most rows leave early) whose
validation quality stays within a budget of the full network's.

Written here: BranchyNet's and MSDNet's code is research code for their own architectures, and
Distiller's early exit only computed statistics (its docs: it does not actually take the exits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.train.objectives import Batch

Criterion = Literal["confidence", "entropy"]


class TokenMean(nn.Module):
    """Mean over the token dimension of ``[rows, tokens, features]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def exit_head(features: torch.Tensor, num_classes: int, conv: bool = True) -> nn.Module:
    """A classifier for a segment's output (one example row). Feature maps: with ``conv`` a 3x3
    conv-BN-ReLU of the same width first (BranchyNet's branches carry convolutions: early features
    are too local for a linear read-out), then global average pooling and a Linear; token
    sequences: a token mean then a Linear; vectors: a Linear."""
    if features.dim() == 4:
        c = features.shape[1]
        body = [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()] if conv else []
        return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
    if features.dim() == 3:
        return nn.Sequential(TokenMean(), nn.Linear(features.shape[-1], num_classes))
    if features.dim() == 2:
        return nn.Linear(features.shape[-1], num_classes)
    raise ValueError(f"no exit head for a segment output of shape {tuple(features.shape)}")


def confidence(logits: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """Per row: the largest softmax probability, or 1 - entropy / log(classes)."""
    p = logits.float().softmax(-1)
    if criterion == "confidence":
        return p.max(-1).values
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return 1.0 - entropy / math.log(p.shape[-1])


class EarlyExitNetwork(nn.Module):
    """Segments run in order, with exit heads after some of them (``heads``: {segment index:
    head}); the last segment's output is the final exit. See the module docstring."""

    input_dependent_cost = True  # the measurement takes MACs and batch-1 latency row by row

    def __init__(self, segments: Sequence[nn.Module], heads: dict[int, nn.Module],
                 criterion: Criterion = "confidence") -> None:
        super().__init__()
        if not heads or max(heads) >= len(segments) - 1 or min(heads) < 0:
            raise ValueError(f"exits must follow segments 0..{len(segments) - 2}, got {sorted(heads)}")
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleDict({str(i): heads[i] for i in sorted(heads)})
        self.points = sorted(heads)
        self.criterion = criterion
        self.register_buffer("thresholds", torch.full((len(heads),), math.inf))
        self.exit_outputs: list[torch.Tensor] = []
        self.last_exits: torch.Tensor | None = None

    @property
    def exits(self) -> int:
        """Exits including the final one."""
        return len(self.points) + 1

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._all_exits(inputs)
        return self._exiting(inputs)

    def _all_exits(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        *self.exit_outputs, final = self._every_exit(inputs)
        return final

    def _every_exit(self, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Every segment and every head on every row: the heads' logits, then the final output."""
        h: torch.Tensor = self.segments[0](*inputs)
        outputs = []
        for i in range(len(self.segments)):
            if i > 0:
                h = self.segments[i](h)
            if str(i) in self.heads:
                outputs.append(self.heads[str(i)](h))
        return outputs + [h]

    @torch.no_grad()
    def exit_logits(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every row (the heads', then the final), in evaluation mode: for
        calibration."""
        was = self.training
        self.eval()
        try:
            return self._every_exit(inputs)
        finally:
            self.train(was)

    def stages(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """(bodies, heads): body ``k`` runs the segments after exit ``k - 1`` up to exit ``k`` (the
        last body up to the final output), head ``k`` reads body ``k``'s output. Each is a
        one-input, one-output module, so a runtime compiles each as a graph of its own and
        ``run_stages`` takes the exit decisions between them (``Backend.compile`` does this)."""
        bodies, start = [], 0
        for end in [*self.points, len(self.segments) - 1]:
            bodies.append(_Chain(list(self.segments[start:end + 1])))
            start = end + 1
        return bodies, [self.heads[str(p)] for p in self.points]

    def _exiting(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        bodies, heads = self.stages()
        return self.run_stages(bodies, heads, inputs)

    def export_graph(self) -> nn.Module:
        """The exit logic as one graph with data-dependent branches (``torch.cond``, which the ONNX
        exporter writes as ``If`` nodes), for exporters and runtimes that run control flow: after
        each exit the rest of the network runs only if some row of the batch is not yet confident,
        and each row takes the logits of the first exit confident for it. Per row this is exactly
        ``run_stages``'s output; a batch-1 row that exits computes nothing after its exit, while a
        larger batch stops only once every row has exited (``run_stages`` lets rows leave one by
        one). Thresholds are baked in as constants, and an infinite one leaves its head out."""
        return _ExitGraph(self)

    def run_stages(self, bodies: Sequence[Callable[..., torch.Tensor]], heads: Sequence[Callable[..., torch.Tensor]],
                   inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The exit logic over ``stages()`` (eager modules or their compiled graphs): rows whose
        confidence reaches exit ``k``'s threshold take head ``k``'s logits and leave; the rest
        continue on the remaining rows only. ``last_exits`` records each row's exit."""
        rows = inputs[0].shape[0]
        if rows == 1:
            return self._run_one_row(bodies, heads, inputs)
        device = inputs[0].device
        taken = torch.full((rows,), len(heads), dtype=torch.long, device=device)
        active = torch.arange(rows, device=device)
        out: torch.Tensor | None = None
        h = bodies[0](*inputs)
        for k, head in enumerate(heads):
            threshold = float(self.thresholds[k])
            if threshold != math.inf:
                logits = head(h)
                done = (confidence(logits, self.criterion) >= threshold).to(device)
                if bool(done.any()):
                    if out is None:
                        out = logits.new_zeros((rows, *logits.shape[1:]))
                    out[active[done]] = logits[done]
                    taken[active[done]] = k
                    keep = ~done
                    if not bool(keep.any()):
                        self.last_exits = taken
                        return out
                    h, active = h[keep], active[keep]
            h = bodies[k + 1](h)
        self.last_exits = taken
        if out is None:  # nobody left early: the backbone's own output, untouched
            return h
        out[active] = h.to(out.dtype)
        return out


    def _run_one_row(self, bodies: Sequence[Callable[..., torch.Tensor]],
                     heads: Sequence[Callable[..., torch.Tensor]], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``run_stages`` for a batch of one row, without its bookkeeping: what a batch-1 call costs
        is the stages it runs and the decisions between them."""
        h = bodies[0](*inputs)
        for k, head in enumerate(heads):
            threshold = float(self.thresholds[k])
            if threshold != math.inf:
                logits = head(h)
                if float(confidence(logits, self.criterion)[0]) >= threshold:
                    self.last_exits = torch.tensor([k], device=logits.device)
                    return logits
            h = bodies[k + 1](h)
        self.last_exits = torch.tensor([len(heads)], device=h.device)
        return h


class _ExitGraph(nn.Module):
    """``EarlyExitNetwork.export_graph()``: the network's exit decisions as nested ``torch.cond``."""

    def __init__(self, net: EarlyExitNetwork) -> None:
        super().__init__()
        bodies, heads = net.stages()
        self.bodies = nn.ModuleList(bodies)
        self.heads = nn.ModuleList(heads)
        self.thresholds = [float(t) for t in net.thresholds]
        self.criterion = net.criterion

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._from(0, self.bodies[0](*inputs))

    def _from(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """The output for rows that reached exit ``k`` with features ``h``."""
        if k == len(self.heads):
            return h
        if self.thresholds[k] == math.inf:
            return self._from(k + 1, self.bodies[k + 1](h))
        logits = self.heads[k](h)
        done = confidence(logits, self.criterion) >= self.thresholds[k]

        def stop(h: torch.Tensor, logits: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
            return logits.clone()

        def go_on(h: torch.Tensor, logits: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
            rest = self._from(k + 1, self.bodies[k + 1](h))
            return torch.where(done.view(-1, *[1] * (logits.dim() - 1)), logits, rest.to(logits.dtype))

        return torch.cond(done.all(), stop, go_on, (h, logits, done))


class _Chain(nn.Module):
    """Segments run in order (the first may take several inputs): a transient view that
    ``stages()`` builds, not held by the network (its state dict is unchanged)."""

    def __init__(self, segments: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(segments)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        h = self.parts[0](*inputs)
        for part in self.parts[1:]:
            h = part(h)
        return h


def attach_exits(model: nn.Module, example_inputs: Sequence[torch.Tensor], num_classes: int,
                 after: Sequence[str] | None = None, exits: int = 2,
                 criterion: Criterion = "confidence", conv_heads: bool = True) -> EarlyExitNetwork:
    """An ``EarlyExitNetwork`` over ``model``'s children (``model`` must be an ``nn.Sequential``,
    whose forward is the chain of its children) with heads after the children named in ``after``,
    or by default after the children where the cumulative MACs first pass 1/(exits+1), 2/(exits+1)...
    of the total (the cheap exits come early)."""
    from slimkit.measure.macs import count_macs_by_module

    if not isinstance(model, nn.Sequential):
        raise ValueError(f"early exits need a model whose forward is a chain of children (an nn.Sequential); "
                         f"{type(model).__name__} is not one")
    names = [n for n, _ in model.named_children()]
    if len(names) < 3:
        raise ValueError(f"early exits need at least 3 children to cut between, the model has {len(names)}")
    outputs = _child_outputs(model, example_inputs)
    if after is None:
        macs = count_macs_by_module(model, example_inputs)
        per_child = [macs.get(n, 0) for n in names]
        total = sum(per_child)
        cumulative = [sum(per_child[:i + 1]) for i in range(len(names))]
        points = []
        for j in range(1, exits + 1):
            target = total * j / (exits + 1)
            i = next(i for i, c in enumerate(cumulative) if c >= target)
            while i < len(names) - 1 and (outputs[i].dim() < 2 or i in points):
                i += 1
            if i < len(names) - 1:
                points.append(i)
        points = sorted(set(points))
    else:
        unknown = [a for a in after if a not in names]
        if unknown:
            raise ValueError(f"early exits: 'after' names no child of the model: {unknown} (children: {names})")
        points = sorted({names.index(a) for a in after})
        if points and points[-1] == len(names) - 1:
            raise ValueError(f"early exits: {names[-1]!r} is the model's last child, already the final exit")
    if not points:
        raise ValueError("early exits: no child to put an exit after")
    heads = {i: exit_head(outputs[i][:1], num_classes, conv_heads) for i in points}
    device = next(model.parameters()).device
    return EarlyExitNetwork(list(model.children()), {i: h.to(device) for i, h in heads.items()}, criterion)


@torch.no_grad()
def _child_outputs(model: nn.Sequential, example_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    was = model.training
    model.eval()
    try:
        outputs, h = [], None
        for i, child in enumerate(model.children()):
            h = child(*example_inputs) if i == 0 else child(h)
            if not isinstance(h, torch.Tensor):
                raise ValueError(f"early exits: child {i} returns {type(h).__name__}, not a tensor")
            outputs.append(h)
        return outputs
    finally:
        model.train(was)


@dataclass
class ExitLoss:
    """The heads' objective: ``weights[k]`` x cross-entropy of exit ``k`` (the final exit is the
    task loss's), plus ``distill`` x the KL from the final exit's softened, detached prediction
    (self-distillation; ``temperature`` T, scaled by T^2)."""

    weights: list[float]
    distill: float = 0.0
    temperature: float = 1.0
    weight: float = 1.0
    name: str = "exits"

    def __call__(self, batch: Batch) -> torch.Tensor:
        net = getattr(batch.model, "module", batch.model)  # a DistributedDataParallel wrapper
        heads = net.exit_outputs
        if len(heads) != len(self.weights):
            raise RuntimeError(f"ExitLoss: {len(heads)} exit outputs for {len(self.weights)} weights")
        loss = sum(w * F.cross_entropy(o, batch.targets) for w, o in zip(self.weights, heads))
        if self.distill:
            t = self.temperature
            teacher = F.softmax(batch.outputs.detach() / t, -1)
            loss = loss + self.distill * t * t * sum(
                F.kl_div(F.log_softmax(o / t, -1), teacher, reduction="batchmean") for o in heads)
        return loss


@dataclass
class Calibration:
    threshold: float
    quality: float  # on the calibration rows, with exits
    full_quality: float  # without
    exit_shares: list[float]  # rows per exit (the final last)


@torch.no_grad()
def calibrate(net: EarlyExitNetwork, logits: list[torch.Tensor], targets: torch.Tensor, budget: float,
              candidates: int = 200) -> Calibration:
    """The lowest shared threshold whose accuracy on these rows (``logits``: every exit's, from
    ``exit_logits``) stays within ``budget`` of the final exit's; written into ``net.thresholds``."""
    scores = [confidence(o, net.criterion) for o in logits[:-1]]
    correct = [o.argmax(-1) == targets for o in logits]
    full = float(correct[-1].float().mean())
    values = torch.cat(scores).float()
    grid = torch.quantile(values, torch.linspace(0, 1, candidates)).unique().tolist() + [math.inf]
    best = Calibration(math.inf, full, full, [0.0] * len(scores) + [1.0])
    for threshold in sorted(grid, reverse=True):  # from never exiting towards exiting most
        taken = torch.full_like(targets, len(scores))
        for k in reversed(range(len(scores))):
            taken = torch.where(scores[k] >= threshold, torch.full_like(taken, k), taken)
        right = torch.stack(correct)[taken, torch.arange(len(targets))]
        quality = float(right.float().mean())
        if quality < full - budget:
            break  # lower thresholds only let more uncertain rows out
        shares = [float((taken == k).float().mean()) for k in range(len(scores) + 1)]
        best = Calibration(threshold, quality, full, shares)
    net.thresholds.fill_(best.threshold)
    return best
