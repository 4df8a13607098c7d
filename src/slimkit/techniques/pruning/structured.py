"""Structured pruning: whole conv channels, linear neurons and attention heads removed, so the
model itself becomes a smaller dense model that runs and exports anywhere.

Which layers a removed channel touches (the next conv's input, a BatchNorm, both sides of a
residual add, a slice of a concatenation, the groups of a depthwise conv, the q/k/v rows and the
output projection's columns of an attention head) is read from a dependency graph traced from
the model's forward pass: torch-pruning's DepGraph (Fang et al., CVPR 2023), the maintained engine
for this; writing a second tracer would only add bugs. slimkit adds on top what a recipe needs:
the criteria (with network slimming's BN penalty and Taylor gradients from the task's loss),
targets in MACs or latency, per-layer ratios from a sensitivity scan, attention-head bookkeeping
for ``transformers`` modules, block removal, and a recorded skeleton for reloading.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn as nn
from torch.utils._pytree import tree_leaves

from slimkit.core.errors import ConfigError, SlimkitError
from slimkit.data.positions import batch_mask, real_positions, real_rows
from slimkit.search.scan import Progress

Criterion = Literal["l1", "l2", "bn_scale", "taylor", "activation", "random"]
Allocation = Literal["uniform", "global", "sensitivity"]
_HEAD_COUNT = ("num_attention_heads", "num_heads", "n_heads")
_HEAD_SIZE = ("head_dim", "attention_head_size", "head_size")
_QKV = (("q", "query"), ("k", "key"), ("v", "value"))  # child names' first word (q_proj, q_lin, query)


def torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError:
        raise SlimkitError("structured pruning needs the 'torch-pruning' package: pip install torch-pruning") from None
    return tp


def importance(criterion: Criterion, stats: dict[nn.Module, torch.Tensor] | None = None):
    """The group importance for a criterion: each channel's score is reduced over every layer
    coupled to it (a residual add's channel is scored by all the convs writing to it).
    ``activation`` reads ``stats`` (see ``activation_stats``), filled before each pruning step."""
    imp = torch_pruning().importance
    if criterion in ("l1", "l2"):
        return imp.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2)
    if criterion == "bn_scale":
        return imp.BNScaleImportance()
    if criterion == "taylor":
        return imp.GroupTaylorImportance()
    if criterion == "activation":
        return _activation_importance()(stats if stats is not None else {})
    if criterion == "random":
        return imp.RandomImportance()
    raise ValueError(f"unknown criterion {criterion!r}")


def _activation_importance():
    """A class made on first use, so torch-pruning is imported only when a step runs."""
    tp = torch_pruning()
    consumers = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)

    class ActivationImportance(tp.importance.GroupMagnitudeImportance):
        """What removing a channel takes from the layers that read it: for each reader,
        ``sqrt(E[x_c^2]) * ||W[:, c]||`` (the RMS of channel c's contribution to that layer's output,
        the structured form of Wanda's |W| * ||X||), summed over the readers. Data-aware and
        gradient-free, so it works on a model at the optimum of its loss (where Taylor scores vanish)."""

        def __init__(self, stats: dict[nn.Module, torch.Tensor]) -> None:
            super().__init__(p=2, group_reduction="sum", normalizer="mean")
            self.stats = stats

        @torch.no_grad()
        def __call__(self, group):
            scores, roots = [], []
            for i, (dep, idxs) in enumerate(group):
                layer = dep.layer
                if dep.pruning_fn not in consumers or layer not in self.stats:
                    continue
                w = layer.weight.data
                norms = w.transpose(0, 1).flatten(1).norm(dim=1)  # per input channel (of a group)
                if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups not in (1, layer.in_channels):
                    norms = norms.repeat(layer.groups)
                scores.append((norms * self.stats[layer].sqrt())[idxs])
                roots.append(group[i].root_idxs)
            if not scores:  # nothing measured reads these channels: fall back to their weights' norm
                return super().__call__(group)
            return self._normalize(self._reduce(scores, roots), self.normalizer)

    return ActivationImportance


@torch.no_grad()
def activation_stats(model: nn.Module, batches: Sequence[Sequence[torch.Tensor]],
                     mask_input: int | None = None) -> dict[nn.Module, torch.Tensor]:
    """{Linear/Conv layer: mean of its input squared, per input channel} over ``batches``
    (``mask_input``: the batches' attention mask; a linear's mean is then over real tokens)."""
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def hook(module, args):
        x = args[0].detach().float()
        if not isinstance(module, nn.modules.conv._ConvNd):
            x = real_rows(x)
        channels = x.transpose(0, 1).flatten(1) if isinstance(module, nn.modules.conv._ConvNd) else x.flatten(0, -2).T
        sums[module] = sums.get(module, 0) + channels.pow(2).sum(1)
        counts[module] = counts.get(module, 0) + channels.shape[1]

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = model.training
    try:
        model.eval()
        for batch in batches:
            with real_positions(batch_mask(batch, mask_input)):
                model(*batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {m: sums[m] / counts[m] for m in sums}


@dataclass
class Attention:
    """A ``transformers``-style attention module: q/k/v projections split into ``heads`` heads."""

    name: str
    module: nn.Module
    projections: list[nn.Linear]
    head_size: int
    named: bool = False  # the projections were told apart by name: q, k, v in that order

    @property
    def value(self) -> nn.Linear | None:
        """The value projection, where the names tell it (a head's output is linear in it)."""
        return self.projections[2] if self.named else None

    @property
    def heads(self) -> int:
        return self.projections[0].out_features // self.head_size


def find_attention(model: nn.Module) -> list[Attention]:
    """Modules with a head count and head size attribute and three Linear children of width
    heads x head size: those named q/k/v (BERT's ``query/key/value``, ViT's ``q_proj/k_proj/v_proj``,
    beside an output projection of the same width), or the only three of that width."""
    found = []
    for name, module in model.named_modules():
        heads = next((getattr(module, a) for a in _HEAD_COUNT if isinstance(getattr(module, a, None), int)), None)
        size = next((getattr(module, a) for a in _HEAD_SIZE if isinstance(getattr(module, a, None), int)), None)
        if heads is None or size is None or isinstance(module, nn.MultiheadAttention):
            continue  # torch-pruning handles nn.MultiheadAttention itself
        fits = {n: c for n, c in module.named_children() if isinstance(c, nn.Linear) and c.out_features == heads * size}
        named = [fits[n] for role in _QKV for n in fits if n.split("_")[0] == role[0] or n.split("_")[0] == role[1]]
        projections = named if len(named) == 3 else list(fits.values())
        if len(projections) == 3:
            found.append(Attention(name, module, projections, size, named=len(named) == 3))
    return found


def sync_attention_(attention: list[Attention]) -> dict[str, int]:
    """After heads were removed: the modules' head counts (and BERT's ``all_head_size``) follow
    their projections. Returns {module: heads}."""
    for a in attention:
        for attr in _HEAD_COUNT:
            if isinstance(getattr(a.module, attr, None), int):
                setattr(a.module, attr, a.heads)
        if isinstance(getattr(a.module, "all_head_size", None), int):
            a.module.all_head_size = a.heads * a.head_size
    return {a.name: a.heads for a in attention}


def head_removal_fails(model: nn.Module, example_inputs: Sequence[torch.Tensor], named_only: bool = True) -> str | None:
    """Why removing a head breaks this model (one head of every attention module removed in a copy,
    then a forward pass), or None. ``named_only``: only modules whose value projection is known by
    name (those L0 gates). Some attention modules keep per-head tensors outside their projections
    (a relative position bias table shared by the layers) that the graph does not slice."""
    import copy

    tp = torch_pruning()
    twin = copy.deepcopy(model).eval()
    attention = [a for a in find_attention(twin) if (a.value is not None or not named_only) and a.heads >= 2]
    if not attention:
        return None
    with torch.no_grad():
        shapes = [t.shape for t in output_leaves(twin(*example_inputs))]
    try:
        graph = _traced(lambda: tp.DependencyGraph().build_dependency(
            twin, example_inputs=tuple(example_inputs), forward_fn=_call, output_transform=_scalar_output))
        for a in attention:
            graph.get_pruning_group(a.projections[0], tp.prune_linear_out_channels, idxs=list(range(a.head_size))).prune()
        sync_attention_(attention)
        with torch.no_grad():
            after = [t.shape for t in output_leaves(twin(*example_inputs))]
    except Exception as err:  # noqa: BLE001 - any failure means: do not gate heads here
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return None if after == shapes else f"output shapes change from {shapes} to {after}"


def output_leaves(output: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(output.to_tuple() if hasattr(output, "to_tuple") else output)
            if isinstance(t, torch.Tensor)]


@torch.no_grad()
def fixed_width_layers(model: nn.Module, example_inputs: Sequence[torch.Tensor],
                       attention: Sequence[Attention] = ()) -> list[nn.Module]:
    """Layers that keep their width: every Linear, conv or Embedding whose output width equals an
    output's feature width (the classifier; in an encoder whose output is its hidden state, every
    layer writing the residual stream), and in a transformer every layer writing the residual
    stream (its width, the attention projections' input width, is kept: heads and FFN neurons
    are what is pruned). The q/k/v projections themselves are pruned by whole heads."""
    widths = set()
    for t in output_leaves(model.eval()(*example_inputs)):
        if t.dim() >= 2:
            widths.add(int(t.shape[1] if t.dim() == 4 else t.shape[-1]))
    widths |= {a.projections[0].in_features for a in attention}
    projections = {id(p) for a in attention for p in a.projections}
    out = []
    for m in model.modules():
        width = (m.out_features if isinstance(m, nn.Linear) else m.out_channels if isinstance(m, nn.modules.conv._ConvNd)
                 else m.embedding_dim if isinstance(m, nn.Embedding) else None)
        if width in widths and id(m) not in projections:
            out.append(m)
    return out


@dataclass
class Plan:
    """How to prune: the criterion, a channel ratio (uniform or global) or per-layer ratios, a
    head ratio, and the layers left alone."""

    criterion: Criterion = "l1"
    ratio: float = 0.0
    allocation: Allocation = "uniform"
    layer_ratios: dict[str, float] | None = None
    heads: float = 0.0
    ignore: Sequence[str] = ()
    max_ratio: float = 0.9
    round_to: int | None = None
    steps: int = 1
    batches: Sequence[Sequence[torch.Tensor]] = ()  # activation: the batches its statistics come from
    mask_input: int | None = None  # which of the batches' inputs is an attention mask (padding not counted)


class StructuredPruner:
    """Prunes ``model`` by a ``Plan``: attention heads first (whole heads, scored by the criterion
    over each head's q/k/v rows and output-projection columns, the same number removed in every
    attention layer), then channels and neurons with one torch-pruning ``MetaPruner``.
    ``step()`` prunes one increment (``Plan.steps`` increments reach ``Plan.ratio``), and
    ``removed`` lists what each coupled layer lost."""

    def __init__(self, model: nn.Module, example_inputs: Sequence[torch.Tensor], plan: Plan) -> None:
        self.model, self.inputs, self.plan = model, tuple(example_inputs), plan
        modules = dict(model.named_modules())
        unknown = [n for n in plan.ignore if n not in modules]
        if unknown:
            raise ConfigError(f"prune_structured: ignore names no module: {unknown}")
        bad = [n for n in (plan.layer_ratios or {}) if n not in modules]
        if bad:
            raise ConfigError(f"prune_structured: layer ratios name no module: {bad}")
        if plan.criterion == "activation" and not plan.batches:
            raise ConfigError("prune_structured: the activation criterion needs batches to measure activations on")
        if plan.heads and plan.criterion == "bn_scale":
            raise ConfigError("prune_structured: bn_scale scores BatchNorm channels and attention heads have none; "
                              "score heads with l1, l2, taylor or random")
        model.eval()
        with torch.no_grad():
            self.output_shapes = [t.shape for t in output_leaves(model(*self.inputs))]
        self.attention = find_attention(model)
        self.removed: list[tuple[str, str, list[int]]] = []
        self.steps_done = 0
        self._pruner = None
        self.stats: dict[nn.Module, torch.Tensor] = {}  # activation statistics, refreshed before each step
        self.score = importance(plan.criterion, self.stats)

    def _refresh_stats(self) -> None:
        if self.plan.criterion == "activation":
            self.stats.clear()
            self.stats.update(activation_stats(self.model, self.plan.batches, self.plan.mask_input))

    @property
    def pruner(self):
        """The torch-pruning ``MetaPruner`` for channels, built on first use (after head removal)."""
        if self._pruner is None:
            tp = torch_pruning()
            modules = dict(self.model.named_modules())
            plan = self.plan
            ratio_dict = None if plan.layer_ratios is None else \
                {modules[n]: r for n, r in plan.layer_ratios.items() if r > 0}
            ignored = fixed_width_layers(self.model, self.inputs, self.attention) + [modules[n] for n in plan.ignore]
            # q/k/v are registered as heads so that no channel inside a head is pruned
            self._pruner = _traced(lambda: tp.pruner.MetaPruner(
                self.model, self.inputs, importance=self.score,
                global_pruning=plan.allocation == "global", pruning_ratio=plan.ratio if ratio_dict is None else 0.0,
                pruning_ratio_dict=ratio_dict, max_pruning_ratio=plan.max_ratio, iterative_steps=plan.steps,
                ignored_layers=ignored, round_to=plan.round_to,
                num_heads={p: a.heads for a in self.attention for p in a.projections}, prune_num_heads=False,
                prune_head_dims=False, forward_fn=_call, output_transform=_scalar_output))
        return self._pruner

    def step(self) -> None:
        if self.steps_done == 0 and self.plan.heads:
            self._refresh_stats()
            self._prune_heads()
        if self.plan.ratio or self.plan.layer_ratios:
            self._refresh_stats()
            for group in self.pruner.step(interactive=True):
                self._record(group)
                group.prune()
        self.steps_done += 1
        self.check()

    def _prune_heads(self) -> None:
        reason = head_removal_fails(self.model, self.inputs, named_only=False)
        if reason is not None:
            raise ConfigError(f"prune_structured: removing attention heads breaks this model ({reason}); set heads: 0 "
                              "to prune channels and FFN neurons only")
        tp = torch_pruning()
        graph = _traced(lambda: tp.DependencyGraph().build_dependency(
            self.model, example_inputs=self.inputs, forward_fn=_call, output_transform=_scalar_output))
        score = self.score
        for a in self.attention:
            heads, size = a.heads, a.head_size
            drop = min(int(self.plan.heads * heads + 0.5), heads - 1)
            if drop <= 0:
                continue
            q = a.projections[0]
            every = graph.get_pruning_group(q, tp.prune_linear_out_channels, idxs=list(range(heads * size)))
            per_head = score(every).view(heads, size).mean(1)
            worst = torch.topk(per_head, drop, largest=False).indices.sort().values.tolist()
            group = graph.get_pruning_group(q, tp.prune_linear_out_channels,
                                            idxs=[h * size + i for h in worst for i in range(size)])
            self._record(group)
            group.prune()
        sync_attention_(self.attention)

    def _record(self, group) -> None:
        names = {id(m): n for n, m in self.model.named_modules()}
        for dep, idxs in group:
            if id(dep.target.module) in names:
                self.removed.append((names[id(dep.target.module)], getattr(dep.handler, "__name__", str(dep.handler)),
                                     sorted(map(int, idxs))))

    @torch.no_grad()
    def check(self) -> None:
        shapes = [t.shape for t in output_leaves(self.model.eval()(*self.inputs))]
        if shapes != self.output_shapes:
            raise SlimkitError(f"structured pruning changed the model's output shapes from {self.output_shapes} to "
                               f"{shapes}; name the layer writing the output in 'ignore'")

    def prunable_layers(self) -> list[str]:
        """Names of the layers that root a prunable group (the layers a per-layer ratio may name)."""
        tp = torch_pruning()
        names = {id(m): n for n, m in self.model.named_modules()}
        roots = []
        for group in self.pruner.DG.get_all_groups(ignored_layers=self.pruner.ignored_layers,
                                                   root_module_types=self.pruner.root_module_types):
            module = group[0].dep.target.module
            if group[0].dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels) \
                    and id(module) in names and not any(module is p for a in self.attention for p in a.projections):
                roots.append(names[id(module)])
        return roots


def _call(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    return model(*inputs)


def _scalar_output(output: Any) -> torch.Tensor:
    """One tensor the dependency graph traces back from (the sum of every output tensor)."""
    leaves = output_leaves(output)
    return sum(t.float().sum() for t in leaves) if leaves else output


def _traced(build: Callable[[], Any]) -> Any:
    """Build a dependency graph, turning the tracer's failures into an error a user can act on."""
    import warnings

    try:
        with warnings.catch_warnings():
            # parameters used outside a layer (ViT's class token and position table) are handled by
            # torch-pruning's default (their last dimension); it warns about each
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return build()
    except (ZeroDivisionError, IndexError, KeyError, RuntimeError) as err:
        raise SlimkitError(
            f"torch-pruning's dependency graph could not follow this model's forward pass ({type(err).__name__}: "
            f"{err}). Known case: a channel shuffle (ShuffleNet) permutes channels through a reshape the graph "
            "cannot map. Use unstructured pruning (prune) for such a model") from err


def attention_heads(model: nn.Module) -> dict[str, int]:
    return {a.name: a.heads for a in find_attention(model)}


def sensitivity_ratios(model: nn.Module, example_inputs: Sequence[torch.Tensor], plan: Plan,
                       loss: Callable[[nn.Module], float], grid: Sequence[float], target: Callable[[nn.Module], float],
                       budget: float, progress: Progress | None = None,
                       time_budget: float | None = None) -> tuple[dict[str, float], dict]:
    """Per-layer ratios from a sensitivity scan (Distiller's method): each prunable layer alone is
    pruned at every ratio of ``grid`` and the validation loss measured; then the largest ratio per
    layer whose loss increase stays under a threshold is taken, the threshold found by bisection
    so that ``target(pruned model) <= budget`` (e.g. MACs). ``progress`` is told after each probe."""
    from slimkit.search import Option, sensitivity, threshold

    base_loss = loss(model)
    layers = StructuredPruner(copy.deepcopy(model), example_inputs, plan).prunable_layers()

    def pruned(ratios: dict[str, float]) -> nn.Module:
        trial = copy.deepcopy(model)
        StructuredPruner(trial, example_inputs, _replace(plan, layer_ratios=ratios, allocation="uniform")).step()
        return trial

    table = sensitivity(layers, list(grid), lambda name, r: loss(pruned({name: r})) - base_loss, progress=progress,
                        time_budget=time_budget, what="sensitivity allocation")
    curves = {name: {o.choice: o.drop for o in options} for name, options in table.items()}
    ordered = {name: [Option(r, drop=curve[r]) for r in sorted(curve)] for name, curve in curves.items()}
    found = threshold(ordered, lambda ratios: target(pruned(ratios)), budget, none=0.0)
    if found is None:
        raise SlimkitError(f"the sensitivity scan cannot reach the target: the largest ratios of the grid {list(grid)} "
                           "still exceed it; extend the grid or lower the target")
    chosen, level = found
    return chosen, {"threshold": level, "curves": {n: {str(r): round(v, 5) for r, v in c.items()}
                                                   for n, c in curves.items()}}


def _replace(plan: Plan, **changes: Any) -> Plan:
    return Plan(**{**plan.__dict__, **changes})
