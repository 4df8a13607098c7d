"""Training hyper-parameters, shared by baseline training and every step that trains.

A step that trains holds one nested ``finetune: TrainConfig`` (``TrainingStepConfig``); its
defaults may differ per step (``finetune_config``), every field is honoured by the one loop.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model, model_validator
from pydantic.fields import FieldInfo

from slimkit.core.config import Config
from slimkit.data.augment import AugmentConfig
from slimkit.train.checkpointing import CheckpointConfig


class TrainConfig(Config):
    epochs: int = Field(10, ge=0, description="passes over the training split")
    batch_size: int = Field(64, ge=1, description="examples per forward pass")
    accumulate: int = Field(1, ge=1, description="batches whose gradients are summed per optimizer step "
                                                 "(effective batch: batch_size * accumulate)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimizer")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)")
    weight_decay: float = Field(0.0, ge=0, description="L2 / decoupled weight decay")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning-rate schedule over all steps")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this value")
    keep_best: bool = Field(True, description="restore the weights of the epoch with the best validation quality")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="compute precision of forward passes: bf16 (CUDA; CPUs with native bf16) or fp16 "
                            "(CUDA, with dynamic loss scaling) autocast, fp32 master weights and loss")
    checkpointing: CheckpointConfig | None = Field(
        None, description="gradient checkpointing: segments, strategy (plan, sqrt, all) and memory budget")
    augment: AugmentConfig | None = Field(
        None, description="per-batch augmentation of image inputs (kornia ops, RandAugment/TrivialAugment, "
                          "mixup/CutMix), training only")


def finetune_config(name: str, **defaults: Any) -> type[TrainConfig]:
    """A ``TrainConfig`` subclass whose defaults suit one step: ``epochs=0`` keeps the field's
    bounds and description; ``epochs=Field(3, ge=1)`` also tightens them."""
    fields: dict[str, Any] = {}
    for key, value in defaults.items():
        base = TrainConfig.model_fields[key]
        info = FieldInfo.merge_field_infos(base, value) if isinstance(value, FieldInfo) \
            else FieldInfo.merge_field_infos(base, default=value)
        fields[key] = (base.annotation, info)
    return create_model(name, __base__=TrainConfig, __module__=__name__, **fields)


def keep_last_epoch(data: Any, field: str = "finetune") -> Any:
    """For a ``mode="before"`` validator of a step whose training must keep its last epoch in some
    mode (a moving mask, a frozen validated output): ``data[field]`` with ``keep_best: False``
    unless the user wrote ``keep_best`` (a dict, or a config built in Python)."""
    finetune = data.get(field) or {}
    if isinstance(finetune, dict) and "keep_best" not in finetune:
        return {**data, field: {**finetune, "keep_best": False}}
    if isinstance(finetune, TrainConfig) and "keep_best" not in finetune.model_fields_set:
        return {**data, field: finetune.model_copy(update={"keep_best": False})}
    return data


class TrainingStepConfig(Config):
    """Base of the configs of steps that train: training settings live under ``finetune``, and a
    recipe that writes them at the step's top level (``prune: {epochs: 3}``) is told where they went."""

    @model_validator(mode="before")
    @classmethod
    def _training_fields_moved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [k for k in data if k in TrainConfig.model_fields and k not in cls.model_fields]
            if moved:
                nested = ", ".join(f"{k}: {data[k]!r}" for k in moved)
                raise ValueError(f"{', '.join(moved)}: training settings live under finetune "
                                 f"(write finetune: {{{nested}}})")
        return data
