"""The ``fuse`` step: operator fusion as a recipe step, with a ``restore`` for resuming runs.

Fusion is a deployment-time transform: BatchNorm's eval-mode running statistics are baked into
the preceding layers' weights, and dropout between merged layers is gone. Outputs in eval mode
are unchanged; a ``train`` step after ``fuse`` fine-tunes the folded weights and no BatchNorm
statistics are updated any more, so put ``fuse`` last, after every step that trains.
"""

from __future__ import annotations


import torch.nn as nn
from pydantic import Field

from slimkit.core.config import Config
from slimkit.tasks.context import Context
from slimkit.core.step import StepResult, register_step
from slimkit.techniques.fusion.fuse import fuse_model


class FuseConfig(Config):
    fold_bn: bool = Field(True, description="fold eval-mode BatchNorm into the preceding Conv, ConvTranspose or Linear")
    fuse_activations: bool = Field(True, description="run ReLU/ReLU6/Hardswish/SiLU/GELU in place inside the "
                                                     "Conv or Linear that feeds it (one intermediate tensor fewer)")
    merge_linear: bool = Field(True, description="merge Linear -> Linear (and 1x1 conv -> 1x1 conv) with no "
                                                 "nonlinearity between, when the merged layer costs no more MACs")


class FuseStructure(FuseConfig):
    dataflow_folds: list[tuple[str, str]] = Field(
        default_factory=list, description="(BatchNorm, layer) pairs folded from torch.export's dataflow, inside "
                                          "modules fx cannot trace (found on example inputs, replayed on restore)")


EXAMPLE_ROWS = 8  # rows torch.export runs the model on to find BatchNorms fx cannot reach


def restore_fusion(model: nn.Module, structure: FuseStructure) -> nn.Module:
    """Re-apply the recorded fusion to a fresh, unfused model, so the saved tensors load into it.

    The rewrite depends on the architecture only, never on the weights, so the result has the
    module tree and state-dict keys of the model the step produced; the structure is the record
    (the fx rewrites follow from the config, the dataflow folds are listed).
    """
    return fuse_model(model, fold_bn=structure.fold_bn, fuse_activations=structure.fuse_activations,
                      merge_linear=structure.merge_linear, folds=structure.dataflow_folds)[0]


def example_inputs(ctx: Context, rows: int = EXAMPLE_ROWS) -> tuple:
    """A few training rows (seeded), on the context's device: what torch.export runs the model on."""
    from slimkit.data.batches import calibration_batches

    return tuple(t.to(ctx.device) for t in calibration_batches(ctx.data.train, rows, rows, ctx.seed)[0])


@register_step("fuse", config=FuseConfig, restore=restore_fusion, structure=FuseStructure)
def fuse(model: nn.Module, cfg: FuseConfig, ctx: Context) -> StepResult:
    """Fuse operators for deployment: fold BatchNorm, fuse activations, merge linear layers (exact in eval).

    The model is traced with torch.fx (per traceable subtree when the whole model is not);
    BatchNorms inside modules fx cannot trace are folded from torch.export's dataflow on a few
    training rows. The step's info is the fusion report: counts, what was fused, what was left and why.
    """
    fused, report = fuse_model(model, **cfg.model_dump(), example=example_inputs(ctx))
    return StepResult(fused, info=report.to_dict(),
                      structure=FuseStructure(**cfg.model_dump(), dataflow_folds=report.dataflow_folds))
