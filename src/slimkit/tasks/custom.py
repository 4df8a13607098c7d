"""A user's own model and data, named by dotted paths in the recipe.

```yaml
task:
  name: custom
  model: my_package.models:make_model      # () -> nn.Module (model_args are passed as kwargs)
  data: my_package.data:load_splits        # () -> DataSplits, or {"train": (x, y), "val": ..., "test": ...}
  metric: accuracy                         # or cosine (outputs are compared to targets)
```
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from slimkit.core.config import Config
from slimkit.core.errors import ConfigError
from slimkit.core.registry import TASKS
from slimkit.data.base import DataSplits, Split
from slimkit.measure.quality import cosine_loss
from slimkit.tasks.base import Task
from slimkit.train.config import TrainConfig

LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "cosine": cosine_loss,
    "mse": F.mse_loss,
}


class CustomTaskConfig(Config):
    name: Literal["custom"] = "custom"
    model: str = Field(description="'module:function' returning an nn.Module")
    model_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the model function")
    data: str = Field(description="'module:function' returning DataSplits or {'train'|'val'|'test': (inputs, targets)}")
    metric: Literal["accuracy", "cosine"] = Field("accuracy", description="quality metric on the test split")
    loss: Literal["cross_entropy", "cosine", "mse"] = Field("cross_entropy", description="training objective")
    train: TrainConfig | None = Field(default_factory=TrainConfig,
                                      description="baseline training; null if the model comes trained")


def import_object(path: str, where: str) -> Any:
    """Resolve 'package.module:attribute' (or 'package.module.attribute')."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{where}: {path!r} is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{where}: cannot import module {module_name!r} ({err})") from None
    except Exception as err:  # the user's module itself fails while it is imported
        raise ConfigError(f"{where}: importing module {module_name!r} raised {_brief(err)}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}") from None


def import_callable(path: str, where: str) -> Callable[..., Any]:
    """``import_object`` for a factory: something that is not callable is a ConfigError."""
    obj = import_object(path, where)
    if not callable(obj):
        raise ConfigError(f"{where}: {path!r} is a {type(obj).__name__}, not a function")
    return obj


def call_user(fn: Callable[..., Any], path: str, where: str, **kwargs: Any) -> Any:
    """Call a user's factory; whatever it raises becomes a one-line ConfigError naming it."""
    try:
        return fn(**kwargs)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"{where}: {path} raised {_brief(err)}") from None


def _brief(err: BaseException) -> str:
    """'ValueError: the first line of its message'."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def as_splits(obj: Any, where: str) -> DataSplits:
    """Accept DataSplits, or a mapping of split name to (inputs, targets) tensors/arrays, with an
    optional ``'unlabelled'`` entry of inputs only (for distillation to have a teacher label)."""
    if isinstance(obj, DataSplits):
        return obj
    if not isinstance(obj, dict) or not {"train", "val", "test"} <= set(obj) <= {"train", "val", "test", "unlabelled"}:
        raise ConfigError(f"{where}: must return DataSplits or a dict with keys 'train', 'val', 'test' "
                          "(and optionally 'unlabelled')")

    def split(value: Any, name: str) -> Split:
        try:
            inputs, targets = value
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: split {name!r} must be a pair (inputs, targets)") from None
        inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        return Split(tuple(torch.as_tensor(t) for t in inputs), torch.as_tensor(targets))

    unlabelled = None
    if "unlabelled" in obj:
        inputs = obj["unlabelled"]
        inputs = tuple(torch.as_tensor(t) for t in (inputs if isinstance(inputs, (tuple, list)) else (inputs,)))
        unlabelled = Split(inputs, torch.full((len(inputs[0]),), -1))
    return DataSplits(*(split(obj[k], k) for k in ("train", "val", "test")), unlabelled=unlabelled)


@TASKS.register("custom", config=CustomTaskConfig)
def custom(cfg: CustomTaskConfig) -> Task:
    """Your own model and data, named by 'module:function' paths."""
    make_model = import_callable(cfg.model, "task 'custom' field 'model'")
    load = import_callable(cfg.data, "task 'custom' field 'data'")

    def build() -> nn.Module:
        model = call_user(make_model, cfg.model, "task 'custom' field 'model'", **cfg.model_args)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"task 'custom' field 'model': {cfg.model} returned {type(model).__name__}, not nn.Module")
        return model

    def load_data() -> DataSplits:
        where = "task 'custom' field 'data'"
        return as_splits(call_user(load, cfg.data, where), f"{where} ({cfg.data})")

    return Task(name="custom", quality_metric=cfg.metric, build_model=build, load_data=load_data,
                loss=LOSSES[cfg.loss], baseline_train=cfg.train, description=cfg.model,
                info={"model": cfg.model, "data": cfg.data},
                pseudo_label=(lambda logits: logits.argmax(-1)) if cfg.loss == "cross_entropy" else (lambda out: out))
