"""Model-level questions about encoded layers: which there are, of what kind, and the model
with them turned back into plain dense layers."""

from __future__ import annotations

import copy
from typing import Iterable

import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.encoding.layer import KINDS, EncodedLayer

Kinds = str | Iterable[str] | None


def encoded_layers(model: nn.Module, kinds: Kinds = None) -> dict[str, EncodedLayer]:
    """{module name: layer} of the encoded layers of ``model`` (of ``kinds`` only, if given)."""
    wanted = _kinds(kinds)
    return {name: m for name, m in model.named_modules()
            if isinstance(m, EncodedLayer) and (wanted is None or m.kind in wanted)}


def is_encoded(model: nn.Module, kinds: Kinds = None) -> bool:
    """Whether ``model`` holds an encoded layer (of one of ``kinds``, if given)."""
    return bool(encoded_layers(model, kinds))


def densify_(model: nn.Module, kinds: Kinds = None) -> list[str]:
    """Swap the encoded layers of ``model`` (of ``kinds``, if given) for their plain dense
    equivalents, in place; returns their names. For steps and runtimes that need plain layers."""
    layers = encoded_layers(model, kinds)
    if "" in layers:
        raise ValueError("densify_: the model itself is an encoded layer; use densified() or its densify()")
    for name, layer in layers.items():
        model.set_submodule(name, layer.densify())
    return list(layers)


def densified(model: nn.Module, kinds: Kinds = None) -> nn.Module:
    """A copy of ``model`` with its encoded layers (of ``kinds``, if given) dense."""
    if isinstance(model, EncodedLayer) and (kinds is None or model.kind in _kinds(kinds)):
        return model.densify()
    dense = copy.deepcopy(model)
    densify_(dense, kinds)
    return dense


def refuse_encoded(model: nn.Module, step: str, advice: str, kinds: Kinds = None) -> None:
    """Raise ``ConfigError`` if ``model`` holds encoded layers (of ``kinds``), naming the step, the
    encodings and layers found, and ``advice`` (what to do instead)."""
    layers = encoded_layers(model, kinds)
    if not layers:
        return
    by_kind: dict[str, list[str]] = {}
    for name, layer in layers.items():
        by_kind.setdefault(layer.kind, []).append(name or "<model>")
    found = " and ".join(f"{KINDS[k]} ({_names(names)})" for k, names in by_kind.items())
    raise ConfigError(f"{step}: the model is already {found}; {advice}")


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _kinds(kinds: Kinds) -> set[str] | None:
    if kinds is None:
        return None
    wanted = {kinds} if isinstance(kinds, str) else set(kinds)
    unknown = sorted(wanted - set(KINDS))
    if unknown:
        raise ValueError(f"unknown encoding kind(s) {unknown}; known: {sorted(KINDS)}")
    return wanted
