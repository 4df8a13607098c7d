from pathlib import Path

import pytest

from slimkit.core.errors import ConfigError
from slimkit.recipes.schema import load_recipe

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml")) + sorted((ROOT / "src/slimkit/recipes/builtin").glob("*.yaml"))


def _write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_there_are_shipped_recipes():
    assert any(p.name == "demo.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.fingerprint() == load_recipe(recipe.to_dict()).fingerprint()


def test_valid_recipe_resolves_defaults(tmp_path):
    r = load_recipe(_write(tmp_path, "task: digits-mlp\nbaseline: {train: {epochs: 3}}\nsteps:\n  - train: {epochs: 2}\n  - train\n"))
    assert r.baseline_train.epochs == 3 and r.baseline_train.batch_size == 32  # task default kept
    assert [s.name for s in r.steps] == ["train", "train#2"]
    assert r.steps[1].config.epochs == 10
    again = load_recipe(r.to_dict())
    assert again.fingerprint() == r.fingerprint()


@pytest.mark.parametrize("text, message", [
    ("task: digits-cnn\nsteps:\n  - trian: {epochs: 2}\n", r"steps\[0\]: unknown step 'trian'; did you mean 'train'"),
    ("task: digits-cnn\nsteps:\n  - train: {epochs: many}\n", r"steps\[0\] 'train': field 'epochs'.*integer.*'many'"),
    ("task: digits-cnn\nsteps:\n  - train: {epochs: 2, lr: 0.1, warmup: 3}\n", r"steps\[0\] 'train': unknown field 'warmup'"),
    ("task: digits-cn\n", r"unknown task 'digits-cn'; did you mean 'digits-cnn'"),
    ("task: {name: digits-cnn, model: lenet7}\n", r"unknown model 'lenet7'"),
    ("task: digits-cnn\nstep: []\n", r"unknown top-level field 'step'; did you mean 'steps'"),
    ("task: digits-cnn\nseed: abc\n", r"field 'seed' must be an integer"),
    ("task: digits-cnn\nmeasure: {batch_n: 0}\n", r"measure: field 'batch_n'"),
    ("task: digits-cnn\nbaseline: {weights: nowhere.safetensors}\n", r"baseline field 'weights': file not found"),
    ("task: digits-cnn\nbaseline: {train: {epochs: -1}}\n", r"baseline.train: field 'epochs'"),
    ("task: digits-cnn\nsteps: {train: {}}\n", r"'steps' must be a list"),
    ("task: digits-cnn\nsteps:\n  - {train: {}, prune: {}}\n", r"steps\[0\]: each step is a mapping of one step name"),
    ("steps: []\n", r"missing field 'task'"),
    ("version: 2\ntask: digits-cnn\n", r"reads version 1"),
    ("- just a list\n", r"a recipe is a mapping"),
    ("task: [unclosed\n", r"not valid YAML at line"),
    ("task: digits-cnn\nsteps:\n  - train: {epochs: true}\n", r"steps\[0\] 'train': field 'epochs'.*integer.*True"),
    ("task: digits-cnn\nsteps:\n  - train: {epochs: '3'}\n", r"steps\[0\] 'train': field 'epochs'.*integer.*'3'"),
    ("task: digits-cnn\nsteps:\n  - train: {lr: '0.1'}\n", r"steps\[0\] 'train': field 'lr'.*number.*'0.1'"),
    ("task: digits-cnn\nbaseline: {train: {epochs: 2.0}}\n", r"baseline.train: field 'epochs'.*integer"),
    ("task: digits-cnn\nsteps:\n  - train: {epochs: 2,\n      epochs: 3}\n", r"line 4, column 7: duplicate key 'epochs'"),
    ("task: digits-cnn\nseed: 1\nseed: 2\n", r"line 3, column 1: duplicate key 'seed'"),
    ("task: digits-cnn\nseed: 18446744073709551616\n", r"field 'seed' must be from 0 to 2\*\*63-1"),
    ("task: digits-cnn\nseed: -1\n", r"field 'seed' must be from 0 to 2\*\*63-1"),
    ("task: digits-cnn\nbaseline: {weights: w.safetensors, train: {epochs: 2}}\n",
     r"baseline: give 'weights' \(the baseline is loaded\) or 'train' \(it is trained\), not both"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(_write(tmp_path, text))


def test_an_int_is_a_valid_float_and_yaml_merges_still_override(tmp_path):
    r = load_recipe(_write(tmp_path, "task: digits-mlp\nsteps:\n  - train: &ft {epochs: 2, lr: 1}\n"
                                     "  - train: {<<: *ft, epochs: 3}\n"))
    assert r.steps[0].config.lr == 1.0 and isinstance(r.steps[0].config.lr, float)
    assert r.steps[1].config.epochs == 3 and r.steps[1].config.lr == 1.0


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
