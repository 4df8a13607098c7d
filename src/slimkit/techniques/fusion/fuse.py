"""Operator fusion on a torch.fx graph: fold BatchNorm, fuse activations, merge linear layers.

Three exact rewrites of an eval-mode model, each checked on the traced graph before it is done:

- **BatchNorm folding**: ``Conv{1,2,3}d | ConvTranspose{1,2,3}d | Linear -> BatchNorm`` becomes
  one layer whose weights and bias absorb the running statistics (computed in float64, cast back).
- **Linear merging**: ``Linear -> [Dropout | Identity] -> Linear`` (and the same for two 1x1
  Conv2d) becomes one layer ``W2 @ W1``, but only when that costs no more MACs than the pair.
- **Activation fusion**: ``Conv | Linear -> ReLU | ReLU6 | Hardswish | SiLU | GELU`` becomes a
  ``FusedConvAct`` / ``FusedLinearAct`` that applies the activation in place on the layer's fresh
  output, so inference holds one intermediate tensor fewer.

Why fx: the conditions that make a rewrite exact are graph facts (the conv output has exactly one
user, the layer is called once), which a walk over the module tree cannot see. A model that fx
cannot trace as a whole (data-dependent control flow, a HuggingFace transformer) is fused inside
each traceable subtree instead. Every pattern that is found but cannot be rewritten is left as it
is and reported with the reason, so a remaining BatchNorm is always explained.

The rewrite depends only on the model's structure, never on its values, so applying it to a fresh
copy of the same architecture yields the same module tree and state-dict keys (``restore``).
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvTransposeNd

from slimkit.encoding.twins import WrapsLayer, plain_type

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                           nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# Exact types, or subclasses that only change the constructor (``plain_type``): a subclass that
# overrides how it computes (LoRA wrappers, quantized stubs) is not a plain layer.
LAYER_TYPES: tuple[type[nn.Module], ...] = CONV_TYPES + (nn.Linear,)


def plain_layer(module: object) -> bool:
    """Whether ``module`` computes exactly as a torch Conv, ConvTranspose or Linear does."""
    return plain_type(module) in LAYER_TYPES


ACTIVATIONS = ("relu", "relu6", "hardswish", "silu", "gelu")

_ACT_MODULES: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish",
                                            nn.SiLU: "silu", nn.GELU: "gelu"}
_ACT_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6",
    F.hardswish: "hardswish", F.silu: "silu", F.gelu: "gelu",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu"}
_ACT_OPTIONS = {"inplace", "approximate"}  # extra arguments an activation call may carry
# Modules that are the identity in eval mode, allowed between two layers that are merged.
_EVAL_IDENTITIES: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                                                 nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _activate_(y: torch.Tensor, activation: str, approximate: str) -> torch.Tensor:
    """Apply ``activation`` in place on ``y`` (a layer's fresh output that nothing else reads)."""
    if activation == "relu":
        return torch.relu_(y)
    if activation == "relu6":
        return F.relu6(y, inplace=True)
    if activation == "hardswish":
        return F.hardswish(y, inplace=True)
    if activation == "silu":
        return F.silu(y, inplace=True)
    return torch.ops.aten.gelu_(y, approximate=approximate)


def _check_activation(activation: str, approximate: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"fused activation must be one of {ACTIVATIONS}, got {activation!r}")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")


class _LayerAct(WrapsLayer, nn.Module):
    """A layer followed by its activation, applied in place on the layer's fresh output. The
    layer is kept under ``layer_name`` so state-dict keys read ``conv.weight`` / ``linear.weight``."""

    layer_name = "layer"

    def __init__(self, layer: nn.Module, activation: str, approximate: str = "none") -> None:
        super().__init__()
        _check_activation(activation, approximate)
        setattr(self, self.layer_name, layer)
        self.activation = activation
        self.approximate = approximate

    def _wrapped(self) -> nn.Module:
        return getattr(self, self.layer_name)

    @property
    def weight(self) -> torch.Tensor:
        return self._wrapped().weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self._wrapped().bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate_(getattr(self, self.layer_name)(x), self.activation, self.approximate)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}" + (f", approximate={self.approximate!r}"
                                                    if self.activation == "gelu" else "")


class FusedConvAct(_LayerAct):
    """A convolution followed by its activation, applied in place on the convolution's output."""

    layer_name = "conv"


class FusedLinearAct(_LayerAct):
    """A Linear layer followed by its activation, applied in place on the layer's output."""

    layer_name = "linear"


@dataclass
class FusionReport:
    """What ``fuse_model`` rewrote, what it found but left (with why), and what it could not trace."""

    folded: list[dict[str, str]] = field(default_factory=list)  # {"bn", "into"}
    activations: list[dict[str, str]] = field(default_factory=list)  # {"layer", "activation"}
    merged: list[dict[str, str]] = field(default_factory=list)  # {"first", "second", "into"}
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"where", "pattern", "reason"}
    untraceable: list[dict[str, str]] = field(default_factory=list)  # {"module", "reason"}
    bn_remaining: int = 0  # BatchNorm modules left in the fused model

    @property
    def dataflow_folds(self) -> list[tuple[str, str]]:
        """(BatchNorm, layer) pairs folded from torch.export's dataflow: the record ``folds`` replays."""
        return [(f["bn"], f["into"]) for f in self.folded if f.get("via") == "torch.export"]

    @property
    def bn_folded(self) -> int:
        return len(self.folded)

    @property
    def activations_fused(self) -> int:
        return len(self.activations)

    @property
    def linear_merged(self) -> int:
        return len(self.merged)

    def to_dict(self) -> dict[str, Any]:
        counts = {"bn_folded": self.bn_folded, "activations_fused": self.activations_fused,
                  "linear_merged": self.linear_merged, "bn_remaining": self.bn_remaining}
        return {**counts, **{k: v for k, v in asdict(self).items() if k != "bn_remaining"}}


@dataclass(frozen=True)
class _Options:
    fold_bn: bool
    fuse_activations: bool
    merge_linear: bool


def fuse_model(model: nn.Module, *, fold_bn: bool = True, fuse_activations: bool = True,
               merge_linear: bool = True, example: tuple[torch.Tensor, ...] | None = None,
               folds: Sequence[tuple[str, str]] | None = None) -> tuple[nn.Module, FusionReport]:
    """Fuse a deep copy of ``model`` in eval mode; ``model`` itself is left untouched.

    Returns the fused model (a ``torch.fx.GraphModule`` when the whole model traced and something
    was fused, else a copy of ``model`` with its traceable subtrees fused) and the report. In eval
    mode the outputs equal the original's up to float rounding. This is a deployment transform:
    BatchNorm's running statistics are baked into the weights, dropout between merged layers and
    eval-only branches (stochastic depth) are gone, so training the result afterwards trains the
    folded weights and no longer updates any statistics.

    BatchNorms that fx could not reach (inside modules it cannot trace) are folded from
    ``torch.export``'s dataflow when ``example`` inputs are given (``fold_by_dataflow``);
    ``folds``, the pairs a previous call reported (``report.dataflow_folds``), replays those folds
    without exporting (restoring a saved model).
    """
    work = copy.deepcopy(model).eval()
    report = FusionReport()
    options = _Options(fold_bn, fuse_activations, merge_linear)
    seen_bn: set[int] = set()
    fused = _fuse_tree(work, "", options, report, seen_bn).eval()
    if fold_bn and folds:
        replay_folds(fused, folds, report, seen_bn)
    elif fold_bn and example is not None and any(isinstance(m, _BatchNorm) and id(m) not in seen_bn
                                                 for m in fused.modules()):
        fold_by_dataflow(fused, example, report, seen_bn)
    remaining = [(name, m) for name, m in fused.named_modules() if isinstance(m, _BatchNorm)]
    report.bn_remaining = len(remaining)
    if fold_bn:
        untraced = [u["module"] for u in report.untraceable]
        explained = {s["where"] for s in report.skipped}
        for name, bn in remaining:
            if id(bn) not in seen_bn and name not in explained:
                owner = max((u for u in untraced if u == "(root)" or name.startswith(u + ".")), key=len, default=None)
                reason = f"called from untraceable module '{owner}'" if owner else "not called by the traced forward"
                if owner and example is None:
                    reason += " (no example inputs to fold it from torch.export's dataflow)"
                report.skipped.append({"where": name, "pattern": "fold_bn", "reason": reason})
    return fused, report


# ---------------------------------------------------------------------------------------------
# BatchNorm folding from torch.export's dataflow, for modules fx cannot trace.

_EXPORT_LAYERS = {torch.ops.aten.conv1d.default: (nn.Conv1d,), torch.ops.aten.conv2d.default: (nn.Conv2d,),
                  torch.ops.aten.conv3d.default: (nn.Conv3d,), torch.ops.aten.linear.default: (nn.Linear,)}
_EXPORT_BATCH_NORMS = {torch.ops.aten.batch_norm.default}


def _owner(node: fx.Node) -> str | None:
    """The path of the innermost module whose call produced ``node`` (torch.export's meta)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


def fold_by_dataflow(model: nn.Module, example: tuple[torch.Tensor, ...], report: FusionReport,
                     seen_bn: set[int]) -> None:
    """Fold each BatchNorm module not folded yet whose one call reads the output of one call of a
    Conv{1,2,3}d or Linear module, and nothing else reads that output, as ``torch.export`` records
    the eval-mode forward on ``example``. The module tree keeps the model's own forward (whatever
    fx could not trace): the layer absorbs the statistics and the BatchNorm becomes an Identity.

    Exact for the same reason the fx pass is: the graph shows the layer's output has one reader,
    the BatchNorm, and each module is called once. A BatchNorm this cannot fold is reported with why.
    """
    modules = dict(model.named_modules())
    pending = {name for name, m in modules.items() if isinstance(m, _BatchNorm) and id(m) not in seen_bn}
    try:
        with torch.no_grad():
            program = torch.export.export(model.eval(), tuple(example), strict=False)
    except Exception as err:  # noqa: BLE001 - export raises many kinds; the reason is reported
        first = (str(err).strip().splitlines() or [""])[0][:200]
        for name in sorted(pending):
            report.skipped.append({"where": name, "pattern": "fold_bn",
                                   "reason": f"fx cannot trace its caller and torch.export failed ({type(err).__name__}: {first})"})
        return
    params = program.graph_signature.inputs_to_parameters
    nodes = [n for n in program.graph_module.graph.nodes if n.op == "call_function"]
    calls = Counter(_owner(n) for n in nodes if n.target in _EXPORT_LAYERS or n.target in _EXPORT_BATCH_NORMS)
    for node in nodes:
        name = _owner(node)
        if node.target not in _EXPORT_BATCH_NORMS or name not in pending:
            continue
        bn = modules[name]
        reason, src = _dataflow_blocker(node, bn, modules, calls, params)
        if reason is not None:
            report.skipped.append({"where": name, "pattern": "fold_bn", "reason": reason})
            pending.discard(name)
            continue
        _fold_into_and_drop(model, name, _owner(src))
        seen_bn.add(id(bn))
        pending.discard(name)
        report.folded.append({"bn": name, "into": _owner(src), "via": "torch.export"})
    for name in sorted(pending):
        report.skipped.append({"where": name, "pattern": "fold_bn", "reason": "not called by the exported forward"})


def _dataflow_blocker(node: fx.Node, bn: _BatchNorm, modules: dict[str, nn.Module], calls: Counter,
                      params: dict[str, str]) -> tuple[str | None, fx.Node | None]:
    """Why the exported batch_norm ``node`` of module ``bn`` cannot be folded (None, and its input's
    node, when it can)."""
    name = _owner(node)
    if calls[name] > 1:
        return f"called at {calls[name]} places", None
    src = node.args[0]
    layer_name = _owner(src) if isinstance(src, fx.Node) else None
    layer = modules.get(layer_name) if layer_name else None
    if (not isinstance(src, fx.Node) or src.target not in _EXPORT_LAYERS or not plain_layer(layer)
            or not isinstance(layer, _EXPORT_LAYERS[src.target])):
        what = getattr(src, "target", src)
        return f"input comes from {what}, not a Conv or Linear module", None
    if params.get(getattr(src.args[1], "name", "")) != f"{layer_name}.weight":
        return f"the {src.target} reads another weight than {layer_name}'s", None
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return ("BatchNorm without running statistics (track_running_stats=False) normalises "
                "with each batch's own statistics, also in eval"), None
    if len(src.users) > 1:
        return f"output of {layer_name} also used by {len(src.users) - 1} other op(s)", None
    if calls[layer_name] > 1:
        return f"{layer_name} is called at {calls[layer_name]} places", None
    out_features = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if bn.num_features != out_features:
        return f"BatchNorm has {bn.num_features} features, {layer_name} gives {out_features}", None
    if isinstance(layer, nn.Linear) and type(bn) is not nn.BatchNorm1d:
        return f"{type(bn).__name__} after a Linear (only BatchNorm1d is folded into a Linear)", None
    return None, src


def _fold_into_and_drop(model: nn.Module, bn_name: str, layer_name: str) -> None:
    bn = model.get_submodule(bn_name)
    _fold_bn_into(model.get_submodule(layer_name), bn)
    parent, _, leaf = bn_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())


def replay_folds(model: nn.Module, folds: Sequence[tuple[str, str]], report: FusionReport, seen_bn: set[int]) -> None:
    """Apply recorded dataflow folds (``FusionReport.dataflow_folds``) to a freshly fused copy of
    the same architecture: the same module tree, so a saved state dict loads into it."""
    modules = dict(model.named_modules())
    for bn_name, layer_name in folds:
        bn, layer = modules.get(bn_name), modules.get(layer_name)
        if not isinstance(bn, _BatchNorm) or not plain_layer(layer):
            raise ValueError(f"recorded fold of '{bn_name}' into '{layer_name}' does not fit this model "
                             f"({type(bn).__name__} into {type(layer).__name__})")
        _fold_into_and_drop(model, bn_name, layer_name)
        seen_bn.add(id(bn))
        report.folded.append({"bn": bn_name, "into": layer_name, "via": "torch.export"})


# ---------------------------------------------------------------------------------------------
# Tracing, with the per-subtree fallback.


class _Tracer(fx.Tracer):
    """fx's tracer, keeping already fused modules opaque so that fusing twice changes nothing."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, (FusedConvAct, FusedLinearAct)) or plain_layer(m)
                or super().is_leaf_module(m, module_qualified_name))


def _try_trace(module: nn.Module) -> tuple[fx.GraphModule | None, str | None]:
    """The module's graph, or None and why not (no reason for containers without ``forward``)."""
    if type(module).forward is nn.Module.forward:  # ModuleList, ModuleDict: not a graph, their children may be
        return None, None
    optional = [name for name, p in inspect.signature(module.forward).parameters.items() if p.default is None]
    if optional:
        # A traced graph fixes one call pattern: ``if mask is not None`` would be baked in as
        # "given", and a caller that leaves the argument out would get a wrong result or a crash.
        return None, (f"forward has arguments that default to None ({', '.join(optional)}): "
                      "a graph would fix one call pattern")
    tracer = _Tracer()
    try:
        graph = tracer.trace(module)
    except Exception as err:  # fx raises many kinds (TraceError, TypeError, AttributeError...)
        first_line = (str(err).strip().splitlines() or [""])[0]
        return None, f"{type(err).__name__}: {first_line}"
    return fx.GraphModule(tracer.root, graph, type(module).__name__), None


def _fuse_tree(module: nn.Module, path: str, options: _Options, report: FusionReport,
               seen_bn: set[int]) -> nn.Module:
    """Fuse ``module`` as one graph, or, if it cannot be traced, each child that has children."""
    gm, reason = _try_trace(module)
    if gm is None:
        if reason is not None:
            report.untraceable.append({"module": path or "(root)", "reason": reason})
        for name, child in list(module.named_children()):
            if next(child.children(), None) is None:
                continue  # a leaf: nothing inside it to fuse
            new = _fuse_tree(child, f"{path}.{name}" if path else name, options, report, seen_bn)
            if new is not child:
                setattr(module, name, new)
        return module
    prefix = f"{path}." if path else ""
    changed = _GraphFuser(gm, prefix, options, report, seen_bn).run()
    return gm if changed else module


# ---------------------------------------------------------------------------------------------
# The rewrites on one graph.


class _GraphFuser:
    def __init__(self, gm: fx.GraphModule, prefix: str, options: _Options, report: FusionReport,
                 seen_bn: set[int]) -> None:
        self.gm = gm
        self.prefix = prefix
        self.options = options
        self.report = report
        self.seen_bn = seen_bn
        self.changed = False
        # How many nodes call each module: a layer called twice cannot take another call's BatchNorm.
        self.calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")

    def run(self) -> bool:
        if self.options.fold_bn:
            self._fold_batchnorms()
        if self.options.merge_linear:
            self._merge_linears()
        if self.options.fuse_activations:
            self._fuse_activations()
        if self.changed:
            self.gm.graph.lint()
            self.gm.delete_all_unused_submodules()
            self.gm.recompile()
        return self.changed

    # -- helpers -------------------------------------------------------------------------------

    def _module(self, node: fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def _layer(self, node: fx.Node) -> nn.Module | None:
        """The Conv, ConvTranspose or Linear module that ``node`` calls (``plain_layer``), if any."""
        module = self._module(node)
        return module if plain_layer(module) else None

    def _name(self, node: fx.Node) -> str:
        return self.prefix + (node.target if node.op == "call_module" else node.name)

    def _describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"'{self._name(node)}' ({type(self._module(node)).__name__})"
        if node.op == "call_function":
            return getattr(node.target, "__name__", str(node.target))
        if node.op == "call_method":
            return f".{node.target}()"
        if node.op == "output":
            return "the output"
        if node.op == "placeholder":
            return f"input '{node.target}'"
        return node.op

    def _calls(self, node: fx.Node) -> int:
        return self.calls[node.target]

    def _others(self, node: fx.Node, user: fx.Node) -> str:
        return ", ".join(self._describe(u) for u in node.users if u is not user)

    def _skip(self, where: str, pattern: str, reason: str) -> None:
        self.report.skipped.append({"where": where, "pattern": pattern, "reason": reason})

    def _replace(self, target: str, module: nn.Module) -> None:
        parent_name, _, name = target.rpartition(".")
        setattr(self.gm.get_submodule(parent_name), name, module)

    # -- BatchNorm folding ---------------------------------------------------------------------

    def _fold_batchnorms(self) -> None:
        for node in list(self.gm.graph.nodes):
            if node.op == "call_function" and node.target is F.batch_norm:
                self._skip(self._name(node), "fold_bn", "functional batch_norm is not folded (only BatchNorm modules)")
                continue
            bn = self._module(node)
            if not isinstance(bn, _BatchNorm):
                continue
            self.seen_bn.add(id(bn))
            reason = self._fold_blocker(node, bn)
            if reason is not None:
                self._skip(self._name(node), "fold_bn", reason)
                continue
            src = node.args[0]
            _fold_bn_into(self._module(src), bn)
            node.replace_all_uses_with(src)
            self.gm.graph.erase_node(node)
            self.report.folded.append({"bn": self._name(node), "into": self._name(src)})
            self.changed = True

    def _fold_blocker(self, node: fx.Node, bn: _BatchNorm) -> str | None:
        """Why the BatchNorm at ``node`` cannot be folded into its input's layer, or None."""
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not isinstance(src, fx.Node):
            return "BatchNorm called with other than one input"
        layer = self._layer(src)
        if layer is None:
            return f"input comes from {self._describe(src)}, not a Conv or Linear"
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            return ("BatchNorm without running statistics (track_running_stats=False) normalises "
                    "with each batch's own statistics, also in eval")
        if len(src.users) > 1:
            return f"output of {self._describe(src)} also used by {self._others(src, node)}"
        if self._calls(src) > 1:
            return f"{self._describe(src)} is called at {self._calls(src)} places"
        out_features = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if bn.num_features != out_features:
            return f"BatchNorm has {bn.num_features} features, {self._describe(src)} gives {out_features}"
        if isinstance(layer, nn.Linear) and type(bn) is not nn.BatchNorm1d:
            return f"{type(bn).__name__} after a Linear (only BatchNorm1d is folded into a Linear)"
        return None

    # -- Linear merging ------------------------------------------------------------------------

    def _merge_linears(self) -> None:
        for second in list(self.gm.graph.nodes):
            if not _mergeable(self._module(second), as_second=True):
                continue  # (nodes erased by a merge precede ``second``: the order is topological)
            between: list[fx.Node] = []
            first = second.args[0] if len(second.args) == 1 and not second.kwargs else None
            while isinstance(first, fx.Node) and self._is_eval_identity(first) and len(first.users) == 1:
                between.append(first)
                first = first.args[0]
            if not isinstance(first, fx.Node) or type(self._module(first)) is not type(self._module(second)):
                continue
            if not _mergeable(self._module(first), as_second=False):
                continue
            reason = self._merge_blocker(first, between[-1] if between else second, second)
            if reason is not None:
                self._skip(f"{self._name(first)} -> {self._name(second)}", "merge_linear", reason)
                continue
            self._replace(second.target, _merged(self._module(first), self._module(second)))
            second.args = (first.args[0],)
            for node in [*between, first]:
                self.gm.graph.erase_node(node)
            self.report.merged.append({"first": self._name(first), "second": self._name(second),
                                       "into": self._name(second)})
            self.changed = True

    def _is_eval_identity(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return type(self._module(node)) in _EVAL_IDENTITIES and len(node.args) == 1 and not node.kwargs
        if node.op == "call_function" and node.target is F.dropout and node.args:
            training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
            return training is False
        return False

    def _merge_blocker(self, first: fx.Node, user: fx.Node, second: fx.Node) -> str | None:
        if len(first.users) > 1:
            return f"output of {self._describe(first)} also used by {self._others(first, user)}"
        for node in (first, second):
            if self._calls(node) > 1:
                return f"{self._describe(node)} is called at {self._calls(node)} places"
        separate, merged = _merge_macs(self._module(first), self._module(second))
        if merged > separate:
            return f"merge would increase MACs per position from {separate} to {merged}"
        return None

    # -- Activation fusion ---------------------------------------------------------------------

    def _fuse_activations(self) -> None:
        for node in list(self.gm.graph.nodes):
            act = self._activation(node)
            if act is None or not isinstance(node.args[0], fx.Node):
                continue
            src = node.args[0]
            layer = self._layer(src)
            if layer is None:
                continue
            reason = None
            if len(src.users) > 1:
                reason = f"output of {self._describe(src)} also used by {self._others(src, node)}"
            elif self._calls(src) > 1:
                reason = f"{self._describe(src)} is called at {self._calls(src)} places"
            if reason is not None:
                self._skip(self._name(node), "fuse_activations", reason)
                continue
            activation, approximate = act
            fused_cls = FusedLinearAct if isinstance(layer, nn.Linear) else FusedConvAct
            self._replace(src.target, fused_cls(layer, activation, approximate))
            node.replace_all_uses_with(src)
            self.gm.graph.erase_node(node)
            self.report.activations.append({"layer": self._name(src), "activation": activation})
            self.changed = True

    def _activation(self, node: fx.Node) -> tuple[str, str] | None:
        """(activation, GELU approximation) when ``node`` applies a fusable activation to one input."""
        if node.op == "call_module":
            module = self._module(node)
            kind = _ACT_MODULES.get(type(module))
            if kind is None or len(node.args) != 1 or node.kwargs:
                return None
            return kind, getattr(module, "approximate", "none")
        if node.op == "call_function":
            kind = _ACT_FUNCTIONS.get(node.target)
        elif node.op == "call_method":
            kind = _ACT_METHODS.get(node.target)
        else:
            kind = None
        if kind is None or not node.args:
            return None
        extra = list(node.args[1:]) + list(node.kwargs.values())
        if any(isinstance(v, fx.Node) for v in extra) or not set(node.kwargs) <= _ACT_OPTIONS:
            return None
        approximate = node.kwargs.get("approximate", node.args[1] if kind == "gelu" and len(node.args) > 1 else "none")
        return (kind, approximate) if isinstance(approximate, str) else None


# ---------------------------------------------------------------------------------------------
# The arithmetic.


@torch.no_grad()
def _fold_bn_into(layer: nn.Module, bn: _BatchNorm) -> None:
    """Give ``layer`` the weights and bias of ``bn(layer(x))`` in eval mode (float64 arithmetic)."""
    weight = layer.weight.detach().double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    shift = -bn.running_mean.double() * scale
    if bn.affine:
        scale = scale * bn.weight.double()
        shift = shift * bn.weight.double() + bn.bias.double()
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(scale)
    if isinstance(layer, _ConvTransposeNd):  # weight (in, out/groups, *k): outputs on dim 1, per group
        g = layer.groups
        grouped = weight.reshape(g, weight.shape[0] // g, *weight.shape[1:])
        folded = (grouped * scale.reshape(g, 1, -1, *[1] * (weight.dim() - 2))).reshape(weight.shape)
    else:  # Conv (out, in/groups, *k) and Linear (out, in): outputs on dim 0
        folded = weight * scale.reshape(-1, *[1] * (weight.dim() - 1))
    dtype, trainable = layer.weight.dtype, layer.weight.requires_grad
    bias_dtype = layer.bias.dtype if layer.bias is not None else dtype
    layer.weight = nn.Parameter(folded.to(dtype), requires_grad=trainable)
    layer.bias = nn.Parameter((bias * scale + shift).to(bias_dtype), requires_grad=trainable)


def _mergeable(module: nn.Module | None, *, as_second: bool) -> bool:
    """A Linear, or a 1x1 Conv2d (groups 1, dilation 1, no padding; stride 1 unless it comes first)."""
    if type(module) is nn.Linear:
        return True
    if type(module) is not nn.Conv2d:
        return False
    return (module.kernel_size == (1, 1) and module.groups == 1 and module.dilation == (1, 1)
            and module.padding in ((0, 0), "valid", "same") and (not as_second or module.stride == (1, 1)))


def _merge_macs(first: nn.Module, second: nn.Module) -> tuple[int, int]:
    """MACs per output position of the two layers, and of the merged one."""
    w1, w2 = first.weight, second.weight
    return w1.shape[0] * w1.shape[1] + w2.shape[0] * w2.shape[1], w2.shape[0] * w1.shape[1]


@torch.no_grad()
def _merged(first: nn.Module, second: nn.Module) -> nn.Module:
    """One layer computing ``second(first(x))``: W = W2 W1, b = W2 b1 + b2 (float64 arithmetic)."""
    w1 = first.weight.detach().double().flatten(1)
    w2 = second.weight.detach().double().flatten(1)
    has_bias = first.bias is not None or second.bias is not None
    factory = dict(device=second.weight.device, dtype=second.weight.dtype)
    if isinstance(first, nn.Linear):
        merged: nn.Module = nn.Linear(first.in_features, second.out_features, bias=has_bias, **factory)
    else:
        merged = nn.Conv2d(first.in_channels, second.out_channels, 1, stride=first.stride, bias=has_bias, **factory)
    merged.weight.copy_((w2 @ w1).reshape(merged.weight.shape))
    if has_bias:
        bias = torch.zeros(w2.shape[0], dtype=torch.float64, device=w2.device)
        if first.bias is not None:
            bias += w2 @ first.bias.double()
        if second.bias is not None:
            bias += second.bias.double()
        merged.bias.copy_(bias)
    return merged


__all__ = ["FusedConvAct", "FusedLinearAct", "FusionReport", "fuse_model"]
