"""What every encoded Linear / Conv2d shares: the plain layer's shape, bias and geometry, a forward
pass with the decoded weight, and ``densify`` back to the plain layer. An encoded layer class
names its twin first (``class SparseConv2d(Conv2dTwin, _SparseWeight)``) and calls ``_take_*``;
``swap_twins_`` puts twins in place of a model's layers."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.encoding.dense import dense_conv2d, dense_linear


# The torch layers whose subclasses third-party code makes only to change the constructor
# (transformers' EfficientNetDepthwiseConv2d(nn.Conv2d) sets groups); the methods that compute.
PLAIN_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                             nn.ConvTranspose3d, nn.Linear, nn.Embedding)
_COMPUTE = ("forward", "_conv_forward")


def plain_type(module: object) -> type | None:
    """The torch layer class ``module`` computes exactly as: its own class if that is one of
    ``PLAIN_LAYERS``, the base of a subclass that overrides none of the computing methods, else
    None (LoRA wrappers, quantized stubs and the like override ``forward``). Steps select layers
    by this, so a constructor-only subclass is pruned, quantized, shared like its base."""
    kind = type(module)
    if kind in PLAIN_LAYERS:
        return kind
    for base in kind.__mro__[1:]:
        if base in PLAIN_LAYERS:
            return base if all(getattr(kind, f, None) is getattr(base, f, None) for f in _COMPUTE) else None
    return None


def _bias(layer: nn.Module, trainable: bool) -> nn.Parameter | None:
    return None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=trainable)


class LinearTwin:
    """Stands for an ``nn.Linear``: ``F.linear`` with the decoded weight."""

    def _take_linear(self, linear: nn.Linear, *, trainable_bias: bool) -> None:
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = _bias(linear, trainable_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(), self.bias)

    def densify(self) -> nn.Linear:
        return dense_linear(self.dense_weight(), self.bias)


class Conv2dTwin:
    """Stands for an ``nn.Conv2d`` with zero padding: ``F.conv2d`` with the decoded weight."""

    @classmethod
    def _check_conv(cls, conv: nn.Conv2d) -> None:
        if conv.padding_mode != "zeros":
            raise ValueError(f"{cls.__name__}: padding_mode {conv.padding_mode!r} is not supported")

    def _take_conv(self, conv: nn.Conv2d, *, trainable_bias: bool) -> None:
        self.bias = _bias(conv, trainable_bias)
        take_conv_geometry(self, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def densify(self) -> nn.Conv2d:
        return dense_conv2d(self.dense_weight(), self.bias, self)


GEOMETRY = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding",
            "dilation", "groups", "padding_mode")


def take_conv_geometry(layer: nn.Module, conv: nn.Conv2d) -> None:
    """Copy what third-party code reads from an ``nn.Conv2d`` (channels, kernel, stride, padding,
    dilation, groups, padding mode) onto the layer standing for it."""
    for name in GEOMETRY[2:]:
        setattr(layer, name, getattr(conv, name))


class WrapsLayer:
    """For a module wrapping one plain layer (``_wrapped()``) in place of it: the wrapped layer's
    geometry (``in_features``, ``kernel_size``, ...) reads through, so third-party forwards that
    read them keep working."""

    def _wrapped(self) -> nn.Module:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # nn.Module's: parameters, buffers, children
        except AttributeError:
            if name in GEOMETRY:
                return getattr(self._wrapped(), name)
            raise


def swap_twins_(model: nn.Module, names: list[str], twins: dict[type, Any], what: str,
                build: Callable[[str, nn.Module, Any], nn.Module | None]) -> dict[str, nn.Module]:
    """Replace each named Linear / Conv2d by ``build(name, layer, twin class)`` (moved to the
    layer's device), in place, skipping a layer for which ``build`` returns None; {name: new
    module}. ``twins`` maps the plain classes to their encoded twins; ``what`` names the encoding
    in the error for a layer of another kind."""
    modules = dict(model.named_modules())
    done = {}
    for name in names:
        layer = modules[name]
        twin_type = twins.get(plain_type(layer))
        if twin_type is None:
            raise ValueError(f"{what}: {name} is a {type(layer).__name__}, not a Linear or Conv2d")
        twin = build(name, layer, twin_type)
        if twin is not None:
            model.set_submodule(name, twin.to(layer.weight.device))
            done[name] = twin
    return done
