"""Layer skipping (SkipNet, Wang et al. 2018; gates trained as in ConvNet-AIG, Veit & Belongie 2018):
a tiny gate before each residual block decides, row by row, whether the block runs.

- ``GatedBlock`` wraps one block ``y = x + f(x)`` (or any block whose output has its input's
  shape) with a gate: global average pooling and a Linear to one logit per row. In training the
  gate is a hard straight-through Gumbel-sigmoid (the forward pass takes the 0/1 decision, the
  gradient flows through the relaxed probability), ``y = x + g * (block(x) - x)``. In evaluation
  the rows whose logit exceeds the block's ``threshold`` run the block, the others pass ``x``
  through untouched, and only the open rows are fed to the block (index-selected), so MACs and
  time really fall. A threshold of ``+inf`` closes the gate for every row without running it (the
  model with that block removed, bit for bit); ``-inf`` opens it without running it (the block,
  bit for bit).
- ``SkipNetwork`` holds the backbone with its gated blocks in place, declares
  ``input_dependent_cost`` (the runner measures MACs and batch-1 latency row by row) and records in
  ``last_executed`` which blocks ran for each row of the last call. When the backbone is an
  ``nn.Sequential`` whose gated blocks are its children, ``stages()`` / ``run_stages`` let every
  backend compile the pieces as graphs of their own with the gates' decisions between them.
- ``SkipPenalty`` is the loss term pulling the batch's mean executed MACs (a share of the
  backbone's) toward a target; or, ``per_block`` (ConvNet-AIG's target loss), every gate's
  execution rate over the batch toward the one rate that meets that target, so that no block
  settles shut for every row (which is static removal, reached with noisier training).
- ``remove_least_used_``: the static control, the ``k`` least-executed blocks removed for good.

Written here: SkipNet's and ConvNet-AIG's code are research code for their own ResNets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn

from slimkit.train.objectives import Batch

GATE_GAIN = 10.0  # a gate's logit is this times its Linear's output: under Adam the gates learn this much faster
GATE_BIAS = 0.3  # gates start open (logit 3, sigmoid(3) = 0.95): training starts from the backbone


def gate_for(features: torch.Tensor) -> nn.Module:
    """A gate for a block's input (one example row): pooling (feature maps: global average; token
    sequences: the token mean) and a Linear to one logit."""
    from slimkit.techniques.dynamic.exits import TokenMean

    if features.dim() == 4:
        body: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    elif features.dim() == 3:
        body = [TokenMean()]
    elif features.dim() == 2:
        body = []
    else:
        raise ValueError(f"no gate for a block input of shape {tuple(features.shape)}")
    linear = nn.Linear(features.shape[1] if features.dim() != 3 else features.shape[-1], 1)
    nn.init.zeros_(linear.weight)  # deterministic: the same gates however the random state stands
    nn.init.constant_(linear.bias, GATE_BIAS)
    return nn.Sequential(*body, linear)


def gate_kind(gate: nn.Module) -> tuple[str, int]:
    """(what the gate reads: conv2d / tokens / vector, its Linear's input features)."""
    linear = gate[-1]
    kind = "vector" if len(gate) == 1 else ("conv2d" if isinstance(gate[0], nn.AdaptiveAvgPool2d) else "tokens")
    return kind, linear.in_features


def _exporting() -> bool:
    return bool(torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling())


class GatedBlock(nn.Module):
    """A block and its gate; see the module docstring."""

    def __init__(self, block: nn.Module, gate: nn.Module, temperature: float = 1.0, noise: bool = True) -> None:
        super().__init__()
        self.block = block
        self.gate = gate
        self.temperature = temperature
        self.noise = noise
        self.register_buffer("threshold", torch.zeros(()))
        self.drop_rate: float | None = None  # training: rows skip the block at random at this rate, the gate idle
        self.last_gate: torch.Tensor | None = None  # training: the straight-through 0/1 value per row
        self.last_open: torch.Tensor | None = None  # evaluation: which rows ran the block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._relaxed(x)
        if _exporting():  # one graph for every row: the block runs on all of them, the gate picks
            open_ = self.logit(x) > self.threshold  # the buffer as a tensor: no guard on its value
            return torch.where(open_.view(-1, *[1] * (x.dim() - 1)), self.block(x), x)
        return self.run_open(x, self.decide(x), self.block)

    def _relaxed(self, x: torch.Tensor) -> torch.Tensor:
        t = float(self.threshold)
        if math.isinf(t):  # forced shut or open: no gate, no gradient to it
            self.last_gate = x.new_full((x.shape[0],), float(t < 0))
            return self.block(x) if t < 0 else x
        if self.drop_rate is not None:  # stochastic depth row by row (no rescaling: inference skips whole blocks)
            g = (torch.rand(x.shape[0], device=x.device) >= self.drop_rate).to(x.dtype)
            self.last_gate = g
            return x + g.view(-1, *[1] * (x.dim() - 1)) * (self.block(x) - x)
        logit = self.logit(x) - t
        if self.noise:  # logistic noise: the Gumbel-sigmoid's sample
            u = torch.rand_like(logit).clamp(1e-6, 1 - 1e-6)
            logit = logit + u.log() - (-u).log1p()
        p = torch.sigmoid(logit / self.temperature)
        g = (p > 0.5).to(p.dtype) - p.detach() + p  # 0/1 forward, the relaxed gradient backward
        self.last_gate = g
        return x + g.view(-1, *[1] * (x.dim() - 1)) * (self.block(x) - x)

    def decide(self, x: torch.Tensor) -> torch.Tensor:
        """Which rows run the block (bool, one per row); the gate runs only at a finite threshold."""
        t = float(self.threshold)
        if math.isinf(t):
            return torch.full((x.shape[0],), t < 0, dtype=torch.bool, device=x.device)
        return self.logit(x) > t

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """The gate's logit per row."""
        return GATE_GAIN * self.gate(x).squeeze(-1)

    def run_open(self, x: torch.Tensor, open_: torch.Tensor, block: Callable[[torch.Tensor], torch.Tensor]
                 ) -> torch.Tensor:
        """``block`` on the open rows only, ``x`` untouched on the others; ``last_open`` records them."""
        self.last_open = open_
        if bool(open_.all()):
            return block(x)
        if not bool(open_.any()):
            return x
        index = open_.nonzero().squeeze(1)
        out = x.clone()
        out[index] = block(x[index]).to(out.dtype)
        return out


class SkipNetwork(nn.Module):
    """The backbone with gated blocks (named ``names``, in execution order); see the module docstring."""

    input_dependent_cost = True  # the measurement takes MACs and batch-1 latency row by row

    def __init__(self, backbone: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.names = list(names)
        for name in self.names:
            if not isinstance(backbone.get_submodule(name), GatedBlock):
                raise ValueError(f"{name!r} is not a gated block")
        self.last_executed: torch.Tensor | None = None  # [rows, blocks] bool: which blocks ran for each row
        self.frozen = False

    def train(self, mode: bool = True) -> "SkipNetwork":
        super().train(mode)
        if self.frozen:  # the backbone's normalisation statistics and dropout stay as they are
            for m in self.backbone.modules():
                if isinstance(m, (nn.modules.batchnorm._NormBase, nn.Dropout)):
                    m.eval()
        return self

    def freeze_backbone_(self, frozen: bool = True) -> "SkipNetwork":
        """Train only the gates (``frozen``): every other parameter stops taking gradients, and
        normalisation layers keep their running statistics in training mode."""
        gates = {id(p) for b in self.gated() for p in b.gate.parameters()}
        for p in self.parameters():
            p.requires_grad_(not frozen or id(p) in gates)
        self.frozen = frozen
        return self.train(self.training)

    def set_drop_rate_(self, rate: float | None) -> "SkipNetwork":
        """Stochastic depth (Huang et al. 2016, row by row; LayerDrop): in training every gated
        block is skipped for a random share ``rate`` of the rows and the gates stay idle; ``None``
        hands the decisions back to the gates."""
        for b in self.gated():
            b.drop_rate = rate
        return self

    def gated(self) -> list[GatedBlock]:
        return [self.backbone.get_submodule(n) for n in self.names]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.backbone(*inputs)
        if not self.training and not _exporting():
            self.last_executed = torch.stack([b.last_open for b in self.gated()], 1)
        return out

    def set_thresholds_(self, value: float) -> "SkipNetwork":
        """The same threshold on every gate (``+inf``: every block skipped, ``-inf``: every block run)."""
        for b in self.gated():
            b.threshold.fill_(value)
        return self

    # -- stage by stage, for runtimes -------------------------------------------------------
    def _stageable(self) -> bool:
        return isinstance(self.backbone, nn.Sequential) and all("." not in n for n in self.names)

    def stages(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """(bodies, blocks): body ``k`` runs the ungated children between gated block ``k - 1`` and
        gated block ``k`` (an empty body is the identity), block ``k`` is the ``k``-th gated block
        without its gate (the gates run in PyTorch between the compiled graphs, in ``run_stages``)."""
        if not self._stageable():
            raise ValueError("stages need an nn.Sequential backbone whose gated blocks are its children")
        children = list(self.backbone.named_children())
        bodies, current = [], []
        for name, child in children:
            if name in self.names:
                bodies.append(_Chain(current))
                current = []
            else:
                current.append(child)
        bodies.append(_Chain(current))
        return bodies, [b.block for b in self.gated()]

    def run_stages(self, bodies: Sequence[Callable[..., torch.Tensor]], blocks: Sequence[Callable[..., torch.Tensor]],
                   inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The gating over ``stages()`` (eager modules or their compiled graphs): each gate decides
        on its block's input, the block runs on the open rows only."""
        gated = self.gated()
        h = bodies[0](*inputs)
        for k, block in enumerate(blocks):
            with torch.no_grad():
                h = gated[k].run_open(h, gated[k].decide(h), block)
            h = bodies[k + 1](h)
        self.last_executed = torch.stack([b.last_open for b in gated], 1)
        return h


class _Chain(nn.Module):
    """Children run in order (the first may take several inputs; none: the identity); a transient
    view built by ``stages()``, not held by the network."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not len(self.parts):
            return inputs[0]
        h = self.parts[0](*inputs)
        for part in self.parts[1:]:
            h = part(h)
        return h


@torch.no_grad()
def skippable_blocks(model: nn.Module, example_inputs: Sequence[torch.Tensor],
                     names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """{block name: one example row of its input}, in execution order. By default the residual
    blocks the model declares (modules with ``use_residual = True``, as the zoo's inverted
    residuals; the outermost ones); ``names`` picks any modules instead. Every block must be called
    with one tensor and return a tensor of the same shape (checked on one forward pass)."""
    modules = dict(model.named_modules())
    if names is None:
        found = [n for n, m in modules.items() if n and getattr(m, "use_residual", False) is True]
        names = [n for n in found if not any(n.startswith(o + ".") for o in found if o != n)]
        if not names:
            raise ValueError("no residual blocks found (modules with use_residual = True): name the blocks to "
                             "skip in 'blocks'")
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        raise ValueError(f"no module named {unknown}")
    inputs: dict[str, torch.Tensor] = {}
    bad: dict[str, str] = {}

    def hook(name):
        def record(module, args, kwargs, output):
            if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
                bad[name] = "it is not called with one tensor"
            elif not isinstance(output, torch.Tensor) or output.shape != args[0].shape:
                bad[name] = f"its output is not of its input's shape {tuple(args[0].shape)}"
            elif name in inputs:
                bad[name] = "it runs more than once in a forward pass"
            else:
                inputs[name] = args[0][:1].detach()
        return record

    handles = [modules[n].register_forward_hook(hook(n), with_kwargs=True) for n in names]
    was = model.training
    try:
        model.eval()(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    bad.update({n: "it does not run in a forward pass" for n in names if n not in inputs and n not in bad})
    if bad:
        raise ValueError("cannot skip " + "; ".join(f"{n!r}: {why}" for n, why in bad.items()))
    return inputs  # dicts keep insertion order: the order the blocks ran in


def attach_gates(model: nn.Module, example_inputs: Sequence[torch.Tensor], names: Sequence[str] | None = None,
                 temperature: float = 1.0, noise: bool = True) -> SkipNetwork:
    """A ``SkipNetwork`` over ``model`` (changed in place) with a gate before each skippable block."""
    blocks = skippable_blocks(model, example_inputs, names)
    device = next(model.parameters()).device
    for name, x in blocks.items():
        _replace(model, name, GatedBlock(model.get_submodule(name), gate_for(x).to(device), temperature, noise))
    return SkipNetwork(model, list(blocks))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


@torch.no_grad()
def block_macs(net: SkipNetwork, example_inputs: Sequence[torch.Tensor]) -> tuple[int, dict[str, int], dict[str, int]]:
    """(MACs of one row through every block with every gate running, {block: MACs of its block},
    {block: MACs of its gate}) from the executed graph."""
    from slimkit.measure.macs import count_macs_by_module

    saved = [b.threshold.clone() for b in net.gated()]
    try:
        net.set_thresholds_(-1e30)  # finite: the gates run, and every row is open
        macs = count_macs_by_module(net, [t[:1] for t in example_inputs])
    finally:
        for b, t in zip(net.gated(), saved):
            b.threshold.copy_(t)
    return (macs[""], {n: macs.get(f"backbone.{n}.block", 0) for n in net.names},
            {n: macs.get(f"backbone.{n}.gate", 0) for n in net.names})


@dataclass
class SkipPenalty:
    """``weight`` x (mean executed MACs of the batch / the backbone's - ``target``)^2, the executed
    MACs counted from the gates' straight-through values (the forward value is the real 0/1
    decision, the gradient reaches the gates)."""

    target: float
    backbone_macs: float  # one row through the backbone, without gates
    block_macs: list[float]  # each gated block's, in the network's order
    weight: float = 1.0
    per_block: bool = False  # ConvNet-AIG's target loss: every gate's batch execution rate pulled to one rate
    name: str = "skip"
    last_fraction: float = field(default=1.0, init=False)

    @property
    def block_rate(self) -> float:
        """The execution rate every gated block needs for the MACs share to meet the target."""
        return min(1.0, max(0.0, 1 - (1 - self.target) * self.backbone_macs / sum(self.block_macs)))

    def __call__(self, batch: Batch) -> torch.Tensor:
        net = getattr(batch.model, "module", batch.model)  # a DistributedDataParallel wrapper
        gates = [b.last_gate for b in net.gated()]
        skipped = sum(m * (1 - g.mean()) for m, g in zip(self.block_macs, gates))
        fraction = 1 - skipped / self.backbone_macs
        self.last_fraction = float(fraction.detach())
        if self.per_block:  # no block may settle shut (or open) for every row: that is static removal
            return torch.stack([(g.mean() - self.block_rate) ** 2 for g in gates]).mean()
        return (fraction - self.target) ** 2


@torch.no_grad()
def execution(net: SkipNetwork, inputs: Sequence[torch.Tensor], batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, executed [rows, blocks] bool) of ``net`` in evaluation mode over ``inputs``."""
    was = net.training
    net.eval()
    try:
        outs, ran = [], []
        for i in range(0, len(inputs[0]), batch):
            outs.append(net(*(t[i:i + batch] for t in inputs)))
            ran.append(net.last_executed)
        return torch.cat(outs), torch.cat(ran)
    finally:
        net.train(was)


def executed_share(ran: torch.Tensor, block_macs: Sequence[float], backbone_macs: float, gate_macs: float = 0.0
                   ) -> float:
    """Mean MACs per row as a share of the backbone's, from which blocks each row ran
    (``ran``: [rows, blocks] bool) and the MACs of each block and of all gates."""
    rates = ran.float().mean(0).tolist()
    skipped = sum(m * (1 - r) for m, r in zip(block_macs, rates))
    return (backbone_macs - skipped + gate_macs) / backbone_macs


@torch.no_grad()
def calibrate_threshold_(net: SkipNetwork, inputs: Sequence[torch.Tensor], target: float, block_macs: Sequence[float],
                         backbone_macs: float, gate_macs: float = 0.0, steps: int = 16) -> tuple[float, float]:
    """One threshold shared by the gates, found by bisection so that the mean executed MACs share
    on ``inputs`` comes closest to ``target`` (a higher threshold shuts more rows); written into
    the gates. The training decisions are noisy (a row opens with probability sigmoid(logit)), the
    evaluation ones are not, so trained gates rarely meet the target exactly. (threshold, share)."""

    def share(t: float) -> float:
        net.set_thresholds_(t)
        return executed_share(execution(net, inputs)[1], block_macs, backbone_macs, gate_macs)

    lo, hi = -20.0, 20.0
    best = min(((t, share(t)) for t in (0.0, lo, hi)), key=lambda ts: abs(ts[1] - target))
    for _ in range(steps):
        mid = (lo + hi) / 2
        got = share(mid)
        if abs(got - target) < abs(best[1] - target):
            best = (mid, got)
        if got > target:
            lo = mid
        else:
            hi = mid
    net.set_thresholds_(best[0])
    return best


def remove_least_used_(model: nn.Module, rates: dict[str, float], k: int) -> list[str]:
    """The static control: the ``k`` blocks of ``rates`` ({block: share of rows that ran it}) run
    least often replaced by the identity in ``model`` (a plain backbone, in place); their names."""
    from slimkit.techniques.pruning.blocks import remove_blocks_

    chosen = sorted(rates, key=lambda n: (rates[n], n))[:k]
    remove_blocks_(model, chosen)
    return chosen

