"""Typed, versioned configs that validate themselves and round-trip through JSON."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from slimkit.core.errors import ConfigError


class Config(BaseModel):
    """Base of every step, task and measurement config: unknown fields are errors, values frozen.
    What a user writes is parsed strictly (``parse_config``); configs built in code are not."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    version: ClassVar[int] = 1

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> "Config":
        return cls.model_validate(data)


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line naming each bad field, what was given and what was expected."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not loc and e["type"] == "value_error":  # a check across fields: its message says it all
            parts.append(msg)
        elif e["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        elif e["type"] == "missing":
            parts.append(f"missing field {loc!r}")
        else:
            given = e.get("input")
            given_txt = f" (got {given!r})" if not isinstance(given, dict) else ""
            parts.append(f"field {loc or '(value)'!r}: {msg}{given_txt}")
    return f"{where}: " + "; ".join(parts)


def parse_config(cls: type[Config], data: Any, where: str) -> Config:
    """Validate ``data`` into ``cls`` or raise a ConfigError that names ``where`` and the field.

    Strict, since ``data`` is what a user wrote: a bool, string or float is never coerced into an
    int field (``epochs: true``, ``epochs: "3"`` are errors), though an int is a valid float (``lr: 1``).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of parameters, got {type(data).__name__} {data!r}")
    try:
        return cls.model_validate(data, strict=True)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def parameter_table(cls: type[Config] | None) -> list[dict[str, Any]]:
    """Name, type, default and description of each field, for ``slimkit ls`` and editors."""
    if cls is None:
        return []
    schema = cls.model_json_schema()
    props = schema.get("properties", {})
    rows = []
    for name, field in cls.model_fields.items():
        prop = props.get(name, {})
        required = field.is_required()  # the schema's 'required' list can miss a field (aliases)
        rows.append(
            {
                "name": name,
                "type": _type_name(prop, schema),
                "required": required,
                "default": None if required else _jsonable(field.get_default(call_default_factory=True)),
                "description": field.description or "",
            }
        )
    return rows


def brief_default(cls: type[Config], name: str) -> str:
    """A field's default in a line: a nested config that specialises another (a step's
    ``finetune``, a ``TrainConfig`` with the step's own defaults) shows only what it changes."""
    field = cls.model_fields[name]
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if not isinstance(value, BaseModel):
        return repr(_jsonable(value))
    base = type(value).__mro__[1]
    if issubclass(base, BaseModel) and base.model_fields:
        changed = {k: v for k, v in value.model_dump(mode="json").items()
                   if v != base.model_fields[k].get_default(call_default_factory=True)}
        return f"{base.__name__}(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"
    return repr(value.model_dump(mode="json"))


def _type_name(prop: dict[str, Any], schema: dict[str, Any]) -> str:
    if "enum" in prop:
        return " | ".join(repr(v) for v in prop["enum"])
    if "const" in prop:
        return repr(prop["const"])
    if "$ref" in prop:
        ref = prop["$ref"].split("/")[-1]
        target = schema.get("$defs", {}).get(ref, {})
        return _type_name(target, schema) if ("enum" in target or "type" in target) else ref
    if "anyOf" in prop:
        return " | ".join(_type_name(p, schema) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list[{_type_name(prop.get('items', {}), schema)}]"
    return str(prop.get("type", "any"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return str(value)
