"""Operator fusion: BatchNorm folding, activation fusion and linear merging (the ``fuse`` step)."""

from slimkit.techniques.fusion import step  # noqa: F401  (registers the step)
from slimkit.techniques.fusion.fuse import FusedConvAct, FusedLinearAct, FusionReport, fuse_model

__all__ = ["FusedConvAct", "FusedLinearAct", "FusionReport", "fuse_model"]
