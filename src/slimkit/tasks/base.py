"""What a task is: how to build its model, load its data, score outputs, and train a baseline."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from slimkit.core.config import Config, parse_config
from slimkit.core.errors import ConfigError, UnknownNameError
from slimkit.core.registry import MODELS, TASKS
from slimkit.data.base import DataSplits
from slimkit.measure.quality import METRICS
from slimkit.train.config import TrainConfig
from slimkit.train.generative import SyntheticConfig


class TaskConfig(Config):
    """A recipe's ``task:`` field: a registered task, optionally with another zoo model."""

    name: str = Field(description="registered task name")
    model: str | None = Field(None, description="a zoo model to use instead of the task's default")
    model_args: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the model factory")
    labels_per_class: int | None = Field(None, ge=1, description="keep this many labelled training rows per class; "
                                                                 "the rest become unlabelled inputs")
    labels_seed: int = Field(0, description="which labelled rows labels_per_class keeps")
    synthetic: SyntheticConfig | None = Field(
        None, description="train a class-conditional generator on the labelled training rows and add its rows "
                          "to the training split (or replace it: train on synthetic, test on real)")


@dataclass
class Task:
    """A model factory, a data loader, a quality metric and a training objective."""

    name: str
    quality_metric: str
    build_model: Callable[[], nn.Module]
    load_data: Callable[[], DataSplits]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    baseline_train: TrainConfig | None  # None: the model comes pretrained, no baseline training
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    # model outputs -> targets of the task's loss: how a teacher labels unlabelled inputs
    # (argmax for classifiers, the embedding itself for encoders scored by agreement)
    pseudo_label: Callable[[torch.Tensor], torch.Tensor] | None = None

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """All metrics of the task; ``quality`` is the headline one."""
        metrics = METRICS[self.quality_metric](outputs, targets)
        return {"quality": metrics[self.quality_metric], **metrics}

    @functools.cached_property
    def data(self) -> DataSplits:
        return self.load_data()


TaskFactory = Callable[[Any], Task]


def classification_task(cfg: TaskConfig, *, default_model: str, num_classes: int,
                         load_data: Callable[[], DataSplits], baseline: TrainConfig, description: str,
                         image_shape: tuple[int, int, int] | None = None) -> Task:
    """A classifier scored by accuracy and trained with cross-entropy.

    Zoo models are told the task's classes and, for images (``image_shape`` = C, H, W), its
    channels; inputs of 64 pixels or less switch on a family's ``small_input`` variant (less
    early downsampling). ``model_args`` in the recipe override all of these.
    """
    model_name = cfg.model or default_model
    try:
        factory = MODELS.get(model_name)
    except UnknownNameError as err:
        raise ConfigError(f"task {cfg.name!r} field 'model': {err}") from None
    accepted = inspect.signature(factory).parameters
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if image_shape is not None and "in_chans" in accepted:
        kwargs["in_chans"] = image_shape[0]
    if image_shape is not None and "small_input" in accepted and max(image_shape[1:]) <= 64:
        kwargs["small_input"] = True
    kwargs.update(cfg.model_args)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise ConfigError(f"task {cfg.name!r}: model {model_name!r} rejects its arguments ({err})") from None

    def build() -> nn.Module:
        try:
            return factory(**kwargs)
        except (TypeError, ValueError) as err:  # a factory's own argument checks name the bad value
            raise ConfigError(f"task {cfg.name!r}: model {model_name!r} rejects its arguments ({err})") from None

    info: dict[str, Any] = {"model": model_name, "model_args": kwargs}
    return Task(name=cfg.name, quality_metric="accuracy", build_model=build,
                load_data=_labelled_data(cfg, load_data, num_classes, info),
                loss=F.cross_entropy, baseline_train=baseline, description=description,
                info=info, pseudo_label=_argmax)


def _labelled_data(cfg: TaskConfig, load_data: Callable[[], DataSplits], num_classes: int,
                   info: dict[str, Any]) -> Callable[[], DataSplits]:
    """``load_data`` with the task config's ``labels_per_class`` and ``synthetic`` applied (the
    generator's report lands in ``info["synthetic"]`` when the data is loaded)."""
    if cfg.labels_per_class is None and cfg.synthetic is None:
        return load_data

    def load() -> DataSplits:
        full = load_data()
        splits = full.few_labels(cfg.labels_per_class, cfg.labels_seed) if cfg.labels_per_class is not None else full
        if cfg.synthetic is not None:
            from slimkit.train.generative import add_synthetic

            source = full.train if cfg.synthetic.fit_on == "all" else None
            splits, report = add_synthetic(splits, num_classes, cfg.synthetic, source)
            info["synthetic"] = report.to_dict()
        return splits

    return load


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def build_task(spec: str | dict[str, Any] | Config) -> Task:
    """Build a task from a name, a ``task:`` mapping, or an already validated config."""
    cfg = parse_task_config(spec) if not isinstance(spec, Config) else spec
    return TASKS.get(cfg.name)(cfg)


def parse_task_config(spec: str | dict[str, Any], where: str = "task") -> Config:
    """Validate a recipe's ``task:`` field against the named task's own config class."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where}: expected a task name or a mapping with 'name', got {spec!r}")
    name = spec["name"]
    if not isinstance(name, str):
        raise ConfigError(f"{where}: field 'name' must be a string, got {name!r}")
    try:
        entry = TASKS.entry(name)
    except UnknownNameError as err:
        raise ConfigError(f"{where}: {err}") from None
    return parse_config(entry.config or TaskConfig, spec, f"{where} {name!r}")
