import pytest

from slimkit.core.config import parameter_table, parse_config
from slimkit.core.errors import ConfigError
from slimkit.train.config import TrainConfig


def test_roundtrip_through_json():
    cfg = TrainConfig(epochs=3, lr=0.01, optimizer="sgd")
    assert TrainConfig.from_json_dict(cfg.to_json_dict()) == cfg


@pytest.mark.parametrize("data, message", [
    ({"epoch": 3}, "unknown field 'epoch'"),
    ({"epochs": "ten"}, "field 'epochs'.*integer.*'ten'"),
    ({"optimizer": "adagrad"}, "field 'optimizer'.*'adam', 'adamw' or 'sgd'"),
    ({"lr": -1}, "field 'lr'.*greater than 0"),
    ([1, 2], "expected a mapping"),
])
def test_bad_fields_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(TrainConfig, data, "steps[0] 'train'")


def test_configs_are_frozen():
    with pytest.raises(Exception):
        TrainConfig().epochs = 3  # type: ignore[misc]


def test_parameter_table_lists_types_and_defaults():
    rows = {r["name"]: r for r in parameter_table(TrainConfig)}
    assert rows["epochs"]["type"] == "integer" and rows["epochs"]["default"] == 10
    assert "'sgd'" in rows["optimizer"]["type"]


def test_a_nested_specialised_default_shows_only_what_it_changes():
    from slimkit.core.config import brief_default
    from slimkit.core.registry import STEPS, load_builtins

    load_builtins()
    assert brief_default(STEPS.entry("prune").config, "finetune") == "TrainConfig(epochs=0, lr=0.0005)"
    assert brief_default(STEPS.entry("factorize").config, "finetune") == \
        "TrainConfig(epochs=0, lr=0.0001, optimizer='adamw')"
    assert brief_default(STEPS.entry("prune").config, "sparsity") == "None"


def test_parameter_table_never_shows_an_undefined_default():
    from pydantic import Field

    from slimkit.core.config import Config

    class Aliased(Config):
        size: int = Field(alias="n")
        depth: int = 2

    rows = {r["name"]: r for r in parameter_table(Aliased)}
    assert rows["size"]["required"] and rows["size"]["default"] is None
    assert rows["depth"] == {**rows["depth"], "required": False, "default": 2}
