"""A structurally pruned model as data: which tensors changed shape, which module attributes
changed (``out_channels``, ``num_features``, ``num_attention_heads``...) and which blocks were
removed. ``apply_structure_`` re-creates that skeleton on a fresh model so a plain safetensors
checkpoint loads into it (no pickled modules, no dependency graph needed to reload)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from pydantic import Field

from slimkit.core.config import Config
from slimkit.core.step import restoring

def snapshot(model: nn.Module) -> dict[str, Any]:
    """Tensor shapes and the integer and tuple-of-integer attributes of every module."""
    tensors = {name: list(t.shape) for name, t in _tensors(model)}
    attrs = {name: {k: _jsonable(v) for k, v in vars(module).items() if _is_shape_attr(v)}
             for name, module in model.named_modules()}
    return {"tensors": tensors, "attrs": attrs}


class Skeleton(Config):
    """A structurally edited model relative to the one it came from."""

    tensors: dict[str, list[int]] = Field(default_factory=dict, description="tensors whose shape changed: new shapes")
    attrs: dict[str, dict[str, int | list[int]]] = Field(
        default_factory=dict, description="module attributes that changed (out_channels, num_attention_heads, ...)")
    removed: list[str] = Field(default_factory=list, description="blocks replaced by Skip")


def structure_diff(before: dict[str, Any], after: nn.Module, removed: list[str] = ()) -> Skeleton:
    """What changed between ``before`` (a ``snapshot``) and the model ``after``."""
    now = snapshot(after)
    tensors = {name: shape for name, shape in now["tensors"].items() if before["tensors"].get(name) != shape}
    attrs = {}
    for name, values in now["attrs"].items():
        changed = {k: v for k, v in values.items() if before["attrs"].get(name, {}).get(k) != v}
        if changed:
            attrs[name] = changed
    return Skeleton(tensors=tensors, attrs=attrs, removed=list(removed))


def apply_structure_(model: nn.Module, skeleton: Skeleton, step: str = "prune_structured") -> nn.Module:
    """Give ``model`` the recorded skeleton: removed blocks become ``Skip``, tensors are
    re-allocated at their recorded shapes (values come from the checkpoint) and attributes set."""
    from slimkit.techniques.pruning.blocks import remove_blocks_

    owners = {name.rpartition(".")[0] for name in skeleton.tensors}
    with restoring(step, model, sorted({*skeleton.removed, *owners, *skeleton.attrs})):
        remove_blocks_(model, skeleton.removed)
        for name, shape in skeleton.tensors.items():
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner)
            old = getattr(module, leaf, None)
            if not isinstance(old, torch.Tensor):
                raise ValueError(f"{name} is not a tensor of this model")
            new = torch.empty(shape, dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(module, leaf, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                module._buffers[leaf] = new
        for name, values in skeleton.attrs.items():
            for key, value in values.items():
                setattr(model.get_submodule(name), key, tuple(value) if isinstance(value, list) else value)
    return model


def _tensors(model: nn.Module):
    yield from model.named_parameters(remove_duplicate=False)
    yield from ((n, b) for n, b in model.named_buffers(remove_duplicate=False) if b is not None)


def _is_shape_attr(value: Any) -> bool:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return is_int(value) or (isinstance(value, tuple) and bool(value) and all(map(is_int, value)))


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
