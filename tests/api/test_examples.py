"""The examples of docs/api.md run (small sizes) and agree with the recipes that do the same."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from slimkit.recipes.runner import run_recipe

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "api"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_loop_matches_its_recipe(tmp_path):
    example = _module("plain_loop").main(epochs=4, prune_epochs=3, qat_epochs=1)
    recipe = yaml.safe_load((EXAMPLES / "plain_loop.yaml").read_text())
    recipe["baseline"]["train"]["epochs"] = 4
    recipe["steps"][0]["prune"]["finetune"]["epochs"] = 3
    recipe["steps"][1]["qat"]["finetune"]["epochs"] = 1
    steps = run_recipe(recipe, tmp_path / "run").results["steps"]
    by_recipe = {"baseline": steps[0]["metrics"], "pruned": steps[1]["metrics"], "pruned + qat": steps[2]["metrics"]}
    for stage, m in by_recipe.items():
        mine = example[stage]
        assert abs(mine["quality"] - m["quality"]) <= 0.05, (stage, mine["quality"], m["quality"])
        assert mine["size_bytes"] == pytest.approx(m["size_bytes"], rel=0.05), stage
        assert mine["macs"] == m["macs"], stage
    assert by_recipe["pruned"]["size_bytes"] < 0.3 * by_recipe["baseline"]["size_bytes"]  # 80% sparse, stored sparse
    deployed = example["pruned + qat, onnxruntime"]
    assert deployed["backend"] == "onnxruntime" and abs(deployed["quality"] - example["pruned + qat"]["quality"]) < 0.02


@pytest.mark.slow
def test_encoder_int8_matches_the_quantize_step(tmp_path):
    """The example's int8 MiniLM (calibrated from a DataLoader of dict batches) against the
    ``quantize`` step on the ``minilm`` task (calibrated from the task's split), on the same rows."""
    pytest.importorskip("transformers")
    import torch

    from slimkit.core.config import parse_config
    from slimkit.core.registry import STEPS
    from slimkit.tasks import build_task
    from slimkit.tasks.context import Context

    module = _module("encoder_int8")
    example = module.main(calibration_samples=64, test_rows=100)
    mine = example["int8 (eager)"]
    assert mine["quality"] > 0.98  # cosine to the FP32 embeddings
    assert mine["size_bytes"] < 0.3 * example["fp32"]["size_bytes"]
    deployed = example["int8, onnxruntime"]
    assert deployed["backend"] == "onnxruntime" and abs(deployed["quality"] - mine["quality"]) < 0.005
    task = build_task("minilm")
    entry = STEPS.entry("quantize")
    q = entry.obj.fn(task.build_model(), parse_config(entry.config, {"calibration_samples": 64}, "quantize"),
                     Context(task=task)).model.eval()
    (inputs, reference), = module.load(test_rows=100)[2]
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(q(*inputs), reference, dim=-1).mean()
    assert abs(float(cos) - mine["quality"]) < 0.01, (float(cos), mine["quality"])
    from slimkit.measure.size import serialized_bytes

    assert abs(serialized_bytes(q) - mine["size_bytes"]) < 0.02 * mine["size_bytes"]


def test_distillation_in_the_hf_trainer_matches_the_distill_verb(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    import slimkit.api as sk

    example = _module("hf_trainer_distill").main(teacher_epochs=4, epochs=4, output_dir=str(tmp_path))
    splits = example["_splits"]
    student = example["student (Trainer + distill_loss)"]
    by_verb = sk.distill(example["_student"], example["_teacher"], splits.train, val_data=splits.val,
                         losses={"logits": {"temperature": 4.0}}, finetune={"epochs": 4, "lr": 0.01})
    verb = sk.measure(by_verb, [(splits.test.inputs[0], splits.test.targets)], repeats=3)
    assert student["quality"] > 0.85 and verb["quality"] > 0.85, (student["quality"], verb["quality"])
    assert abs(student["quality"] - verb["quality"]) <= 0.05
    assert student["size_bytes"] < 0.5 * example["teacher"]["size_bytes"]
