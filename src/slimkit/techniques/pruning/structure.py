"""A structurally pruned model as data: which tensors changed shape, which module attributes
changed (``out_channels``, ``num_features``, ``num_attention_heads``...) and which blocks were
removed. ``apply_structure_`` re-creates that skeleton on a fresh model so a plain safetensors
checkpoint loads into it (no pickled modules, no dependency graph needed to reload)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from slimkit.core.errors import CheckpointError

def snapshot(model: nn.Module) -> dict[str, Any]:
    """Tensor shapes and the integer and tuple-of-integer attributes of every module."""
    tensors = {name: list(t.shape) for name, t in _tensors(model)}
    attrs = {name: {k: _jsonable(v) for k, v in vars(module).items() if _is_shape_attr(v)}
             for name, module in model.named_modules()}
    return {"tensors": tensors, "attrs": attrs}


def structure_diff(before: dict[str, Any], after: nn.Module, removed: list[str] = ()) -> dict[str, Any]:
    """What changed between ``before`` (a ``snapshot``) and the model ``after``: JSON-able."""
    now = snapshot(after)
    tensors = {name: shape for name, shape in now["tensors"].items() if before["tensors"].get(name) != shape}
    attrs = {}
    for name, values in now["attrs"].items():
        changed = {k: v for k, v in values.items() if before["attrs"].get(name, {}).get(k) != v}
        if changed:
            attrs[name] = changed
    return {"tensors": tensors, "attrs": attrs, "removed": list(removed)}


def apply_structure_(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Give ``model`` the recorded skeleton: removed blocks become ``Skip``, tensors are
    re-allocated at their recorded shapes (values come from the checkpoint) and attributes set."""
    from slimkit.techniques.pruning.blocks import remove_blocks_

    try:
        remove_blocks_(model, list(structure.get("removed", [])))
        modules = dict(model.named_modules())
        for name, shape in structure["tensors"].items():
            owner, _, leaf = name.rpartition(".")
            module = modules[owner]
            old = getattr(module, leaf)
            new = torch.empty([int(s) for s in shape], dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(module, leaf, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                module._buffers[leaf] = new
        for name, values in structure["attrs"].items():
            for key, value in values.items():
                setattr(modules[name], key, tuple(value) if isinstance(value, list) else value)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"structured pruning's recorded structure does not fit this model ({err!r})") from None
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
