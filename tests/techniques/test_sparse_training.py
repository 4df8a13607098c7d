"""Sparse training from the start: held masks, ERK densities, SNIP, RigL's drop-and-grow, and the
``sparse_train`` / ``lottery`` steps with their controls."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.recipes.runner import run_recipe
from slimkit.techniques.pruning.sparse import SparseLinear
from slimkit.techniques.sparse_training.masks import MaskedTraining, RigL, layer_densities, random_masks, snip_masks
from slimkit.train.callbacks import FitState

MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}


def _steps(model, callback, steps: int, total: int = 100):
    state = FitState(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), total_steps=total)
    callback.on_fit_start(state)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        state.optimizer.zero_grad()
        x = torch.randn(16, model[0].in_features, generator=g)
        model(x).pow(2).mean().backward()
        callback.after_backward(state)
        state.optimizer.step()
        callback.on_step_end(state)
        state.step += 1
    return state


def test_erk_keeps_the_overall_density_and_gives_small_layers_more():
    shapes = {"big": torch.Size([300, 784]), "mid": torch.Size([100, 300]), "small": torch.Size([10, 100])}
    d = layer_densities(shapes, 0.1, "erk")
    kept = sum(d[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(0.1 * sum(math.prod(s) for s in shapes.values()), rel=1e-6)
    assert d["small"] > d["mid"] > d["big"] and max(d.values()) <= 1.0
    assert layer_densities(shapes, 0.1, "uniform") == {n: 0.1 for n in shapes}
    capped = layer_densities({"a": torch.Size([1000, 1000]), "b": torch.Size([2, 2])}, 0.5, "erk")
    assert capped["b"] == 1.0  # ERK would give the tiny layer a density above 1: capped, the rest shared


def test_held_masks_keep_zeros_through_adam_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    weights = {"0": model[0].weight, "2": model[2].weight}
    masks = random_masks(weights, 0.2, seed=1)
    cb = MaskedTraining(weights, masks)
    _steps(model, cb, 10)
    for n, w in weights.items():
        assert (w[~masks[n]] == 0).all() and (w[masks[n]] != 0).all()
    assert cb.density() == pytest.approx(0.2, abs=0.01)


def test_rigl_moves_weights_at_constant_count_growing_where_gradients_are_largest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    weights = {"0": model[0].weight, "2": model[2].weight}
    start = random_masks(weights, 0.1, distribution="erk", seed=2)
    cb = RigL(weights, {n: m.clone() for n, m in start.items()}, interval=5, drop_fraction=0.3, end=0.75)
    _steps(model, cb, 40, total=40)
    assert cb.updates == 5 and cb.changed > 0  # steps 5, 10, ..., 25 (before 0.75 * 40 = 30)
    for n in weights:
        assert int(cb.masks[n].sum()) == int(start[n].sum())  # per-layer counts never change
        assert (weights[n][~cb.masks[n]] == 0).all()
    moved = sum(int((cb.masks[n] & ~start[n]).sum()) for n in weights)
    assert moved > 0
    # one update in isolation: the grown weights are the inactive ones with the largest gradient
    w = nn.Parameter(torch.tensor([[3.0, 0.0, 0.1, 0.0, 2.0, 0.0]]))
    mask = w.detach() != 0
    w.grad = torch.tensor([[0.0, 5.0, 0.0, 0.1, 0.0, 4.0]])
    one = RigL({"w": w}, {"w": mask}, interval=1, drop_fraction=0.5)
    one._update(0.67)  # k = int(0.67 * 3) = 2: drop 0.1 and 2.0, grow positions 1 and 5
    assert one.masks["w"].tolist() == [[True, True, False, False, False, True]]
    assert w.tolist() == [[3.0, 0.0, 0.0, 0.0, 0.0, 0.0]]  # grown weights start at zero


def test_snip_keeps_the_largest_connection_sensitivities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    weights = {"0": model[0].weight, "2": model[2].weight}
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    masks = snip_masks(model, weights, [((x,), y)], F.cross_entropy, 0.25)
    F.cross_entropy(model(x), y).backward()
    scores = torch.cat([(w.grad * w).abs().flatten() for w in weights.values()])
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[scores.topk(int(0.25 * scores.numel())).indices] = True
    assert torch.equal(torch.cat([m.flatten() for m in masks.values()]), keep)


@pytest.fixture(scope="module")
def lottery_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lottery")
    runs = {}
    for control in ("none", "reinit", "random_mask"):
        recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 10}}, "measure": MEASURE,
                  "steps": [{"lottery": {"sparsity": 0.8, "rounds": 2, "control": control,
                                         "finetune": {"epochs": 10}}}]}
        runs[control] = (folder / control, run_recipe(recipe, folder / control).results)
    return runs


def test_lottery_ticket_reaches_its_sparsity_keeps_accuracy_and_rebuilds(lottery_runs, rebuild_run_step):
    folder, results = lottery_runs["none"]
    base, ticket = results["steps"]
    assert ticket["info"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert [r["density"] for r in ticket["info"]["rounds"]] == pytest.approx([math.sqrt(0.2), 0.2], abs=1e-3)
    assert ticket["metrics"]["quality"] >= base["metrics"]["quality"] - 0.03
    assert ticket["info"]["encoded_ratio"] < 0.3
    model, quality = rebuild_run_step(folder, "digits-mlp", 1, ticket)
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == 3
    assert quality == pytest.approx(ticket["metrics"]["quality"], abs=1e-9)


def test_lottery_controls_train_other_weights_at_the_same_sparsity(lottery_runs, rebuild_run_step):
    models = {c: rebuild_run_step(folder, "digits-mlp", 1, res["steps"][1])[0]
              for c, (folder, res) in lottery_runs.items()}
    masks = {c: [m.dense_weight() != 0 for m in model.modules() if isinstance(m, SparseLinear)]
             for c, model in models.items()}
    densities = {c: [float(m.float().mean()) for m in ms] for c, ms in masks.items()}
    # reinit: the ticket's mask exactly, other values; random mask: per-layer densities kept, another mask
    assert all(torch.equal(a, b) for a, b in zip(masks["none"], masks["reinit"]))
    ticket_w = [m.dense_weight() for m in models["none"].modules() if isinstance(m, SparseLinear)]
    reinit_w = [m.dense_weight() for m in models["reinit"].modules() if isinstance(m, SparseLinear)]
    assert not torch.allclose(ticket_w[0], reinit_w[0])
    assert densities["random_mask"] == pytest.approx(densities["none"], abs=2e-3)
    assert not torch.equal(masks["random_mask"][0], masks["none"][0])


@pytest.mark.parametrize("method", ["rigl", "static", "snip"])
def test_sparse_train_from_scratch_reaches_sparsity_and_learns(tmp_path, method):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 5}}, "measure": MEASURE,
              "steps": [{"sparse_train": {"method": method, "sparsity": 0.8, "interval": 10,
                                          "finetune": {"epochs": 10}}}]}
    base, sparse = run_recipe(recipe, tmp_path / "run").results["steps"]
    assert sparse["info"]["sparsity"] == pytest.approx(0.8, abs=2e-3)
    assert sparse["metrics"]["quality"] >= 0.75  # 10 classes, trained from the initial weights (chance: 0.1)
    if method == "rigl":
        assert sparse["info"]["mask_updates"] > 0 and sparse["info"]["weights_regrown"] > 0


def test_bad_sparse_configs_and_structure_changes_are_named(tmp_path):
    with pytest.raises(ConfigError, match="method"):
        run_recipe({"task": "digits-mlp", "steps": [{"sparse_train": {"sparsity": 0.5, "method": "magic"}}]},
                   tmp_path / "a")
    with pytest.raises(ConfigError, match="sparsity"):
        run_recipe({"task": "digits-mlp", "steps": [{"lottery": {"sparsity": 1.0}}]}, tmp_path / "b")
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 1}}, "measure": MEASURE,
              "steps": [{"prune_structured": {"ratio": 0.5}}, {"lottery": {"sparsity": 0.5, "rounds": 1,
                                                                          "finetune": {"epochs": 1}}}]}
    with pytest.raises(ConfigError, match="before steps that change the model's structure"):
        run_recipe(recipe, tmp_path / "c")


def test_rigl_keeps_the_last_epoch_whose_weights_fit_its_final_mask():
    from slimkit.techniques.sparse_training.step import SparseTrainConfig

    assert SparseTrainConfig(method="rigl", sparsity=0.9).finetune.keep_best is False
    assert SparseTrainConfig(method="static", sparsity=0.9).finetune.keep_best is True
    with pytest.raises(ValueError, match="keep_best"):
        SparseTrainConfig(method="rigl", sparsity=0.9, finetune={"keep_best": True})


def test_every_lottery_round_restarts_from_the_initial_weights_under_its_mask(tmp_path):
    """The control for rewinding: each round's training starts from the initial weights, with the
    round's mask held (a lottery step that only pruned and fine-tuned would start from trained ones)."""
    from slimkit.core.config import parse_config
    from slimkit.core.io import save_state_dict
    from slimkit.tasks import build_task
    from slimkit.tasks.context import Context
    from slimkit.techniques.sparse_training.step import LotteryConfig, lottery
    from slimkit.train.config import TrainConfig
    from slimkit.train.loop import fit
    from slimkit.train.objectives import TaskLoss

    task = build_task("digits-mlp")
    torch.manual_seed(0)
    model = task.build_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_state_dict(tmp_path / "initial.safetensors", initial)
    fit(model, task.data, TrainConfig(epochs=3), loss_terms=[TaskLoss(task.loss)])
    rounds = []

    def recording_fit(m, data, cfg, **kwargs):
        (masks,) = kwargs["callbacks"]
        rounds.append(({k: v.clone() for k, v in m.state_dict().items()}, masks.density()))
        return fit(m, data, cfg, **kwargs)

    cfg = parse_config(LotteryConfig, {"sparsity": 0.75, "rounds": 2, "finetune": {"epochs": 2}}, "t")
    lottery(model, cfg, Context(task=task, train_fn=recording_fit, initial_weights=str(path)))
    assert [round(d, 3) for _, d in rounds] == [0.5, 0.25]
    for start, _ in rounds:
        assert all(torch.equal(start[k], initial[k]) for k in initial)
