"""Every step that trains holds one nested ``finetune`` TrainConfig and hands all of it to the loop."""

import pytest

from slimkit.core.config import parse_config
from slimkit.tasks.context import Context
from slimkit.core.errors import ConfigError
from slimkit.core.registry import STEPS, load_builtins
from slimkit.recipes.schema import load_recipe
from slimkit.tasks import build_task
from slimkit.train.config import TrainConfig
from slimkit.train.loop import fit

# the smallest config of each training step that trains on digits-mlp
TRAINING_STEPS = {
    "prune": {"sparsity": 0.5},
    "prune_structured": {"ratio": 0.3},
    "distill": {"teacher": "input", "student": {"model": "mlp_digits", "model_args": {"hidden": [16]}}},
    "factorize": {"min_weights": 256},
    "lora": {"rank": 4},
    "qat": {"calibration_samples": 64},
    "cluster": {"clusters": 4},
    "hash": {},
    "sparse_train": {"method": "static", "sparsity": 0.5},
    "lottery": {"sparsity": 0.5, "rounds": 1},
    "l0": {},
    "variational_dropout": {},
    "bayesian_compression": {"entropy_code": False},
    "early_exit": {},
    "layer_skip": {"blocks": ["2", "5"]},  # digits-mlp has no residual blocks: its ReLUs, named
    "nas": {"trials": 1, "space": {"base": ["conv_r1_k3_s1_c8"], "stem": 8}},
    "on_device_train": {"mode": "bias+last"},
}


def _int8(model, task):
    from slimkit.techniques.quantization.ptq import quantize_static

    return quantize_static(model.eval(), [(task.data.train.inputs[0][:64],)], weight_max=127)[0]


# steps that train what an earlier step made (on_device_train: an int8 model)
PREPARE = {"on_device_train": _int8}
# steps that need images: they train on digits-cnn's 8x8 rows instead of digits-mlp's vectors
TASKS = {"nas": "digits-cnn"}
# every field set away from its default, so a step that rebuilt a TrainConfig from a few of them fails
FINETUNE = {"epochs": 1, "batch_size": 32, "lr": 3e-4, "optimizer": "sgd", "momentum": 0.8, "weight_decay": 1e-3,
            "schedule": "constant", "grad_clip": 2.0, "keep_best": False,
            "checkpointing": {"strategy": "all"}}  # precision stays fp32: bf16 needs a CPU that has it


def _steps_with_finetune() -> set[str]:
    load_builtins()
    return {name for name in STEPS.names() if "finetune" in (STEPS.entry(name).config.model_fields or {})}


def test_the_table_covers_every_step_with_a_finetune_field():
    assert _steps_with_finetune() == set(TRAINING_STEPS)


@pytest.mark.parametrize("name", sorted(TRAINING_STEPS))
def test_a_training_step_hands_its_whole_finetune_config_to_the_loop(name, tmp_path):
    from slimkit.core.io import save_state_dict

    task = build_task(TASKS.get(name, "digits-mlp"))
    model = task.build_model()
    if name in PREPARE:
        model = PREPARE[name](model, task)
    initial = str(save_state_dict(tmp_path / "initial.safetensors", model.state_dict()))  # lottery rewinds
    calls = []

    def recording_fit(model, data, cfg, **kwargs):
        calls.append(cfg)
        return fit(model, data, cfg, **kwargs)

    cfg = parse_config(STEPS.entry(name).config, {**TRAINING_STEPS[name], "finetune": FINETUNE}, name)
    STEPS.get(name).fn(model, cfg, Context(task=task, train_fn=recording_fit, task_config={"name": task.name},
                                           initial_weights=initial))
    assert calls, f"{name} did not train"
    assert all(c.model_dump() == TrainConfig(**FINETUNE).model_dump() for c in calls)


@pytest.mark.parametrize("field", ["epochs", "lr", "batch_size", "optimizer", "keep_best"])
def test_a_flat_training_field_is_pointed_at_finetune(field):
    value = {"epochs": 3, "lr": 0.01, "batch_size": 8, "optimizer": "sgd", "keep_best": False}[field]
    with pytest.raises(ConfigError, match=rf"steps\[0\] 'cluster': {field}: training settings live under finetune "
                                          rf"\(write finetune: {{{field}: {value!r}}}\)"):
        load_recipe({"task": "digits-mlp", "steps": [{"cluster": {field: value}}]})


def test_step_defaults_survive_a_partial_finetune():
    """``finetune: {epochs: 3}`` keeps the step's own default lr, not TrainConfig's."""
    prune = parse_config(STEPS.entry("prune").config, {"sparsity": 0.5, "finetune": {"epochs": 3}}, "prune")
    assert prune.finetune.lr == 5e-4 and TrainConfig().lr == 1e-3
    cubic = parse_config(STEPS.entry("prune").config,
                         {"sparsity": 0.5, "schedule": "cubic", "finetune": {"epochs": 3}}, "prune")
    assert cubic.finetune.keep_best is False  # an earlier, less sparse epoch must not come back
    with pytest.raises(ConfigError, match="keep_best with schedule cubic"):
        parse_config(STEPS.entry("prune").config,
                     {"sparsity": 0.5, "schedule": "cubic", "finetune": {"epochs": 3, "keep_best": True}}, "prune")
    with pytest.raises(ConfigError, match=r"field 'finetune.epochs'.*greater than or equal to 1"):
        parse_config(STEPS.entry("qat").config, {"finetune": {"epochs": 0}}, "qat")
