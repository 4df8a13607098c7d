"""Recipe schema and validation: everything is checked before any step runs.

```yaml
version: 1
task: digits-cnn                 # or {name: shapes-cnn, model: cnn_shapes, model_args: {width: 16}}
seed: 0
baseline: {train: {epochs: 30}}  # overrides of the task's baseline training, or {weights: file.safetensors}
measure: {batch_n: 64, repeats: 30, threads: 2}
steps:
  - train: {epochs: 5}
```
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

import yaml
from pydantic import Field, ValidationError, model_validator

from slimkit.core.config import Config, format_validation_error, parse_config
from slimkit.core.errors import ConfigError, UnknownNameError
from slimkit.core.registry import STEPS
from slimkit.core.io import weights_mismatch
from slimkit.measure.config import MeasureConfig
from slimkit.train.config import TrainConfig

RECIPE_VERSION = 1
TOP_LEVEL = ("version", "task", "seed", "baseline", "measure", "steps")


MAX_SEED = 2**63 - 1  # torch seeds are 64-bit; each step's seed is the recipe's plus its index


class BaselineConfig(Config):
    train: dict[str, Any] | None = Field(None, description="overrides of the task's default baseline training")
    weights: str | None = Field(None, description="a safetensors file to start from instead of training")

    @model_validator(mode="after")
    def _weights_or_train(self) -> "BaselineConfig":
        if self.train is not None and self.weights is not None:
            raise ValueError("give 'weights' (the baseline is loaded) or 'train' (it is trained), not both")
        return self


class RecipeLoader(yaml.SafeLoader):
    """A YAML SafeLoader for which a key given twice in one mapping is an error, not a silent override."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor' merges are overrides by design
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class RecipeStep:
    index: int  # 1-based position in ``steps`` (0 is the baseline)
    name: str  # unique display name: the technique, with '#k' when it repeats
    technique: str
    config: Config


@dataclass(frozen=True)
class Recipe:
    task: Config
    seed: int
    baseline_train: TrainConfig | None
    baseline_weights: Path | None
    measure: MeasureConfig
    steps: tuple[RecipeStep, ...]
    source: str  # where the recipe came from, for messages

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe: every default filled in, JSON/YAML-able, loadable again."""
        baseline: dict[str, Any] = {}
        if self.baseline_weights is not None:
            baseline["weights"] = str(self.baseline_weights)
        if self.baseline_train is not None:
            baseline["train"] = self.baseline_train.to_json_dict()
        return {
            "version": RECIPE_VERSION,
            "task": self.task.to_json_dict(),
            "seed": self.seed,
            "baseline": baseline,
            "measure": self.measure.to_json_dict(),
            "steps": [{s.technique: s.config.to_json_dict()} for s in self.steps],
        }

    def fingerprint(self) -> str:
        """Identifies the run: equal for recipes that would compute the same thing."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_recipe(source: str | Path | dict[str, Any]) -> Recipe:
    """Parse and fully validate a recipe file (or an already parsed mapping)."""
    if isinstance(source, dict):
        return validate_recipe(source, "recipe")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=RecipeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    _importable_from(path.parent)
    return validate_recipe(data, str(path), base_dir=path.parent)


def _importable_from(folder: Path) -> None:
    """Let a recipe name 'module:function' paths of files beside it (custom tasks)."""
    import sys

    folder_text = str(folder.resolve())
    if folder_text not in sys.path:
        sys.path.append(folder_text)


def validate_recipe(data: Any, source: str, base_dir: Path | None = None) -> Recipe:
    from slimkit.tasks.base import build_task, parse_task_config

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping with 'task' and 'steps', got {type(data).__name__}")
    unknown = [k for k in data if k not in TOP_LEVEL]
    if unknown:
        raise ConfigError(f"{source}: unknown top-level field {unknown[0]!r}{_suggest(unknown[0], TOP_LEVEL)} "
                          f"(allowed: {', '.join(TOP_LEVEL)})")
    version = data.get("version", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise ConfigError(f"{source}: field 'version' is {version!r}; this slimkit reads version {RECIPE_VERSION}")
    if "task" not in data:
        raise ConfigError(f"{source}: missing field 'task'")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{source}: field 'seed' must be an integer, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{source}: field 'seed' must be from 0 to 2**63-1 (torch seeds are 64-bit), got {seed}")
    task_cfg = parse_task_config(data["task"], f"{source}: task")
    task = build_task(task_cfg)
    baseline = parse_config(BaselineConfig, data.get("baseline"), f"{source}: baseline")
    baseline_train = _baseline_train(task.baseline_train, baseline, source)
    weights = None
    if baseline.weights is not None:
        weights = Path(baseline.weights)
        if not weights.is_absolute() and base_dir is not None and not weights.exists():
            weights = base_dir / weights
        if not weights.is_file():
            raise ConfigError(f"{source}: baseline field 'weights': file not found: {baseline.weights}")
    if weights is not None or task_cfg.name == "custom":
        _check_model(task, weights, source)
    measure = parse_config(MeasureConfig, data.get("measure"), f"{source}: measure")
    steps = _validate_steps(data.get("steps", []), source)
    _check_backends(steps, source)
    return Recipe(task_cfg, seed, baseline_train, weights, measure, steps, source)


def _check_model(task: Any, weights: Path | None, source: str) -> None:
    """Build the task's model (a custom factory that fails, fails now) and check that the
    baseline weights file's names and shapes fit it, reading only the file's header."""
    model = task.build_model()
    if weights is not None:
        problem = weights_mismatch(model, _header_shapes(weights, source))
        if problem:
            raise ConfigError(f"{source}: baseline field 'weights': {weights} does not fit the model: {problem}")


def _header_shapes(path: Path, source: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's header, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise ConfigError(f"{source}: baseline field 'weights': {path} is not a valid safetensors file "
                          f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None


def _check_backends(steps: tuple[RecipeStep, ...], source: str) -> None:
    """The backend a ``deploy`` step names (not 'auto') is available on this machine, else say why not."""
    from slimkit.core.registry import BACKENDS

    for step in steps:
        name = getattr(step.config, "backend", None)
        if step.technique == "deploy" and isinstance(name, str) and name != "auto":
            avail = BACKENDS.get(name).available()
            if not avail:
                raise ConfigError(f"{source}: steps[{step.index - 1}] {step.technique!r}: backend {name!r} "
                                  f"is not available here: {avail.reason}")


def _baseline_train(default: TrainConfig | None, baseline: BaselineConfig, source: str) -> TrainConfig | None:
    if baseline.weights is not None:
        return None  # the given weights are the baseline
    if baseline.train is None:
        return default
    base = default.to_json_dict() if default is not None else {}
    try:
        return TrainConfig.model_validate({**base, **baseline.train}, strict=True)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"{source}: baseline.train")) from None


def _validate_steps(steps: Any, source: str) -> tuple[RecipeStep, ...]:
    if steps is None:
        return ()
    if not isinstance(steps, list):
        raise ConfigError(f"{source}: field 'steps' must be a list of {{step-name: {{params}}}}, got {type(steps).__name__}")
    out: list[RecipeStep] = []
    counts: dict[str, int] = {}
    for i, item in enumerate(steps):
        where = f"{source}: steps[{i}]"
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"{where}: each step is a mapping of one step name to its parameters, got {item!r}")
        (technique, params), = item.items()
        try:
            entry = STEPS.entry(str(technique))
        except UnknownNameError as err:
            raise ConfigError(f"{where}: {err}") from None
        config = parse_config(entry.config, params, f"{where} {technique!r}")
        counts[technique] = counts.get(technique, 0) + 1
        name = technique if counts[technique] == 1 else f"{technique}#{counts[technique]}"
        out.append(RecipeStep(i + 1, name, technique, config))
    return tuple(out)


def _suggest(name: str, options) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def dump_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
