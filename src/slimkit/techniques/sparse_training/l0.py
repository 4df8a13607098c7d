"""L0 regularisation with hard-concrete gates (Louizos, Welling & Kingma, ICLR 2018).

A gate ``z = min(1, max(0, s * (zeta - gamma) + gamma))``, ``s = sigmoid((log u - log(1 - u) +
log_alpha) / beta)`` with ``u ~ U(0, 1)``, multiplies what it gates; it is exactly 0 or 1 with
nonzero probability, and the expected number of open gates, ``sum sigmoid(log_alpha - beta *
log(-gamma / zeta))``, is differentiable: the L0 norm becomes a loss term. At evaluation the gate
is deterministic, ``min(1, max(0, sigmoid(log_alpha) * (zeta - gamma) + gamma))``.

Two targets:

- ``weights``: one gate per weight (a parametrisation ``w * z`` of each Linear / Conv2d weight);
  the gates closed at the end zero their weights, stored as bitmask + values.
- ``channels``: one gate per output channel of every prunable group of torch-pruning's dependency
  graph (the group's BatchNorm output when it has one, else its conv's or linear's output; coupled
  layers share the gate). At the end each open gate's value is folded into the layer it gates and
  the closed channels are removed physically by the graph, as ``prune_structured`` removes them:
  a smaller dense model whose MACs and latency fall. Attention heads get one gate each
  (``HeadGates``, on the head's channels of the value projection) and are removed whole.

Written here: Louizos et al.'s reference is a research script for two architectures; the gates and
the penalty are a few dozen lines on the loop's loss terms, and physical removal is torch-pruning's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import copy
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from slimkit.train.objectives import Batch

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


class HardConcrete(nn.Module):
    """``n`` hard-concrete gates; sampled in training, deterministic in evaluation."""

    def __init__(self, shape: Sequence[int] | int, init_keep: float = 0.9, beta: float = BETA,
                 lr_scale: float = 1.0) -> None:
        super().__init__()
        if not 0 < init_keep < 1:
            raise ValueError(f"init_keep must be in (0, 1), got {init_keep}")
        if lr_scale <= 0:
            raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
        # log alpha = lr_scale * raw: Adam moves ``raw`` by about the learning rate per step, so
        # the gates learn lr_scale times faster than the weights they gate (they travel several
        # units of log alpha, weights a few hundredths)
        self.lr_scale = lr_scale
        self.log_alpha_raw = nn.Parameter(torch.full(tuple([shape] if isinstance(shape, int) else shape),
                                                     math.log(init_keep / (1 - init_keep)) / lr_scale))
        self.beta = beta

    @property
    def log_alpha(self) -> torch.Tensor:
        return self.log_alpha_raw * self.lr_scale

    def forward(self, sample: bool | None = None) -> torch.Tensor:
        """The gates: drawn (``sample``, default: in training mode) or deterministic."""
        if self.training if sample is None else sample:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def open_probability(self) -> torch.Tensor:
        """P(z != 0) per gate: the differentiable L0."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-GAMMA / ZETA))

    # the channel-gate protocol (``install_channel_gates``, ``remove_closed_channels_``), which
    # Bayesian compression's scales (``techniques/bayesian/compression.py``) also follow
    def draw(self, rows: int, sample: bool) -> torch.Tensor:
        """The gates for one forward pass of ``rows`` rows: one draw shared by the rows."""
        return self(sample=sample)

    def deterministic(self) -> torch.Tensor:
        """The gates at evaluation; exactly 0 where closed."""
        return self(sample=False)

    def strength(self) -> torch.Tensor:
        """Larger is more open: the channel a layer keeps when every gate is closed."""
        return self.log_alpha


class HeadGates(HardConcrete):
    """One hard-concrete gate per attention head, spread over the head's ``head_size`` channels of
    the value projection's output: a head's context is linear in its values, so gating them gates
    the head exactly. The penalty counts heads (``log_alpha`` and ``open_probability`` are per head)."""

    def __init__(self, heads: int, head_size: int, init_keep: float = 0.9, lr_scale: float = 1.0) -> None:
        super().__init__(heads, init_keep, lr_scale=lr_scale)
        self.head_size = head_size

    def draw(self, rows: int, sample: bool) -> torch.Tensor:
        return super().draw(rows, sample).repeat_interleave(self.head_size)

    def deterministic(self) -> torch.Tensor:
        return super().deterministic().repeat_interleave(self.head_size)

    def strength(self) -> torch.Tensor:
        return super().strength().repeat_interleave(self.head_size)


class _GatedWeight(nn.Module):
    """Parametrisation: the weight times its gates (one per weight)."""

    def __init__(self, gates: HardConcrete) -> None:
        super().__init__()
        self.gates = gates

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.gates()


@dataclass
class L0Penalty:
    """``weight`` x the expected share of gated parameters kept (each gate weighted by the
    parameters it carries)."""

    gates: list[tuple[HardConcrete, float]]  # (gates, parameters each gate carries)
    weight: float = 0.1
    name: str = "l0"
    trains_gates: bool = False  # True where the gates live outside the model (channel gates on hooks)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The gates, for ``fit``'s optimizer, when the model does not hold them itself."""
        return [p for g, _ in self.gates for p in g.parameters()] if self.trains_gates else []

    def __call__(self, batch: Batch) -> torch.Tensor:
        total = sum(g.log_alpha.numel() * cost for g, cost in self.gates)
        return sum(g.open_probability().sum() * cost for g, cost in self.gates) / total


def gate_weights_(weights: dict[str, nn.Module], init_keep: float, lr_scale: float = 1.0) -> dict[str, HardConcrete]:
    """A gate per weight of each named layer (``{name: layer}``), as a parametrisation."""
    gates = {}
    for name, layer in weights.items():
        gates[name] = HardConcrete(layer.weight.shape, init_keep, lr_scale=lr_scale).to(layer.weight.device)
        parametrize.register_parametrization(layer, "weight", _GatedWeight(gates[name]))
    return gates


@torch.no_grad()
def bake_weight_gates_(weights: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """Replace each parametrised weight by ``w * z`` with the deterministic gates (closed: 0)."""
    for layer in weights.values():
        layer.eval()
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return {name: layer.weight for name, layer in weights.items()}


@dataclass
class ChannelGate:
    """One gate vector on the output channels of a prunable group: the modules whose outputs it
    multiplies, the group's root layer (what torch-pruning prunes from) and its pruning function.
    ``gates`` follows ``HardConcrete``'s channel-gate protocol (``draw``, ``deterministic``,
    ``strength``)."""

    gates: nn.Module
    sites: list[nn.Module]
    root: nn.Module
    handler: object
    cost: float  # what one gate carries (a channel of the root layer, or a head)
    unit: int = 1  # channels removed together (a head's)


def channel_gates(model: nn.Module, example_inputs: Sequence[torch.Tensor], ignore: Sequence[nn.Module],
                  make_gates: Callable[[int], nn.Module], cost: str = "macs"):
    """The dependency graph and a ``ChannelGate`` per prunable group of Conv2d / Linear output
    channels (``ignore``: layers that keep their width), its gates made by ``make_gates(width)``
    (e.g. ``HardConcrete``). A gate's ``cost`` is what one channel of its root layer carries:
    multiply-accumulates per example (``macs``) or parameters."""
    from slimkit.techniques.pruning.structured import _call, _scalar_output, _traced, torch_pruning

    tp = torch_pruning()
    graph = _traced(lambda: tp.DependencyGraph().build_dependency(
        model, example_inputs=tuple(example_inputs), forward_fn=_call, output_transform=_scalar_output))
    per_channel_macs = _per_channel_macs(model, example_inputs)
    out = []
    for group in graph.get_all_groups(ignored_layers=list(ignore), root_module_types=[nn.Conv2d, nn.Linear]):
        root_dep = group[0].dep
        root = root_dep.target.module
        if root_dep.handler not in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
            continue
        norms = [dep.target.module for dep, _ in group
                 if isinstance(dep.target.module, nn.modules.batchnorm._BatchNorm)
                 and dep.handler == tp.prune_batchnorm_out_channels]
        producers = [dep.target.module for dep, _ in group if dep.handler == root_dep.handler
                     and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))]
        convs = [dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Conv2d)]
        if any(1 < c.groups < c.in_channels or (c.groups > 1 and c.in_channels != c.out_channels) for c in convs):
            continue  # grouped (not depthwise) convolutions take channels in whole groups: not gated
        sites = norms or producers or [root]
        width = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        gates = make_gates(width).to(next(root.parameters()).device)
        carried = per_channel_macs.get(id(root), 0.0) if cost == "macs" else root.weight.numel() / width
        out.append(ChannelGate(gates, sites, root, root_dep.handler, max(carried, 1.0)))
    return graph, out


def head_gates(model: nn.Module, example_inputs: Sequence[torch.Tensor], graph, attention: Sequence,
               init_keep: float, lr_scale: float = 1.0, cost: str = "macs") -> list[ChannelGate]:
    """A ``ChannelGate`` of ``HeadGates`` per attention module whose value projection is known by
    name: the gates multiply the value projection's output, and a closed head is removed through
    the query projection's group (q, k, v rows and the output projection's columns together), as
    ``prune_structured`` removes heads. A head's cost: its q, k, v and output-projection share,
    four times its query rows' multiply-accumulates (``macs``; the attention matmuls, which grow
    with the sequence, are left out) or parameters."""
    from slimkit.techniques.pruning.structured import torch_pruning

    tp = torch_pruning()
    macs = _per_channel_macs(model, example_inputs) if cost == "macs" else {}
    out = []
    for a in attention:
        if a.value is None or a.heads < 2:
            continue
        q = a.projections[0]
        per_row = macs.get(id(q), 0.0) if cost == "macs" else q.in_features
        gates = HeadGates(a.heads, a.head_size, init_keep, lr_scale).to(q.weight.device)
        out.append(ChannelGate(gates, [a.value], q, tp.prune_linear_out_channels,
                               max(4.0 * per_row * a.head_size, 1.0), unit=a.head_size))
    return out


@torch.no_grad()
def _per_channel_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[int, float]:
    """{id(layer): multiply-accumulates per output channel per example} of every Conv2d and Linear."""
    macs: dict[int, float] = {}

    def hook(module, args, output):
        rows = output.shape[0]
        if isinstance(module, nn.Conv2d):
            macs[id(module)] = output[0, 0].numel() * module.weight[0].numel()
        else:
            macs[id(module)] = output.numel() / rows / module.out_features * module.in_features
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was = model.training
        model.eval()(*example_inputs)
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return macs


def install_channel_gates(gates: list[ChannelGate]) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks multiplying each site's output channels (dim 1 of conv and BatchNorm outputs,
    the last dim of a linear's) by the group's gates: ``draw(rows, sample)`` gives one vector for
    the whole batch or one per row."""
    handles = []
    for gate in gates:
        for site in gate.sites:
            def hook(module, args, output, gate=gate):
                rows = output.shape[0]
                z = gate.gates.draw(rows, module.training)  # the model's mode: validation sees the deterministic gates
                lead = rows if z.dim() == 2 else 1
                if isinstance(module, nn.Linear):
                    return output * z.view(lead, *([1] * (output.dim() - 2)), -1)
                return output * z.view(lead, -1, *([1] * (output.dim() - 2)))
            handles.append(site.register_forward_hook(hook))
    return handles


@torch.no_grad()
def remove_closed_channels_(model: nn.Module, graph, gates: list[ChannelGate],
                            shadows: dict[int, torch.Tensor] | None = None) -> dict[str, int]:
    """Fold each open gate's deterministic value into its sites (scales the channel's output:
    BatchNorm's weight and bias, or the layer's weight rows and bias) and remove the closed
    channels through the dependency graph; {root layer name: channels removed}.

    ``shadows`` ({id(layer): tensor of its weight's shape}, e.g. posterior variances) lose the
    entries their layer's weight loses: torch-pruning's own handler prunes a copy of the layer
    holding the shadow, so every coupling (flattened inputs, depthwise convs) is followed alike."""
    names = {id(m): n for n, m in model.named_modules()}
    removed = {}
    for gate in gates:
        z = gate.gates.deterministic().detach()
        for site in gate.sites:
            shape = (-1,) + (1,) * (site.weight.dim() - 1)
            site.weight.mul_(z.view(shape))
            if site.bias is not None:
                site.bias.mul_(z)
        closed = (z == 0).nonzero().flatten().tolist()
        width = z.numel()
        if len(closed) == width:  # never remove a whole layer: keep its strongest channel or head (at zero)
            best = int(gate.gates.strength().argmax()) // gate.unit
            closed = [i for i in closed if i // gate.unit != best]
        if closed:
            group = graph.get_pruning_group(gate.root, gate.handler, idxs=closed)
            if shadows:
                _prune_shadows(group, shadows)
            group.prune()
            removed[names.get(id(gate.root), "?")] = len(closed)
    return removed


def _prune_shadows(group, shadows: dict[int, torch.Tensor]) -> None:
    """Apply each of ``group``'s dependencies that targets a shadowed layer to a copy of the layer
    whose weight is the shadow (the handler slices it exactly as it will slice the weight)."""
    for dep, idxs in group:
        module = dep.target.module
        if id(module) not in shadows or not isinstance(module, nn.Module):
            continue
        twin = copy.deepcopy(module)
        twin.weight = nn.Parameter(shadows[id(module)].clone(), requires_grad=False)
        dep.handler.__self__.pruning_dim = dep.target.pruning_dim  # what Dependency.__call__ sets
        plain = [i.idx if hasattr(i, "idx") else int(i) for i in idxs]
        dep.handler(twin, plain)
        shadows[id(module)] = twin.weight.detach()
