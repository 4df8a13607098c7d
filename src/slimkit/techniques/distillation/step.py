"""The ``distill`` recipe step: train a student with a teacher's outputs as loss terms of the one
training loop. The student is the model entering the step (e.g. after pruning) or a zoo model
built for the task; the teacher is the run's baseline or the model entering the step."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from slimkit.core.config import Config
from slimkit.core.context import Context
from slimkit.core.errors import CheckpointError, ConfigError
from slimkit.core.step import StepResult, register_step


class StudentConfig(Config):
    model: str = Field(description="a zoo model name, built for the task (classes, channels, small input)")
    model_args: dict[str, Any] = Field(default_factory=dict, description="overrides of the factory's arguments")

    @field_validator("model")
    @classmethod
    def _known(cls, value: str) -> str:
        from slimkit.core.errors import UnknownNameError
        from slimkit.core.registry import MODELS

        try:
            MODELS.get(value)
        except UnknownNameError as err:
            raise ValueError(str(err)) from None
        return value


class LogitsLoss(Config):
    weight: float = Field(1.0, ge=0, description="weight of the soft-target term")
    temperature: float = Field(4.0, gt=0, description="softmax temperature T (the term is scaled by T²)")


class EmbeddingLoss(Config):
    weight: float = Field(1.0, ge=0, description="weight of the embedding term")
    loss: Literal["cosine", "mse"] = Field("cosine", description="1 - cosine, or mean squared error")


class PairsLoss(Config):
    pairs: dict[str, str] = Field(min_length=1, description="{student module path: teacher module path}")
    weight: float = Field(1.0, ge=0, description="weight of the term")


class AttentionLoss(PairsLoss):
    p: float = Field(2.0, gt=0, description="attention map exponent (|F|^p, mean over channels)")


class RelationLoss(PairsLoss):
    relation_heads: int = Field(12, ge=1, description="relation heads q, k and v are split into")


class Losses(Config):
    logits: LogitsLoss | None = Field(None, description="Hinton's soft targets")
    embedding: EmbeddingLoss | None = Field(None, description="output embeddings (sentence encoders)")
    features: PairsLoss | None = Field(None, description="FitNets hints through learned adapters")
    attention: AttentionLoss | None = Field(None, description="attention transfer of spatial maps")
    relation: RelationLoss | None = Field(None, description="MiniLMv2 self-attention relations")


class DistillConfig(Config):
    teacher: Literal["baseline", "input"] = Field("baseline", description="the run's baseline model, or the model "
                                                                          "entering this step")
    student: Literal["input"] | StudentConfig = Field("input", description="'input' (the model entering this step, "
                                                                           "e.g. pruned) or {model, model_args}")
    losses: Losses = Field(default_factory=lambda: Losses(logits=LogitsLoss()), description="distillation terms")
    hard_weight: float = Field(1.0, ge=0, description="weight of the task's own loss on the labels (0: teacher only)")
    epochs: int = Field(10, ge=1, description="training epochs")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    batch_size: int = Field(64, ge=1, description="batch size")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimizer")

    @model_validator(mode="after")
    def _consistent(self) -> "DistillConfig":
        if self.teacher == "input" and self.student == "input":
            raise ValueError("teacher and student are both the model entering the step: pick a zoo student or "
                             "teacher: baseline")
        if not any(getattr(self.losses, k) is not None for k in Losses.model_fields):
            raise ValueError("losses: name at least one distillation term")
        return self


def restore_distill(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """A zoo student replaced the model: build it again (its weights then load)."""
    from slimkit.core.registry import MODELS

    try:
        return MODELS.get(structure["model"])(**structure["model_args"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"distill step's recorded student is malformed ({err!r})") from None


@register_step("distill", config=DistillConfig, restore=restore_distill)
def distill(model: nn.Module, cfg: DistillConfig, ctx: Context) -> StepResult:
    """Knowledge distillation: the student trains on the task's data with the teacher's logits,
    embeddings, features, attention maps or self-attention relations as loss terms of the one
    loop (plus the task's own loss, weighted by hard_weight)."""
    from slimkit.measure.size import count_params
    from slimkit.techniques.distillation import losses as L
    from slimkit.train.config import TrainConfig

    teacher = _teacher(model, cfg, ctx)
    structure = None
    if cfg.student == "input":
        student = model
    else:
        student, structure = _zoo_student(cfg.student, ctx)
    inputs = tuple(t[:2].to(ctx.device) for t in ctx.data.train.inputs)
    spec, terms = cfg.losses, []
    if spec.logits:
        terms.append(L.LogitDistillation(teacher, spec.logits.temperature, spec.logits.weight))
    if spec.embedding:
        terms.append(L.EmbeddingDistillation(teacher, spec.embedding.loss, spec.embedding.weight))
    if spec.features:
        terms.append(L.FeatureDistillation(student, teacher, spec.features.pairs, inputs, spec.features.weight))
    if spec.attention:
        terms.append(L.AttentionTransfer(student, teacher, spec.attention.pairs, spec.attention.p,
                                         spec.attention.weight))
    if spec.relation:
        mask = ctx.data.train.mask_input
        terms.append(L.AttentionRelationDistillation(student, teacher, spec.relation.pairs,
                                                     spec.relation.relation_heads, mask, spec.relation.weight))
    try:
        train = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, optimizer=cfg.optimizer)
        fit = ctx.train(student, train, loss_terms=terms, task_loss_weight=cfg.hard_weight, description="distill")
    finally:
        for term in terms:
            getattr(term, "remove", lambda: None)()
    info = {"teacher": cfg.teacher, "student": cfg.student if cfg.student == "input" else cfg.student.model,
            "teacher_params": count_params(teacher), "student_params": count_params(student),
            "terms": [t.name for t in terms], "train": fit.summary()}
    return StepResult(student, info=info, structure=structure)


def _teacher(model: nn.Module, cfg: DistillConfig, ctx: Context) -> nn.Module:
    if cfg.teacher == "input":
        return copy.deepcopy(model).eval()
    if ctx.baseline_weights is None:
        raise ConfigError("distill: teacher 'baseline' needs the run's baseline checkpoint (run it in a recipe)")
    from slimkit.core.step import rebuild_model

    return rebuild_model(ctx.task.build_model, [], ctx.baseline_weights).to(ctx.device)


def _zoo_student(student: StudentConfig, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    from slimkit.tasks import build_task

    if ctx.task_config is None:
        raise ConfigError("distill: a zoo student is built for the task; run the step in a recipe")
    task = build_task({**ctx.task_config, "model": student.model, "model_args": student.model_args})
    args = task.info.get("model_args")
    if args is None:
        raise ConfigError(f"distill: task {ctx.task.name!r} does not build zoo models; give student: input")
    model = task.build_model().to(ctx.device)
    return model, {"model": student.model, "model_args": args}
