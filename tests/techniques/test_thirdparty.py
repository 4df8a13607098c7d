"""Third-party models through every step and runtime (``slimkit.recipes.compat``).

By default: the five architectures of the issue that started this (ConvNeXt, DistilBERT, RegNet,
DeiT, Swin) end to end through ``prune_structured -> quantize -> deploy``, and a slice of the
conformance matrix that covers each defect found in it (a forward reading ``layer.weight``, an
exporter that cannot decompose or writes a graph that does not load, integer rounding judged as
such, a head too narrow for LoRA, MACs of a model whose forward views a parameter, outputs that
are dicts or ``ModelOutput``). ``pytest -m thirdparty`` runs the whole matrix: every family x
every step x ONNX Runtime and OpenVINO, no defect allowed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from slimkit.recipes.compat import RUNTIMES, STEPS, check_model, family_task
from slimkit.tasks.context import Context
from slimkit.train.config import TrainConfig
from slimkit.zoo.thirdparty import FAMILIES

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "thirdparty"
TRAIN = TrainConfig(epochs=2, lr=3e-3)

# (family, step, runtimes): the slice run by default. Where the defect a cell guards against was in
# the model's eager path or in the exporter (which every runtime's file goes through) one runtime
# checks it; where it was one runtime's, that runtime; the whole matrix runs both everywhere.
ORT, OV = ("onnxruntime",), ("openvino",)
SLICE = [("deit", "quantize", ORT), ("deit", "prune", ORT), ("deit", "qat", ORT), ("deit", "cluster", ORT),
         ("swin", "fuse", ORT),  # the exporter's own decomposition fails: the core-ATen route
         ("swin", "quantize", OV),  # OpenVINO's int8 reshape -> MatMul -> reshape was 0.73 off
         ("beit", "fuse", ORT),  # the dynamo graph did not load: the TorchScript route
         ("regnet", "qat", ORT),  # ONNX Runtime's QLinearConv rounding: judged by the graph
         ("distilbert", "lora", ORT), ("deberta_v2", "factorize", ORT), ("dict_output", "quantize", RUNTIMES),
         ("vit_unwrapped", "distill", RUNTIMES), ("shared_twice", "quantize", RUNTIMES),
         ("functional_conv", "prune_structured", RUNTIMES), ("distilbert", "l0", ORT),
         ("distilbert", "bayesian_compression", ORT)]


def _cells(name: str, steps: list[str], tmp_path, runtimes: tuple[str, ...] = RUNTIMES) -> list:
    task = family_task(name)
    return check_model(name, task.build_model, Context(task=task), steps=steps, runtimes=runtimes,
                       workdir=tmp_path, train=TRAIN)


def _defects(cells) -> list[str]:
    return [f"{c.model}/{c.step}/{c.runtime}: {c.reason}" for c in cells if c.status == "error"]


@pytest.mark.parametrize("name,step,runtimes", SLICE, ids=[f"{n}-{s}" for n, s, _ in SLICE])
def test_the_step_works_on_the_family_on_its_runtimes(name, step, runtimes, tmp_path):
    cells = _cells(name, [step], tmp_path, runtimes)
    assert not _defects(cells), _defects(cells)
    assert [c.runtime for c in cells] == ["eager", *runtimes], [c.to_dict() for c in cells]
    assert all(c.status == "ok" for c in cells), [(c.runtime, c.status, c.reason) for c in cells]


def test_an_unsupported_step_names_its_reason_in_one_line(tmp_path):
    (cell,) = _cells("regnet", ["factorize"], tmp_path)
    assert cell.status == "unsupported"
    assert cell.reason == "ConfigError: factorize: no linear layer with >= 1024 weights to factorize"


def test_beit_int8_exports_through_the_contiguous_dynamo_route(tmp_path):
    """BEiT's attention reshapes a transposed tensor; with a symbolic batch the exporter's own
    decomposition makes that a view it then rejects. A contiguous clone before such views lets
    the first dynamo route through, int8 layers included (no TorchScript route for those)."""
    cells = _cells("beit", ["quantize_dynamic"], tmp_path)
    assert [(c.runtime, c.status) for c in cells] == [("eager", "ok"), *((r, "ok") for r in RUNTIMES)], \
        [c.to_dict() for c in cells]
    assert cells[1].figures["export"] == "dynamo+contiguous"


class _Branchy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 64)

    def forward(self, x):
        y = self.fc(x)
        return -y if y.mean() > 0 else y  # data-dependent: torch.export refuses it


def test_an_export_that_fails_on_every_route_names_each_route(tmp_path):
    """torch.export refuses data-dependent control flow and int8 layers cannot take the
    TorchScript route: the error says so for each route in one line, no traceback."""
    from slimkit.backends.onnxruntime import export_onnx
    from slimkit.core.errors import UnsupportedModelError
    from slimkit.techniques.quantization.dynamic import quantize_dynamic

    model = quantize_dynamic(_Branchy().eval(), granularity="tensor", weight_max=127, skip=[])[0]
    with pytest.raises(UnsupportedModelError) as caught:
        export_onnx(model, (torch.randn(2, 64),), tmp_path / "m.onnx")
    reason = str(caught.value)
    assert reason.startswith("ONNX export failed on every route (dynamo: ")
    assert "dynamo+contiguous: skipped (torch.export failed)" in reason
    assert "dynamo+core-aten: skipped (torch.export failed)" in reason
    assert "torchscript: skipped (integer layers" in reason
    assert "\x1b" not in reason and "\n" not in reason
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnext", "distilbert", "regnet", "deit", "swin"])
def test_the_issue_five_rows_run_end_to_end(name, tmp_path):
    """prune_structured (70% of the MACs) -> static int8 -> ONNX Runtime, each figure moving the
    way the step promises, with the shipped example recipe (shortened training)."""
    from slimkit.recipes.runner import run_recipe

    recipe = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    recipe["task"]["train"] = {"epochs": 3, "lr": 0.003}
    recipe["steps"][0]["prune_structured"]["finetune"] = {"epochs": 1}
    recipe["measure"] = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}
    steps = run_recipe(recipe, tmp_path / "run").results["steps"]
    base, pruned, quantized, deployed = (s["metrics"] for s in steps)
    assert pruned["macs"] <= 0.72 * base["macs"]
    assert quantized["size_bytes"] < 0.8 * pruned["size_bytes"]  # int8 weights; biases, norms and headers stay
    assert deployed["backend"] == "onnxruntime"
    assert abs(deployed["quality"] - quantized["quality"]) <= 0.02
    info = steps[3]["info"]
    assert info["judged_by"].startswith("quality")
    assert info["candidates"][0]["info"]["graph_rel_diff"] <= 0.01


def test_every_family_builds_and_returns_logits():
    for name, fam in FAMILIES.items():
        model = fam.build(num_classes=3)
        from slimkit.core.outputs import primary_output

        with torch.no_grad():
            out = primary_output(model(fam.example(2)))
        assert out.shape == (2, 3), name


@pytest.mark.thirdparty
@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_whole_matrix_has_no_defect(name, tmp_path):
    cells = _cells(name, list(STEPS), tmp_path)
    assert not _defects(cells), _defects(cells)
    assert all(c.reason for c in cells if c.status == "unsupported")


def test_an_average_pool_wider_than_its_input_exports_as_the_mean(tmp_path):
    """transformers' EfficientNet pools a 1x1 map with a 320-wide kernel and ceil_mode (PyTorch
    allows it). Exported as is, OpenVINO refused it (and its torch.export frontend returned an
    empty tensor) and ONNX Runtime's int8 kernels were 0.53 away from eager; exported as the mean
    it is, every cell works."""
    cells = _cells("efficientnet", ["quantize"], tmp_path)
    assert [(c.runtime, c.status) for c in cells] == [("eager", "ok"), *((r, "ok") for r in RUNTIMES)], \
        [c.to_dict() for c in cells]


def test_pools_wider_than_their_input_become_exact_means():
    from slimkit.backends.base import global_pools_made_explicit

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AvgPool2d(320, ceil_mode=True),
                                torch.nn.AvgPool2d(1), torch.nn.Flatten())
    for size in ((3, 3), (5, 7), (9, 9)):
        x = torch.randn(2, 3, *size)
        explicit = global_pools_made_explicit(model, (x,))
        assert type(explicit[1]).__name__ == "_GlobalMean" and type(explicit[2]) is torch.nn.AvgPool2d
        assert type(model[1]) is torch.nn.AvgPool2d  # the user's model is left as it was
        with torch.no_grad():
            assert torch.allclose(explicit(x), model(x), atol=1e-6)
    narrow = torch.nn.Sequential(torch.nn.AvgPool2d(2))
    assert global_pools_made_explicit(narrow, (torch.randn(1, 3, 8, 8),)) is narrow


def test_openvino_conversion_failures_name_the_operator():
    from slimkit.backends.openvino import _unconverted
    from slimkit.core.errors import UnsupportedModelError

    text = ("Check 'false' failed at unconverted_ops_report.cpp:151:\nFrontEnd API failed with OpConversionFailure:\n"
            "-- AveragePool-20 with a message:\nKernel after dilation has size (dim: 320) larger than the data shape\n"
            "\nSummary:\n-- Conversion is failed for: AveragePool-20\n")
    err = _unconverted(RuntimeError(text))
    assert isinstance(err, UnsupportedModelError)
    assert str(err) == ("openvino cannot convert AveragePool-20: Kernel after dilation has size (dim: 320) larger "
                        "than the data shape")
    other = RuntimeError("something else")
    assert _unconverted(other) is other


def test_rounding_sensitivity_tells_a_chaotic_integer_model_from_a_smooth_one():
    from slimkit.recipes.compat import INTEGER_CEILING, rounding_sensitivity

    torch.manual_seed(0)
    x = torch.rand(64, 16)
    smooth = torch.nn.Linear(16, 4)
    # a fine staircase: sub-LSB noise crosses many of its steps, like a deep integer network amplifying flips
    chaotic = torch.nn.Sequential(smooth, _Staircase(1e-5))
    calm = rounding_sensitivity(smooth, (x,))
    wild = rounding_sensitivity(chaotic, (x,))
    assert calm.output < 1e-3 and calm.agreement > 0.9
    assert wild.output > INTEGER_CEILING and wild.agreement < 0.9
    assert rounding_sensitivity(smooth, (torch.arange(4).reshape(2, 2),)).output == 0.0  # no float value to move
    # token ids cannot move: the noise goes on the embedding tables' outputs, the first float values
    ids = torch.arange(8).reshape(2, 4)
    tokens = torch.nn.Sequential(torch.nn.Embedding(8, 16), torch.nn.Flatten(), torch.nn.Linear(64, 4))
    assert 0 < rounding_sensitivity(tokens, (ids,)).output < 1e-3
    staircase = torch.nn.Sequential(tokens, _Staircase(1e-5))
    assert rounding_sensitivity(staircase, (ids,)).output > INTEGER_CEILING


class _Staircase(torch.nn.Module):
    """Rounds to a grid far finer than the noise and scrambles the result: any move crosses a step."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def forward(self, x):
        return torch.sin(torch.round(x / self.step) * 1.3)


def test_a_chaotic_integer_model_is_judged_by_its_top1_agreement():
    from slimkit.recipes.compat import Sensitivity, _integer_verdict

    calm, wild = Sensitivity(0.01, 1.0), Sensitivity(0.6, 0.70)
    never = lambda: pytest.fail("element-wise suffices")  # noqa: E731
    assert _integer_verdict(0.01, 0.02, calm, never) == ""
    assert "more than quantizing changed" in _integer_verdict(0.1, 0.02, calm, never)
    assert _integer_verdict(0.9, 0.6, wild, lambda: 0.75) == ""
    assert "top-1 agrees with eager on 50%" in _integer_verdict(0.9, 0.6, wild, lambda: 0.5)


def test_heads_that_cannot_be_removed_are_refused_by_prune_structured_and_left_by_l0():
    """BEiT's shared relative position bias keeps a per-head table the dependency graph does not
    slice: removing a head breaks the model, so prune_structured names that and l0 gates channels only."""
    from slimkit.core.config import parse_config
    from slimkit.core.errors import ConfigError
    from slimkit.core.registry import STEPS
    from slimkit.techniques.pruning.structured import find_attention

    task = family_task("beit")
    step = STEPS.get("prune_structured")
    cfg = parse_config(STEPS.entry("prune_structured").config, {"heads": 0.5, "ratio": 0.2}, "prune_structured")
    with pytest.raises(ConfigError, match="removing attention heads breaks this model"):
        step.fn(task.build_model(), cfg, Context(task=task))
    cfg = parse_config(STEPS.entry("l0").config, {"finetune": {"epochs": 1}}, "l0")
    result = STEPS.get("l0").fn(task.build_model(), cfg, Context(task=task))
    assert result.info["heads_not_gated"] and result.info["heads_gated"] == 0
    assert all(a.heads == 2 for a in find_attention(result.model))
