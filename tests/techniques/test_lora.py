"""LoRA: the adapter computes base + (alpha/r) B A x and merges into one Linear computing the
same, gradients reach only the adapters, and the ``lora`` step (a real accuracy gain from an
undertrained baseline, merged or reloaded unmerged, refusals naming the problem)."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.step import restore_step
from slimkit.core.errors import CheckpointError, ConfigError
from slimkit.core.io import load_state_dict
from slimkit.recipes.runner import run_recipe
from slimkit.techniques.lowrank import lora_step
from slimkit.techniques.lowrank.lora import LoRALinear, add_lora_, freeze_except_lora_, merge_lora_

MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}


def _two_linears() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))


def _randomize_b_(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0, 0.5)


def test_a_lora_linear_starts_as_its_base_and_computes_its_merged_weight():
    base = nn.Linear(12, 16)
    lora = LoRALinear(base, rank=4, alpha=8, generator=torch.Generator().manual_seed(3))
    assert (lora.in_features, lora.out_features, lora.rank, lora.scaling) == (12, 16, 4, 2.0)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    # Kaiming-uniform with a=sqrt(5): bound 1/sqrt(fan_in); seeded; B zero
    assert 0 < float(lora.lora_a.detach().abs().max()) <= 1 / math.sqrt(12) and not lora.lora_b.any()
    again = LoRALinear(nn.Linear(12, 16), rank=4, alpha=8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(lora.lora_a, again.lora_a)
    x = torch.randn(7, 12)
    assert torch.equal(lora(x), base(x))
    _randomize_b_(lora)
    assert torch.allclose(lora(x), F.linear(x, lora.merged_weight(), base.bias), atol=1e-5)
    assert (lora(x) - base(x)).abs().max() > 0.1
    with pytest.raises(ValueError, match="rank 12"):
        LoRALinear(base, rank=12, alpha=1)


def test_merging_gives_plain_linears_computing_what_the_adapted_model_does():
    model = _two_linears()
    x = torch.randn(9, 12)
    before = model(x).detach()
    adapters = add_lora_(model, ["0", "2"], rank=3, alpha=6, generator=torch.Generator().manual_seed(0))
    assert list(adapters) == ["0", "2"] and model[0] is adapters["0"]
    _randomize_b_(model)
    adapted = model(x).detach()
    assert merge_lora_(model) == ["0", "2"]
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    merged = model(x).detach()
    assert float((merged - adapted).abs().max()) < 1e-5
    assert float((merged - before).abs().max()) > 0.1  # the merge carried the update
    with pytest.raises(ValueError, match="1 is a ReLU"):
        add_lora_(model, ["1"], rank=1, alpha=1)


@pytest.mark.parametrize("train_bias", [False, True])
def test_gradients_reach_only_the_adapters(train_bias):
    model = _two_linears()
    add_lora_(model, ["0"], rank=2, alpha=2)
    trainable, total = freeze_except_lora_(model, train_bias)
    assert trainable == 2 * (12 + 16) + (16 if train_bias else 0)
    assert total == sum(p.numel() for p in model.parameters())
    model(torch.randn(4, 12)).square().sum().backward()
    lora = model[0]
    assert lora.lora_a.grad is not None and lora.lora_b.grad is not None
    assert lora.base.weight.grad is None and model[2].weight.grad is None and model[2].bias.grad is None
    assert (lora.base.bias.grad is not None) == train_bias


def test_the_step_trains_only_the_adapters_and_thaws_the_rest_after():
    from slimkit.tasks.context import Context
    from slimkit.core.registry import STEPS
    from slimkit.tasks import build_task
    from slimkit.train.config import TrainConfig

    task = build_task("digits-mlp")
    ctx = Context(task=task)
    model = task.build_model()
    ctx.train(model, TrainConfig(epochs=1, batch_size=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = lora_step.LoraConfig(finetune={"epochs": 1, "lr": 1e-2}, skip=["7"], merge=False)
    result = STEPS.get("lora").fn(model, cfg, ctx)
    assert result.info["layers"] == ["1", "4"]
    state = model.state_dict()
    for name in ("1", "4"):
        for p in ("weight", "bias"):
            assert torch.equal(state[f"{name}.base.{p}"], before[f"{name}.{p}"])
        assert state[f"{name}.lora_b"].abs().max() > 0
    assert torch.equal(state["7.weight"], before["7.weight"])
    # the frozen layer trains again in later steps; the adapters' bases stay frozen
    assert model[7].weight.requires_grad and model[1].lora_a.requires_grad and not model[1].base.weight.requires_grad


def test_lora_fine_tunes_an_undertrained_baseline_and_merges_into_plain_linears(tmp_path):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 1}}, "measure": MEASURE,
              "steps": [{"lora": {"finetune": {"epochs": 5, "lr": 1e-2}}}]}
    base, step = run_recipe(recipe, tmp_path / "run").results["steps"]
    info = step["info"]
    assert info["merged"] and info["layers"] == ["1", "4", "7"]
    assert info["trainable_params"] == 8 * (64 + 256) + 8 * (256 + 128) + 8 * (128 + 10)
    assert info["trainable_fraction"] < 0.3 and info["merge_max_abs_diff"] < 1e-4
    # measured: test accuracy 0.825 -> 0.936 (seed 0)
    assert step["metrics"]["quality"] >= base["metrics"]["quality"] + 0.05
    assert step["metrics"]["params"] == base["metrics"]["params"]
    assert load_state_dict(tmp_path / "run" / step["artifact"]).keys() == \
        load_state_dict(tmp_path / "run" / base["artifact"]).keys()


def test_unmerged_adapters_keep_the_baseline_weights_and_reload(tmp_path, rebuild_run_step):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 1}}, "measure": MEASURE,
              "steps": [{"lora": {"rank": 4, "alpha": 4, "finetune": {"epochs": 2, "lr": 1e-2}, "merge": False}}]}
    base, step = run_recipe(recipe, tmp_path / "run").results["steps"]
    assert not step["info"]["merged"] and "merge_max_abs_diff" not in step["info"]
    baseline = load_state_dict(tmp_path / "run" / base["artifact"])
    saved = load_state_dict(tmp_path / "run" / step["artifact"])
    for name in ("1", "4", "7"):
        assert torch.equal(saved[f"{name}.base.weight"], baseline[f"{name}.weight"])
        assert saved[f"{name}.lora_a"].shape[0] == 4 and saved[f"{name}.lora_b"].abs().max() > 0
    rebuilt, quality = rebuild_run_step(tmp_path / "run", "digits-mlp", 1, step)
    assert quality == pytest.approx(step["metrics"]["quality"], abs=1e-9)
    assert all(isinstance(rebuilt[i], LoRALinear) for i in (1, 4, 7))
    # the reloaded model computes W + (alpha/r) B A from the saved tensors
    from slimkit.tasks import build_task

    plain = build_task("digits-mlp").build_model().eval()
    with torch.no_grad():
        for i in (1, 4, 7):
            plain[i].weight.copy_(saved[f"{i}.base.weight"] + saved[f"{i}.lora_b"] @ saved[f"{i}.lora_a"])
            plain[i].bias.copy_(saved[f"{i}.base.bias"])
        x = torch.randn(16, 64)
        assert torch.allclose(rebuilt(x), plain(x), atol=1e-5)


def test_lora_misconfigurations_name_the_problem(tmp_path):
    def run(steps):
        recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 1}}, "measure": MEASURE,
                  "steps": steps}
        run_recipe(recipe, tmp_path / f"run{len(list(tmp_path.iterdir()))}")

    with pytest.raises(ConfigError, match=r"targets pattern\(s\) match no nn.Linear: \['head\*'\]"):
        run([{"lora": {"targets": ["1", "head*"]}}])
    with pytest.raises(ConfigError, match=r"skip names no nn.Linear: \['2'\]"):
        run([{"lora": {"skip": ["2"]}}])
    with pytest.raises(ConfigError, match=r"rank 10 is not below min\(in, out\) of any chosen Linear "
                                          r"\(7: rank 10 is not below min\(in, out\) of 128 -> 10\); lower the rank"):
        run([{"lora": {"rank": 10, "targets": ["7"]}}])
    with pytest.raises(ConfigError, match="no nn.Linear chosen"):
        run([{"lora": {"targets": ["7"], "min_weights": 2000}}])
    with pytest.raises(ConfigError, match="quantized"):
        run([{"quantize": {}}, {"lora": {}}])
    with pytest.raises(ConfigError, match="unmerged LoRA adapters"):
        run([{"lora": {"finetune": {"epochs": 1}, "merge": False}}, {"lora": {}}])
    with pytest.raises(CheckpointError, match="lora step's recorded structure does not fit this model: LoRA: 1 is a"):
        restore_step("lora", _two_linears(), {"lora": {"1": {"rank": 1, "alpha": 1}}})
    with pytest.raises(CheckpointError, match="lora step's recorded structure: field 'lora.0.rank'"):
        restore_step("lora", _two_linears(), {"lora": {"0": {"rank": 0, "alpha": 1}}})


def test_lora_leaves_out_and_names_linears_too_narrow_for_the_rank(tmp_path):
    """As PEFT's default targets: a 10-class head cannot take rank 10; it stays unadapted, named."""
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 1}}, "measure": MEASURE,
              "steps": [{"lora": {"rank": 10, "finetune": {"epochs": 1}}}]}
    info = run_recipe(recipe, tmp_path / "run").results["steps"][1]["info"]
    assert "7" not in info["layers"] and info["layers"]
    assert info["left_out"] == {"7": "rank 10 is not below min(in, out) of 128 -> 10"}
