"""The ``distill`` recipe step: train a student with a teacher's outputs as loss terms of the one
training loop. The student is the model entering the step (e.g. after pruning), a zoo model built
for the task, or derived from the teacher (blocks dropped, width shrunk by the structured pruning
engine, the teacher's weights kept); the teacher is the run's baseline or the model entering the
step. Besides the labelled training split, the teacher can label the task's unlabelled inputs and
generated ones (mixup, sentence splicing); its outputs are computed once and cached on disk."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from slimkit.core.config import Config
from slimkit.tasks.context import Context
from slimkit.core.errors import CheckpointError, ConfigError
from slimkit.core.step import StepResult, register_step
from slimkit.data.base import Split
from slimkit.techniques.pruning.structure import Skeleton
from slimkit.train.config import TrainingStepConfig, finetune_config


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


class Derivation(Config):
    drop: list[str] = Field(default_factory=list, description="module paths of blocks to remove (residual blocks, "
                                                              "transformer layers), replaced by the identity")
    width: float = Field(1.0, gt=0, le=1, description="fraction of channels / neurons kept (structured pruning, "
                                                      "uniform)")
    heads: float = Field(0.0, ge=0, lt=1, description="fraction of attention heads removed")
    criterion: Literal["l1", "l2", "activation"] = Field("l1", description="which channels and heads stay")
    round_to: int | None = Field(None, ge=1, description="keep channel counts multiples of this")


class DerivedStudent(Config):
    derive: Derivation = Field(description="a student cut from the teacher, keeping its weights")


class Generate(Config):
    method: Literal["mixup", "splice", "deepinversion"] = Field(
        description="mixup: convex mixes of two training inputs; splice: a token sequence's head joined to another's "
                    "tail; deepinversion: inputs synthesised from the teacher's BatchNorm statistics (no data)")
    count: int = Field(ge=1, description="how many inputs to generate")
    alpha: float = Field(1.0, gt=0, description="mixup: the mixing weight is drawn from Beta(alpha, alpha)")
    steps: int = Field(400, ge=1, description="deepinversion: optimisation steps per batch of inputs")
    lr: float = Field(0.1, gt=0, description="deepinversion: Adam learning rate on the inputs")
    bn_weight: float = Field(100.0, ge=0, description="deepinversion: weight of the BatchNorm-statistics term "
                                                      "against the class term")
    value_range: list[float] | None = Field(
        None, min_length=2, max_length=2,
        description="deepinversion: clamp inputs to [low, high] (the model's input range, e.g. [0, 1])")


class DistillData(Config):
    labelled: bool = Field(True, description="train on the task's labelled training split (false with generate: "
                                             "deepinversion is data-free distillation: no training row is used)")
    unlabelled: bool = Field(False, description="add the task's unlabelled training inputs, labelled by the teacher")
    generate: Generate | None = Field(None, description="add generated inputs, labelled by the teacher")
    cache_teacher: bool = Field(True, description="compute the teacher's outputs once per input and cache them on "
                                                  "disk (SLIMKIT_CACHE) instead of running it every batch")


class LogitsLoss(Config):
    weight: float = Field(1.0, ge=0, description="weight of the soft-target term")
    temperature: float = Field(4.0, gt=0, description="softmax temperature T (the term is scaled by T²)")


class EmbeddingLoss(Config):
    weight: float = Field(1.0, ge=0, description="weight of the embedding term")
    loss: Literal["cosine", "mse"] = Field("cosine", description="1 - cosine, or mean squared error")


class PairsLoss(Config):
    pairs: dict[str, str] = Field(min_length=1, description="{student module path: teacher module path}")
    weight: float = Field(1.0, ge=0, description="weight of the term")


class FeaturesLoss(PairsLoss):
    adapter: Literal["linear", "none"] = Field("linear", description="linear: a learned map from the student's "
                                               "channels to the teacher's (FitNets); none: compare the features "
                                               "directly (same shapes; TinyBERT's hidden-state term)")


class AttentionLoss(PairsLoss):
    p: float = Field(2.0, gt=0, description="attention map exponent (|F|^p, mean over channels)")


class RelationLoss(PairsLoss):
    relation_heads: int = Field(12, ge=1, description="relation heads q, k and v are split into")


class Losses(Config):
    logits: LogitsLoss | None = Field(None, description="Hinton's soft targets")
    embedding: EmbeddingLoss | None = Field(None, description="output embeddings (sentence encoders)")
    features: FeaturesLoss | None = Field(None, description="FitNets hints through learned adapters, or "
                                          "hidden states matched directly (padding tokens excluded)")
    attention: AttentionLoss | None = Field(None, description="attention transfer of spatial maps")
    relation: RelationLoss | None = Field(None, description="MiniLMv2 self-attention relations")


DistillFinetune = finetune_config("DistillFinetune", epochs=Field(10, ge=1))


class DistillConfig(TrainingStepConfig):
    teacher: Literal["baseline", "input"] = Field("baseline", description="the run's baseline model, or the model "
                                                                          "entering this step")
    student: Literal["input"] | StudentConfig | DerivedStudent = Field(
        "input", description="'input' (the model entering this step, e.g. pruned), {model, model_args} (a zoo "
                             "model) or {derive: {drop, width, heads}} (cut from the teacher)")
    data: DistillData = Field(default_factory=DistillData, description="what the student trains on besides the "
                                                                       "labelled training split")
    losses: Losses = Field(default_factory=lambda: Losses(logits=LogitsLoss()), description="distillation terms")
    hard_weight: float = Field(1.0, ge=0, description="weight of the task's own loss on the labels (0: teacher only)")
    finetune: DistillFinetune = Field(default_factory=DistillFinetune,
                                      description="the student's training (keep_best: false keeps the last epoch, "
                                                  "for a few-label setting without a labelled validation set)")

    @model_validator(mode="after")
    def _consistent(self) -> "DistillConfig":
        if self.teacher == "input" and self.student == "input":
            raise ValueError("teacher and student are both the model entering the step: pick a zoo student or "
                             "teacher: baseline")
        if not any(getattr(self.losses, k) is not None for k in Losses.model_fields):
            raise ValueError("losses: name at least one distillation term")
        return self


class DistillStructure(Config):
    """The student: a zoo model (``model``, ``model_args``) or a skeleton cut from the teacher."""

    model: str | None = Field(None, description="the zoo student's registered name")
    model_args: dict[str, Any] = Field(default_factory=dict, description="its arguments, as built for the task")
    derived: Skeleton | None = Field(None, description="a student derived from the teacher: its skeleton")

    @model_validator(mode="after")
    def _one_student(self) -> "DistillStructure":
        if (self.model is None) == (self.derived is None):
            raise ValueError("record either a zoo student (model) or a derived one (derived)")
        return self


def restore_distill(model: nn.Module, structure: DistillStructure) -> nn.Module:
    """A zoo student replaced the model: build it again; a derived student: give the model its
    skeleton (the weights then load)."""
    from slimkit.core.registry import MODELS
    from slimkit.techniques.pruning.structure import apply_structure_

    if structure.derived is not None:
        return apply_structure_(model, structure.derived, "distill")
    try:
        return MODELS.get(structure.model)(**structure.model_args)
    except TypeError as err:
        raise CheckpointError(f"distill step's recorded student {structure.model!r} does not build: {err}") from None


@register_step("distill", config=DistillConfig, restore=restore_distill, structure=DistillStructure)
def distill(model: nn.Module, cfg: DistillConfig, ctx: Context) -> StepResult:
    """Knowledge distillation: the student trains on the task's data with the teacher's logits,
    embeddings, features, attention maps or self-attention relations as loss terms of the one
    loop (plus the task's own loss, weighted by hard_weight)."""
    from slimkit.measure.size import count_params
    from slimkit.techniques.distillation import losses as L
    teacher = _teacher(model, cfg, ctx)
    structure = None
    if isinstance(cfg.student, StudentConfig):
        student, structure = _zoo_student(cfg.student, ctx)
    elif isinstance(cfg.student, DerivedStudent):
        student, structure = _derived_student(model, teacher, cfg.student.derive, cfg, ctx)
    else:
        student = model
    teacher_params = count_params(teacher)
    frozen = L.Teacher(teacher)
    data, extra_info = _training_data(frozen, cfg, ctx)
    inputs = tuple(t[:2].to(ctx.device) for t in data.train.inputs)
    terms = distillation_terms(student, frozen, cfg.losses, inputs, data.train.mask_input)
    try:
        fit = ctx.train(student, cfg.finetune, loss_terms=terms, task_loss_weight=cfg.hard_weight, description="distill",
                        data=data)
    finally:
        for term in terms:
            getattr(term, "remove", lambda: None)()
    if isinstance(cfg.student, StudentConfig):
        name = cfg.student.model
    else:
        name = "derived" if isinstance(cfg.student, DerivedStudent) else "input"
    info = {"teacher": cfg.teacher, "student": name, "teacher_params": teacher_params,
            "student_params": count_params(student), "terms": [t.name for t in terms], **extra_info,
            "teacher_forwards_in_training": frozen.forwards, "train": fit.summary()}
    return StepResult(student, info=info, structure=structure)


def distillation_terms(student: nn.Module, frozen: Any, spec: Losses, inputs: tuple,
                       mask_input: int | None) -> list:
    """The loss terms ``spec`` asks for, between ``student`` and the frozen teacher (an
    ``losses.Teacher``); ``inputs`` (a couple of rows) size the feature adapters. The ``distill``
    step adds them to slimkit's loop; ``slimkit.api.distill_loss`` to a user's."""
    from slimkit.techniques.distillation import losses as L

    terms: list = []
    if spec.logits:
        terms.append(L.LogitDistillation(frozen, spec.logits.temperature, spec.logits.weight))
    if spec.embedding:
        terms.append(L.EmbeddingDistillation(frozen, spec.embedding.loss, spec.embedding.weight))
    if spec.features:
        terms.append(L.FeatureDistillation(student, frozen, spec.features.pairs, inputs, spec.features.weight,
                                           spec.features.adapter, mask_input))
    if spec.attention:
        terms.append(L.AttentionTransfer(student, frozen, spec.attention.pairs, spec.attention.p,
                                         spec.attention.weight))
    if spec.relation:
        terms.append(L.AttentionRelationDistillation(student, frozen, spec.relation.pairs,
                                                     spec.relation.relation_heads, mask_input,
                                                     spec.relation.weight))
    return terms


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
    return model, DistillStructure(model=student.model, model_args=args)


def _derived_student(model: nn.Module, teacher: nn.Module, spec: Derivation, cfg: DistillConfig,
                     ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of the teacher with blocks dropped and channels / heads pruned (its weights kept);
    recorded as a skeleton relative to the model entering the step."""
    from slimkit.techniques.pruning.structure import snapshot, structure_diff
    from slimkit.techniques.pruning.structured import Plan, StructuredPruner, attention_heads

    changed = [name for name, structure in ctx.structures if structure is not None]
    if cfg.teacher == "baseline" and changed:
        raise ConfigError("distill: a student derived from the baseline must come before steps that change the "
                          f"model's structure ({changed}); or use teacher: input")
    if not spec.drop and spec.width == 1.0 and not spec.heads:
        raise ConfigError("distill: student.derive changes nothing; set drop, width < 1 or heads > 0")
    before = snapshot(model)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    data = ctx.data.train
    example = tuple(t.to(ctx.device) for t in data.example_inputs(2))
    if spec.heads and not attention_heads(student):
        raise ConfigError("distill: student.derive.heads is set, but the teacher has no attention module that "
                          "slimkit recognises")
    if spec.drop:
        _drop_blocks(student, spec.drop, example, teacher)
    if spec.width < 1.0 or spec.heads:
        batches = [tuple(t.to(ctx.device) for t in inputs) for inputs, _ in data.head(256).batches(64)]
        plan = Plan(criterion=spec.criterion, ratio=1.0 - spec.width, heads=spec.heads, round_to=spec.round_to,
                    batches=batches)
        StructuredPruner(student, example, plan).step()
    return student.train(), DistillStructure(derived=structure_diff(before, student, spec.drop))


def _drop_blocks(student: nn.Module, names: list[str], example: tuple, teacher: nn.Module) -> None:
    """Replace the named blocks by the identity; refuse any whose removal breaks the forward pass
    or changes the output's shape (its output did not have its input's shape)."""
    import torch

    from slimkit.techniques.pruning.blocks import removable_blocks, remove_blocks_

    with torch.no_grad():
        shape = student.eval()(*example).shape
        remove_blocks_(student, names)
        try:
            after = student(*example).shape
        except (RuntimeError, ValueError, TypeError):
            after = None
    if after != shape:
        raise ConfigError(f"distill: student.derive.drop {names}: without these blocks the model no longer runs or "
                          f"changes its output shape; blocks that can go: {removable_blocks(teacher, example)}")


def _training_data(teacher, cfg: DistillConfig, ctx: Context):
    """The labelled training split, plus unlabelled and generated inputs with the teacher's
    pseudo-labels; with ``cache_teacher`` every row carries the teacher's outputs."""
    from slimkit.data.base import DataSplits
    from slimkit.techniques.distillation.data import concat, generate, teacher_outputs

    splits: DataSplits = ctx.data
    train = splits.train
    info: dict = {"labelled_rows": len(train) if cfg.data.labelled else 0}
    extra = []
    if cfg.data.unlabelled:
        if splits.unlabelled is None or not len(splits.unlabelled):
            raise ConfigError(f"distill: data.unlabelled is set but task {ctx.task.name!r} has no unlabelled inputs "
                              "(a classification task gets them with labels_per_class)")
        extra.append(splits.unlabelled)
        info["unlabelled_rows"] = len(splits.unlabelled)
    if cfg.data.generate is not None:
        g = cfg.data.generate
        if g.method == "deepinversion":
            extra.append(_inverted(teacher.model, g, ctx, info))
        else:
            pool = concat([train, *extra] if cfg.data.labelled else extra) if (cfg.data.labelled or extra) else None
            if pool is None:
                raise ConfigError(f"distill: generate {g.method} makes inputs from training inputs, and data.labelled "
                                  "is false with no unlabelled inputs (deepinversion needs none)")
            extra.append(generate(pool, g.method, g.count, g.alpha, seed=ctx.seed))
        info["generated_rows"] = g.count
    if not cfg.data.labelled and not extra:
        raise ConfigError("distill: data.labelled is false and nothing else to train on (add data.unlabelled or "
                          "data.generate)")
    output_terms = cfg.losses.logits is not None or cfg.losses.embedding is not None
    if cfg.data.labelled and not extra and not (cfg.data.cache_teacher and output_terms):
        return splits, info
    offset = len(train) if cfg.data.labelled else 0
    if extra and cfg.hard_weight and ctx.task.pseudo_label is None:
        raise ConfigError(f"distill: task {ctx.task.name!r} cannot turn teacher outputs into labels; set "
                          "hard_weight: 0 to train the extra inputs on the teacher's outputs alone")
    full = concat([train, *extra] if cfg.data.labelled else extra)
    outputs, info["teacher_cache"] = teacher_outputs(teacher.model, full, ctx.device, cfg.data.cache_teacher)
    if extra:
        labels = ctx.task.pseudo_label(outputs).to(train.targets.dtype) if ctx.task.pseudo_label else None
        targets = full.targets.clone().to(train.targets.dtype)
        if labels is not None:
            targets[offset:] = labels[offset:]
        full = dataclasses.replace(full, targets=targets)
    if cfg.data.cache_teacher and output_terms:
        full = full.with_extras(teacher_outputs=outputs)
    return DataSplits(full, splits.val, splits.test, splits.unlabelled), info


def _inverted(teacher: nn.Module, g: Generate, ctx: Context, info: dict) -> Split:
    """``g.count`` inputs synthesised from the teacher alone (``data.synthetic.deep_inversion``):
    only the shape of one input is read from the task, no training row."""
    from slimkit.data.synthetic import deep_inversion
    from slimkit.search import scan_progress

    example = ctx.data.train.example_inputs(1)
    if len(example) != 1 or not example[0].is_floating_point():
        raise ConfigError("distill: generate deepinversion synthesises one float input (images); this task's inputs "
                          f"are {[tuple(t.shape) for t in example]}")
    with torch.no_grad():
        classes = int(teacher.eval()(example[0].to(ctx.device)).shape[-1])
    with scan_progress(ctx.progress, "distill: deepinversion") as progress:
        split, report = deep_inversion(teacher, tuple(example[0].shape[1:]), g.count, classes, steps=g.steps, lr=g.lr,
                                       bn_weight=g.bn_weight,
                                       value_range=tuple(g.value_range) if g.value_range else None, seed=ctx.seed, device=ctx.device,
                                       progress=(lambda done, total: progress(done, total, "steps")) if progress else None)
    info["deepinversion"] = {"steps": report.steps, "teacher_agreement": round(report.teacher_agreement, 4),
                             "final_bn_loss": report.final_bn_loss, "seconds": round(report.seconds, 2)}
    return split
