"""One-shot supernet: every candidate is an exact slice of the largest network, the sandwich rule
runs in the one training loop with in-place distillation, BatchNorm recalibration, the nas step's
one-shot mode."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.config import parse_config
from slimkit.core.errors import ConfigError
from slimkit.core.registry import STEPS
from slimkit.nas.space import SearchSpace, builtin_space
from slimkit.nas.supernet import (InplaceDistillation, Sandwich, Supernet, evaluate_candidate, recalibrate_batchnorm,
                                  train_supernet)
from slimkit.tasks import build_task
from slimkit.tasks.context import Context
from slimkit.train.config import TrainConfig
from slimkit.train.objectives import Batch, TaskLoss
from slimkit.zoo.arch import build_arch

# expansion 1 (no expansion conv) beside 3 and 6, SE on and off, a head conv: every slicing path
SE_SPACE = {"base": ["ir_r1_k3_s1_e1_c16", "ir_r2_k3_s2_e6_c24_se0.25", "ir_r2_k3_s1_e6_c32"], "stem": 16,
            "head": 64, "stages": [{}, {"depth": [1, 2], "se": [0, 0.25], "kernel": [3, 5], "expand": [1, 3, 6],
                                        "width": [0.5, 1.0]}, {"depth": [1, 2], "kernel": [3, 5, 7]}]}
DIGITS = {"base": ["ir_r1_k3_s1_e1_c8", "ir_r2_k3_s2_e4_c16"], "stem": 8,
          "stages": [{}, {"depth": [1, 2], "kernel": [3, 5], "expand": [2, 4], "width": [0.5, 1.0]}]}


def _shuffle_statistics(net: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so slicing mistakes show."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.mark.parametrize("space", [builtin_space("mobile-32"), SearchSpace(**SE_SPACE)], ids=["mobile-32", "se"])
def test_every_candidate_is_an_exact_slice_of_the_supernet(space):
    torch.manual_seed(0)
    supernet = Supernet(space, num_classes=10)
    _shuffle_statistics(supernet)
    supernet.eval()
    x = torch.randn(3, 3, 32, 32)
    rng = random.Random(0)
    candidates = [supernet.largest, supernet.smallest, *(supernet.sample(rng) for _ in range(6))]
    outputs = []
    for params in candidates:
        sub = supernet.extract(params).eval()
        reference = build_arch(space.spec(params), 10)  # the same architecture built alone: same tensors
        assert {k: v.shape for k, v in sub.state_dict().items()} == \
            {k: v.shape for k, v in reference.state_dict().items()}
        supernet.set_active(params)
        with torch.no_grad():
            out = supernet(x)
            assert torch.equal(out, sub(x))
        outputs.append(out)
    # different candidates compute different functions (the slicing is not a no-op)
    assert not torch.allclose(outputs[0], outputs[1])


def test_slices_take_the_first_channels_and_the_kernel_centre():
    space = SearchSpace(**SE_SPACE)
    supernet = Supernet(space, num_classes=10)
    params = {**supernet.largest, "s1.kernel": 3, "s1.width": 0.5, "s1.expand": 3.0, "s1.depth": 1}
    sub = supernet.extract(params)
    big_dw, small_dw = supernet.net.features[1 + 1].block[1][0].weight, sub.features[2].block[1][0].weight
    # stage 1's first block: input 16, expanded 48 of 96, kernel 3 of 5 (the centre), output 16 of 24
    assert small_dw.shape == (48, 1, 3, 3) and big_dw.shape == (96, 1, 5, 5)
    assert torch.equal(small_dw, big_dw[:48, :, 1:4, 1:4])
    assert torch.equal(sub.features[2].block[-1][0].weight, supernet.net.features[2].block[-1][0].weight[:16, :48])
    # stage 2 runs two blocks at kernel 7 of its own; its first block's input is the narrowed 16 channels
    assert sub.features[3].block[0][0].weight.shape[1] == 16


def test_spaces_that_cannot_share_weights_are_refused():
    with pytest.raises(ConfigError, match="stage 1 chooses its block type"):
        Supernet(SearchSpace(base=["ir_r1_k3_s1_e1_c16", "ir_r1_k3_s2_e6_c24"],
                             stages=[{}, {"block": ["ir", "ds"]}]), 10)
    with pytest.raises(ConfigError, match="stage 0 is a 'conv' stage"):
        Supernet(SearchSpace(base=["conv_r1_k3_s1_c16", "ir_r1_k3_s2_e6_c24"], stages=[{}, {"depth": [1, 2]}]), 10)


def test_recalibration_replaces_the_running_statistics_with_those_of_the_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    _shuffle_statistics(net)
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    x = torch.randn(32, 3, 8, 8) * 3 + 1
    recalibrate_batchnorm(net, [x[:16], x[16:]])
    assert not net.training and net[1].momentum == 0.1  # momentum restored, eval mode
    with torch.no_grad():
        h = net[0](x)
    # the plain average of the two batches' statistics (equal sizes: the mean of the whole)
    torch.testing.assert_close(net[1].running_mean, h.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    halves = [h[:16].var((0, 2, 3), unbiased=True), h[16:].var((0, 2, 3), unbiased=True)]
    torch.testing.assert_close(net[1].running_var, (halves[0] + halves[1]) / 2, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())  # nothing else moved


def test_in_place_distillation_learns_the_labels_first_then_the_largest_predictions():
    term = InplaceDistillation(TaskLoss(F.cross_entropy))
    targets = torch.tensor([0, 1, 2])
    teacher, student = torch.randn(3, 4), torch.randn(3, 4, requires_grad=True)
    model = nn.Identity()
    first = term(Batch(model=model, inputs=(), targets=targets, outputs=teacher, pass_index=0))
    torch.testing.assert_close(first, F.cross_entropy(teacher, targets))
    second = term(Batch(model=model, inputs=(), targets=targets, outputs=student, pass_index=1))
    p = teacher.softmax(-1)
    expected = (p * (p.log() - student.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(second, expected)
    second.backward()
    assert student.grad.abs().sum() > 0
    # matching the teacher costs nothing; distill=False learns the labels in every pass
    assert float(term(Batch(model=model, inputs=(), targets=targets, outputs=teacher.clone(), pass_index=2))) < 1e-6
    plain = InplaceDistillation(TaskLoss(F.cross_entropy), distill=False)
    plain(Batch(model=model, inputs=(), targets=targets, outputs=teacher, pass_index=0))
    torch.testing.assert_close(plain(Batch(model=model, inputs=(), targets=targets, outputs=student, pass_index=1)),
                               F.cross_entropy(student, targets))


def _digits_ctx():
    task = build_task("digits-cnn")
    return task, Context(task=task, seed=0)


def test_sandwich_training_in_the_loop_trains_the_smallest_and_largest_candidates():
    task, ctx = _digits_ctx()
    space = SearchSpace(**DIGITS)
    torch.manual_seed(0)
    supernet = Supernet(space, num_classes=10, in_chans=1)
    before = {name: evaluate_candidate(supernet, p, ctx, 512)[1]
              for name, p in (("largest", supernet.largest), ("smallest", supernet.smallest))}
    passes: list[list[str]] = []

    class Spy(Sandwich):
        def on_step_end(self, state):
            passes.append([",".join(s.strings()) for s in self.passes_run])

    import slimkit.nas.supernet as module

    original = module.Sandwich
    module.Sandwich = Spy
    try:
        result = train_supernet(supernet, ctx, TrainConfig(epochs=6, batch_size=64, lr=1e-2), random_subnets=1)
    finally:
        module.Sandwich = original
    assert len(result.history) == 6
    largest, smallest = (",".join(space.spec(p).strings()) for p in (supernet.largest, supernet.smallest))
    assert passes and all(len(p) == 3 and p[0] == largest and p[1] == smallest for p in passes)
    assert len({p[2] for p in passes}) > 1  # the random candidate changes from batch to batch
    after = {name: evaluate_candidate(supernet, p, ctx, 512)[1]
             for name, p in (("largest", supernet.largest), ("smallest", supernet.smallest))}
    assert before["largest"] < 0.3 and before["smallest"] < 0.3
    assert after["largest"] > 0.9 and after["smallest"] > 0.7, after


def test_the_nas_step_searches_one_shot_without_training_candidates():
    task, _ = _digits_ctx()
    calls = []
    from slimkit.train.loop import fit

    def counting_fit(model, data, cfg, **kwargs):
        calls.append(type(model).__name__)
        return fit(model, data, cfg, **kwargs)

    cfg = parse_config(STEPS.entry("nas").config, {"space": DIGITS, "trials": 8, "strategy": "random",
                                                   "max_macs": 40_000,
                                                   "supernet": {"train": {"epochs": 4, "batch_size": 64, "lr": 1e-2},
                                                                "random_subnets": 1, "calibration_rows": 512}}, "nas")
    result = STEPS.get("nas").fn(task.build_model(), cfg, Context(task=task, train_fn=counting_fit))
    assert calls == ["Supernet"]  # the supernet trained once; no candidate trained
    info = result.info
    assert info["supernet"]["epochs"] == 4 and not info["retrained"]
    feasible = [t for t in info["trials"] if t["feasible"]]
    assert feasible and all(t["macs"] <= 40_000 for t in feasible)
    assert info["chosen"]["validation_quality"] == max(t["quality"] for t in feasible) > 0.5  # init: ~0.1
    # the chosen network is an ordinary ArchNet of the chosen spec, scoring what its trial scored
    assert result.structure.spec.strings() == info["chosen"]["spec"]
    ctx = Context(task=task, seed=0)
    assert ctx.validate(result.model) == info["chosen"]["validation_quality"]


def test_one_shot_with_a_shared_storage_is_refused():
    with pytest.raises(ConfigError, match="one process"):
        parse_config(STEPS.entry("nas").config, {"supernet": {}, "storage": "sqlite:///x.db", "study_name": "s"},
                     "nas")


def test_the_chosen_slice_is_fine_tuned_when_asked():
    task, _ = _digits_ctx()
    from slimkit.train.loop import fit

    calls = []

    def counting_fit(model, data, cfg, **kwargs):
        calls.append((type(model).__name__, cfg.epochs))
        return fit(model, data, cfg, **kwargs)

    options = {"space": DIGITS, "trials": 3, "strategy": "random",
               "supernet": {"train": {"epochs": 1, "batch_size": 64}, "random_subnets": 0, "calibration_rows": 256,
                            "tune": {"epochs": 2, "lr": 1e-3}}}
    cfg = parse_config(STEPS.entry("nas").config, options, "nas")
    result = STEPS.get("nas").fn(task.build_model(), cfg, Context(task=task, train_fn=counting_fit))
    assert calls == [("Supernet", 1), ("ArchNet", 2)] and result.info["tuned_epochs"] == 2
    assert not result.info["retrained"]
