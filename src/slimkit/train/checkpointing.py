"""Gradient checkpointing with a memory planner (``TrainConfig.checkpointing``).

A model's segments are the children of one container (an ``nn.Sequential`` such as a zoo model's
``features``, a transformer's ``nn.ModuleList`` of layers, a 64-block MLP), named or found. A
checkpointed group of consecutive segments keeps only its input during the forward pass and
recomputes its activations when backward reaches it (``torch.utils.checkpoint``, non-reentrant:
RNG state restored so dropout repeats; BatchNorm running statistics are not updated twice).

Which groups to checkpoint is planned from what one forward pass of a real batch measures per
segment: the bytes it saves for backward (``saved_tensors_hooks``), the bytes of its input, and
its forward time. Predicted saved bytes of a plan::

    sum(saved of segments left alone) + sum(input of each checkpointed group)
      + max(saved of one checkpointed group: rematerialised during its backward) + saved outside segments

Strategies at a budget (a fraction of the unplanned saved bytes):

- ``sqrt``: the textbook baseline (Chen et al., "Training Deep Nets with Sublinear Memory Cost",
  2016): sqrt(n) groups of sqrt(n) segments, every group checkpointed, whatever the budget.
- ``plan``: the cheapest plan under the budget: a dynamic programme over the chain (groups of any
  length, each checkpointed or not) that minimises recompute time subject to the predicted bytes,
  for each cap on the largest group's saved bytes. Cheap segments with large activations are
  checkpointed first; expensive ones with small activations are kept.
- ``all``: every segment checkpointed on its own.

Groups of several segments need a container whose forward chains its children (``nn.Sequential``);
for other containers (a ``ModuleList`` its parent loops over with extra arguments) each group is
one segment. ``plan_within_budget`` measures a step with the plan installed (the profile cannot
see backward's temporaries) and plans again, tighter, while the measured bytes exceed the budget.
"""

from __future__ import annotations

import contextlib
import math
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn as nn
from pydantic import Field
from torch.utils.checkpoint import checkpoint

from slimkit.core.config import Config
from slimkit.core.errors import ConfigError
from slimkit.train.callbacks import Callback, FitState

Strategy = Literal["plan", "sqrt", "all"]


class CheckpointConfig(Config):
    segments: str | list[str] | None = Field(
        None, description="the container whose children are the segments (a module name), or the segments' "
                          "module names in forward order; default: the Sequential/ModuleList with the most children")
    strategy: Strategy = Field("plan", description="plan: cheapest recompute under the budget, from measured "
                                                   "segment sizes and times; sqrt: sqrt(n) groups (Chen et al. "
                                                   "2016); all: every segment")
    budget: float = Field(0.25, gt=0, le=1, description="saved activation bytes allowed, as a fraction of the "
                                                         "unplanned model's (plan only)")


# -- segments -------------------------------------------------------------------------------------

@dataclass
class Segments:
    container: str  # "" for the model itself
    names: list[str]  # module names, in forward order
    chained: bool  # the container's forward feeds each child's output to the next (nn.Sequential)


def find_segments(model: nn.Module, spec: str | list[str] | None = None) -> Segments:
    """The segments ``spec`` names (a container, or a list of modules), or the ``nn.Sequential`` /
    ``nn.ModuleList`` with the most children (ties: the outermost); failing that, the module with
    the most children that hold weights (checkpointed one by one)."""
    modules = dict(model.named_modules())
    if isinstance(spec, list):
        unknown = [n for n in spec if n not in modules]
        if unknown:
            raise ConfigError(f"checkpointing.segments: no module named {unknown}")
        if len(spec) < 2:
            raise ConfigError("checkpointing.segments: name at least two segments")
        parents = {n.rpartition(".")[0] for n in spec}
        container = parents.pop() if len(parents) == 1 else None
        chained = (container is not None and isinstance(modules[container], nn.Sequential)
                   and [f"{container}.{c}" if container else c for c, _ in modules[container].named_children()] == spec)
        return Segments(container or "", list(spec), chained)
    if isinstance(spec, str):
        if spec not in modules:
            raise ConfigError(f"checkpointing.segments: no module named {spec!r}")
        candidates = [spec]
    else:
        candidates = [n for n, m in modules.items() if isinstance(m, (nn.Sequential, nn.ModuleList))]
        candidates.sort(key=lambda n: (-len(list(modules[n].children())), n.count(".")))
    for name in candidates:
        children = [f"{name}.{c}" if name else c for c, _ in modules[name].named_children()]
        if len(children) >= 2:
            return Segments(name, children, isinstance(modules[name], nn.Sequential))
    if spec is None:  # any other container (an fx GraphModule after fusion): its children with weights, one by one
        best = max(modules, key=lambda n: sum(1 for _, c in modules[n].named_children() if _has_weights(c)))
        children = [f"{best}.{c}" if best else c for c, m in modules[best].named_children() if _has_weights(m)]
        if len(children) >= 2:
            return Segments(best, children, False)
    raise ConfigError("checkpointing: no Sequential or ModuleList with two or more children to checkpoint; "
                      "name the segments (checkpointing.segments)")


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


# -- measurement ----------------------------------------------------------------------------------

@dataclass
class SegmentProfile:
    name: str
    saved_bytes: int  # bytes this segment saves for backward (storages counted once)
    input_bytes: int  # bytes of its tensor inputs (what a checkpoint of it keeps)
    forward_seconds: float


@dataclass
class Profile:
    segments: list[SegmentProfile]
    outside_bytes: int  # saved for backward outside the segments (stem, head, loss)

    @property
    def total_bytes(self) -> int:
        return self.outside_bytes + sum(s.saved_bytes for s in self.segments)


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def profile_segments(model: nn.Module, segments: Segments, inputs: Sequence[torch.Tensor],
                     repeats: int = 3) -> Profile:
    """Per segment: bytes saved for backward, input bytes, forward time (median of ``repeats``
    passes), from forward passes of ``inputs`` with gradients on (nothing is trained)."""
    modules = dict(model.named_modules())
    current: list[int | None] = [None]
    saved = [0] * len(segments.names)
    outside = [0]
    seen: set[tuple[int, int]] = set()
    input_bytes = [0] * len(segments.names)
    times: list[list[float]] = [[] for _ in segments.names]
    started = [0.0] * len(segments.names)

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in seen and not isinstance(t, nn.Parameter) and key[0]:
            seen.add(key)
            if current[0] is None:
                outside[0] += key[1]
            else:
                saved[current[0]] += key[1]
        return t

    def enter(i):
        def hook(module, args):
            current[0] = i
            input_bytes[i] = sum(a.untyped_storage().nbytes() for a in args if isinstance(a, torch.Tensor))
            started[i] = time.perf_counter()
        return hook

    def leave(i):
        def hook(module, args, out):
            times[i].append(time.perf_counter() - started[i])
            current[0] = None
        return hook

    handles = []
    for i, name in enumerate(segments.names):
        handles += [modules[name].register_forward_pre_hook(enter(i)), modules[name].register_forward_hook(leave(i))]
    was_training = model.training
    model.train()
    try:  # random draws (dropout) and BatchNorm statistics as if these passes had not run
        with torch.random.fork_rng(devices=[]), _norm_statistics_frozen([model]):
            for r in range(repeats):
                seen.clear()
                saved[:] = [0] * len(saved)
                outside[0] = 0
                with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    out = model(*inputs)
                del out
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    unreached = [n for n, t in zip(segments.names, times) if not t]
    if unreached:
        raise ConfigError(f"checkpointing: segments {unreached} are never called in the forward pass")
    return Profile([SegmentProfile(n, saved[i], input_bytes[i], sorted(times[i])[len(times[i]) // 2])
                    for i, n in enumerate(segments.names)], outside[0])


def called_segments(model: nn.Module, segments: Segments, inputs: Sequence[torch.Tensor]) -> Segments:
    """``segments`` without those the forward pass never calls (a found container may hold
    modules its forward does not run as children: a fused model's originals, quantizers)."""
    modules = dict(model.named_modules())
    called: set[str] = set()
    handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: called.add(n)) for n in segments.names]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), _norm_statistics_frozen([model]):
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    if len(called) == len(segments.names):
        return segments
    names = [n for n in segments.names if n in called]
    if len(names) < 2:
        raise ConfigError(f"checkpointing: the forward pass calls {len(names)} of the segments found in "
                          f"{segments.container or 'the model'}; name the segments (checkpointing.segments)")
    return Segments(segments.container, names, False)


# -- plans ----------------------------------------------------------------------------------------

@dataclass
class Plan:
    groups: list[tuple[int, int, bool]]  # (start, stop, checkpointed) covering the segments in order
    predicted_bytes: int
    recompute_seconds: float
    strategy: str
    budget_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def checkpointed(self) -> list[tuple[int, int]]:
        return [(a, b) for a, b, c in self.groups if c]


def predicted_bytes(profile: Profile, groups: Sequence[tuple[int, int, bool]]) -> int:
    seg = profile.segments
    kept = sum(seg[k].saved_bytes for a, b, c in groups if not c for k in range(a, b))
    inputs = sum(seg[a].input_bytes for a, b, c in groups if c)
    remat = max((sum(seg[k].saved_bytes for k in range(a, b)) for a, b, c in groups if c), default=0)
    return profile.outside_bytes + kept + inputs + remat


def _recompute(profile: Profile, groups) -> float:
    return sum(profile.segments[k].forward_seconds for a, b, c in groups if c for k in range(a, b))


def sqrt_plan(profile: Profile, chained: bool) -> Plan:
    n = len(profile.segments)
    size = max(1, math.ceil(math.sqrt(n))) if chained else 1
    groups = [(a, min(a + size, n), True) for a in range(0, n, size)]
    return Plan(groups, predicted_bytes(profile, groups), _recompute(profile, groups), "sqrt")


def all_plan(profile: Profile) -> Plan:
    groups = [(k, k + 1, True) for k in range(len(profile.segments))]
    return Plan(groups, predicted_bytes(profile, groups), _recompute(profile, groups), "all")


def cheapest_plan(profile: Profile, budget_bytes: int, chained: bool, buckets: int = 256) -> Plan:
    """The plan with the least recompute time whose predicted bytes fit ``budget_bytes``.

    For each cap R on one checkpointed group's saved bytes, a dynamic programme over the chain
    finds, per amount of memory kept (in ``buckets`` steps of the budget, rounded up, so a plan it
    accepts fits), the least recompute time: segment k either stays (keeps its saved bytes) or
    starts a checkpointed group [k, j) with saved bytes <= R (keeps k's input, costs the group's
    forward time). The answer is the cheapest over R with kept + R + outside <= budget. Where no
    plan fits, the one with the fewest predicted bytes is returned with a note."""
    import numpy as np

    seg = profile.segments
    n = len(seg)
    saved = np.array([s.saved_bytes for s in seg], dtype=np.float64)
    cost = np.array([s.forward_seconds for s in seg], dtype=np.float64)
    prefix_saved, prefix_cost = np.concatenate([[0], np.cumsum(saved)]), np.concatenate([[0], np.cumsum(cost)])
    longest = n if chained else 1
    spans = [(a, b) for a in range(n) for b in range(a + 1, min(n, a + longest) + 1)]
    caps = sorted({float(prefix_saved[b] - prefix_saved[a]) for a, b in spans})
    if len(caps) > 32:  # quantiles of the candidate caps keep the search small
        caps = sorted(set(caps[round(i * (len(caps) - 1) / 31)] for i in range(32)))
    room = budget_bytes - profile.outside_bytes
    best: tuple[float, list[tuple[int, int, bool]]] | None = None
    for cap in caps:
        free = room - cap
        if free < 0:
            continue
        step = max(free / buckets, 1.0)
        size = int(free // step) + 1
        # time_at[k, m]: least recompute time with segments [0, k) placed and m buckets kept;
        # from_k / from_add / from_ckpt: the group that ended there, to walk the plan back
        time_at = np.full((n + 1, size), np.inf)
        from_k = np.zeros((n + 1, size), dtype=np.int64)
        from_add = np.zeros((n + 1, size), dtype=np.int64)
        from_ckpt = np.zeros((n + 1, size), dtype=bool)
        time_at[0, 0] = 0.0
        for k in range(n):
            row = time_at[k]
            if not np.isfinite(row).any():
                continue
            options = [(k + 1, math.ceil(saved[k] / step), 0.0, False)]  # segment k stays
            for j in range(k + 1, min(n, k + longest) + 1):
                if prefix_saved[j] - prefix_saved[k] > cap:
                    break
                options.append((j, math.ceil(seg[k].input_bytes / step), prefix_cost[j] - prefix_cost[k], True))
            for j, add, extra, ckpt in options:
                if add >= size:
                    continue
                shifted = np.full(size, np.inf)
                shifted[add:] = row[:size - add] + extra
                better = shifted < time_at[j]
                if better.any():
                    time_at[j, better] = shifted[better]
                    from_k[j, better], from_add[j, better], from_ckpt[j, better] = k, add, ckpt
        final = time_at[n]
        if not np.isfinite(final).any():
            continue
        m = int(np.argmin(final))
        total = float(final[m])
        groups = []
        j = n
        while j > 0:
            k, add, ckpt = int(from_k[j, m]), int(from_add[j, m]), bool(from_ckpt[j, m])
            if ckpt or j == k + 1:
                groups.append((k, j, ckpt))
            j, m = k, m - add
        groups.reverse()
        merged: list[tuple[int, int, bool]] = []
        for a, b, c in groups:  # runs of kept segments as one group
            if merged and not c and not merged[-1][2]:
                merged[-1] = (merged[-1][0], b, False)
            else:
                merged.append((a, b, c))
        if best is None or total < best[0] - 1e-12 or (
                abs(total - best[0]) <= 1e-12 and predicted_bytes(profile, merged) < predicted_bytes(profile, best[1])):
            best = (total, merged)
    if best is None:
        fallback = min((sqrt_plan(profile, chained), all_plan(profile)), key=lambda p: p.predicted_bytes)
        fallback.strategy = "plan"
        fallback.budget_bytes = budget_bytes
        fallback.notes.append(f"no plan fits {budget_bytes} bytes; the smallest found keeps {fallback.predicted_bytes}")
        return fallback
    groups = best[1]
    return Plan(groups, predicted_bytes(profile, groups), _recompute(profile, groups), "plan", budget_bytes)


def make_plan(profile: Profile, segments: Segments, strategy: Strategy, budget: float) -> Plan:
    if strategy == "sqrt":
        return sqrt_plan(profile, segments.chained)
    if strategy == "all":
        return all_plan(profile)
    return cheapest_plan(profile, int(budget * profile.total_bytes), segments.chained)


def _surrogate_loss(outputs: Any) -> torch.Tensor:
    from slimkit.core.outputs import primary_output

    return primary_output(outputs).float().square().mean()


def measured_step(model: nn.Module, inputs: Sequence[torch.Tensor]):
    """One training step's measured memory (``training_step_memory``, a mean-square surrogate
    loss: memory does not depend on which loss), leaving no trace: random state, BatchNorm
    statistics and gradients as they were."""
    from slimkit.measure.memory import training_step_memory

    grads = {p: p.grad for p in model.parameters()}
    try:
        with torch.random.fork_rng(devices=[]), _norm_statistics_frozen([model]), torch.enable_grad():
            return training_step_memory(model, inputs, _surrogate_loss)
    finally:
        for p, g in grads.items():
            p.grad = g


@dataclass
class Fitted:
    """A plan checked by measurement: what the unplanned and the planned step really took."""

    plan: Plan
    profile: Profile
    unplanned_bytes: int  # measured activation bytes of a step without checkpointing
    planned_bytes: int  # ... with the plan
    tries: int


def plan_within_budget(model: nn.Module, segments: Segments, inputs: Sequence[torch.Tensor],
                       strategy: Strategy = "plan", budget: float = 0.25, tries: int = 4) -> Fitted:
    """Profile, plan, then measure the step with the plan installed. For ``plan``, while the
    measured activation bytes exceed ``budget`` times the unplanned step's (the profile cannot
    see backward's temporaries), plan again for a budget scaled down by the overshoot."""
    profile = profile_segments(model, segments, inputs, repeats=1)
    unplanned = measured_step(model, inputs).activation_bytes
    plan = make_plan(profile, segments, strategy, budget)
    target = budget * unplanned
    budget_bytes = budget * profile.total_bytes
    for attempt in range(1, tries + 1):
        applied = apply_plan(model, segments, plan)
        try:
            planned = measured_step(model, inputs).activation_bytes
        finally:
            applied.remove()
        if strategy != "plan" or planned <= target or attempt == tries:
            break
        budget_bytes *= target / planned * 0.97
        smaller = cheapest_plan(profile, int(budget_bytes), segments.chained)
        if smaller.groups == plan.groups:
            break
        plan = smaller
    if strategy == "plan" and planned > target:
        plan.notes.append(f"measured {planned} activation bytes, over the budget's {int(target)}")
    return Fitted(plan, profile, unplanned, planned, attempt)


# -- applying a plan ------------------------------------------------------------------------------

_NORMS = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def _norm_statistics_frozen(modules: Sequence[nn.Module]):
    """BatchNorm running statistics as they were before the block: a pass recomputed by a
    checkpoint (or a profiling pass) normalises with its batch's statistics exactly as the first
    pass did, and does not update the running statistics a second time. The buffers are restored
    through ``.data`` (no version bump: autograd saved them for backward)."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    saved = [[b.detach().clone() if b is not None else None
              for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        for m, values in zip(norms, saved):
            for buffer, value in zip((m.running_mean, m.running_var, m.num_batches_tracked), values):
                if buffer is not None:
                    buffer.data.copy_(value)


def _checkpointed(run: Callable[..., Any], modules: Sequence[nn.Module]) -> Callable[..., Any]:
    def call(*args, **kwargs):
        if not torch.is_grad_enabled():
            return run(*args, **kwargs)
        calls = [0]

        def once_or_again(*a, **k):
            calls[0] += 1
            if calls[0] == 1:
                return run(*a, **k)
            with _norm_statistics_frozen(modules):
                return run(*a, **k)

        return checkpoint(once_or_again, *args, use_reentrant=False, **kwargs)
    return call


class Applied:
    """A plan installed on a model (instance ``forward`` overrides: names, state dict and hooks
    unchanged); ``remove()`` restores the model."""

    def __init__(self, model: nn.Module, segments: Segments, plan: Plan) -> None:
        modules = dict(model.named_modules())
        self._patched: list[tuple[nn.Module, Any]] = []
        seg = [modules[n] for n in segments.names]
        multi = any(b - a > 1 for a, b, c in plan.groups if c)
        if multi:
            if not segments.chained:
                raise ConfigError("checkpointing: groups of several segments need an nn.Sequential container")
            container = modules[segments.container]
            groups = [(seg[a:b], c) for a, b, c in plan.groups]

            def forward(self, x):
                for members, ckpt in groups:
                    if ckpt:
                        x = _checkpointed(lambda y, members=members: _chain(members, y), members)(x)
                    else:
                        x = _chain(members, x)
                return x

            self._patch(container, types.MethodType(forward, container))
        else:
            for a, b, c in plan.groups:
                if c:
                    self._patch(seg[a], _checkpointed(seg[a].forward, [seg[a]]))

    def _patch(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        self._patched.append((module, module.__dict__.get("forward")))  # an override already there comes back
        module.forward = forward

    def remove(self) -> None:
        for module, before in reversed(self._patched):
            if before is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = before
        self._patched.clear()


def _chain(members: Sequence[nn.Module], x):
    for m in members:
        x = m(x)
    return x


def apply_plan(model: nn.Module, segments: Segments, plan: Plan) -> Applied:
    return Applied(model, segments, plan)


# -- the loop's callback --------------------------------------------------------------------------

class Checkpointing(Callback):
    """Plans on the first training batch (one profiling pass of it), installs the plan for the
    fit, removes it at the end. ``plan`` and ``profile`` are kept for the results."""

    def __init__(self, cfg: CheckpointConfig) -> None:
        self.cfg = cfg
        self.plan: Plan | None = None
        self.profile: Profile | None = None
        self.fitted: Fitted | None = None
        self._applied: Applied | None = None
        self._segments: Segments | None = None

    def on_fit_start(self, state: FitState) -> None:
        self._segments = find_segments(state.model, self.cfg.segments)

    def transform_batch(self, state: FitState, inputs, targets, extras):
        if self._applied is None and self._segments is not None:
            if self.cfg.segments is None:
                self._segments = called_segments(state.model, self._segments, inputs)
            self.fitted = plan_within_budget(state.model, self._segments, inputs, self.cfg.strategy, self.cfg.budget)
            self.plan, self.profile = self.fitted.plan, self.fitted.profile
            self._applied = apply_plan(state.model, self._segments, self.plan)
        return inputs, targets, extras

    def on_fit_end(self, state: FitState) -> None:
        if self._applied is not None:
            self._applied.remove()
            self._applied = None

    def summary(self) -> dict[str, Any]:
        if self.plan is None or self.profile is None:
            return {}
        return {"strategy": self.plan.strategy, "segments": len(self.profile.segments),
                "checkpointed_groups": [[a, b] for a, b in self.plan.checkpointed],
                "unplanned_saved_bytes": self.profile.total_bytes, "predicted_saved_bytes": self.plan.predicted_bytes,
                "budget_bytes": self.plan.budget_bytes, "predicted_recompute_seconds": self.plan.recompute_seconds,
                "measured_unplanned_bytes": self.fitted.unplanned_bytes if self.fitted else None,
                "measured_planned_bytes": self.fitted.planned_bytes if self.fitted else None,
                "notes": self.plan.notes}
