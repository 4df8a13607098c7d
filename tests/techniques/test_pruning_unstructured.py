"""Unstructured and N:M pruning: masks, the gradual schedule, masks held through training,
bitmask storage, the recipe step and resume."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.recipes.runner import run_recipe
from slimkit.tasks import build_task
from slimkit.techniques.pruning.callback import PruningCallback
from slimkit.techniques.pruning.criteria import cubic_sparsity, keep_count, masks_from_scores, nm_mask, topk_mask
from slimkit.techniques.pruning.sparse import SparseConv2d, SparseLinear, encode_sparse_
from slimkit.techniques.pruning.step import PruneConfig
from slimkit.train.callbacks import FitState


def test_topk_mask_keeps_exactly_the_largest_scores():
    scores = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.05, 1.0]])
    assert topk_mask(scores, 3).tolist() == [[False, True, False], [True, False, True]]
    assert keep_count(10, 0.9) == 1 and keep_count(1000, 0.9) == 100


def test_global_scope_takes_more_from_the_layer_with_smaller_weights_and_layer_scope_the_same_share():
    scores = {"big": torch.full((100,), 10.0) + torch.rand(100), "small": torch.rand(100)}
    glob = masks_from_scores(scores, 0.5, "global")
    assert int(glob["big"].sum()) == 100 and int(glob["small"].sum()) == 0
    layer = masks_from_scores(scores, 0.5, "layer")
    assert int(layer["big"].sum()) == 50 and int(layer["small"].sum()) == 50
    assert bool((scores["small"][layer["small"]].min() > scores["small"][~layer["small"]].max()))


def test_two_four_masks_keep_two_largest_in_every_group_of_four():
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    mask = nm_mask(w.abs(), 2, 4)
    groups, kept = w.abs().reshape(6, 4, 4), mask.reshape(6, 4, 4)
    assert (kept.sum(-1) == 2).all()
    assert (groups.masked_fill(~kept, float("inf")).amin(-1) >= groups.masked_fill(kept, -1).amax(-1)).all()
    with pytest.raises(ValueError, match="groups of 4"):
        nm_mask(torch.rand(2, 6), 2, 4)


def test_cubic_schedule_follows_zhu_and_gupta():
    assert cubic_sparsity(0, 100, 0.9) == 0.0
    assert cubic_sparsity(75, 100, 0.9) == pytest.approx(0.9) and cubic_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    # half-way through the 75-step horizon: s_f (1 - (1 - 0.5)^3)
    assert cubic_sparsity(37.5, 100, 0.9) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    values = [cubic_sparsity(t, 100, 0.9) for t in range(0, 101, 5)]
    assert values == sorted(values)


def test_sparse_layers_equal_the_masked_dense_layers_and_store_fewer_bytes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 20)).eval()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) > 0.8)
    x = torch.randn(3, 2, 8, 8)
    reference = model(x)
    encoded = encode_sparse_(model, ["0", "2"])
    assert isinstance(model[0], SparseConv2d) and isinstance(model[2], SparseLinear)
    assert torch.equal(model(x), reference)
    linear = encoded["2"]
    assert linear["bytes"] == (20 * 288 + 7) // 8 + 4 * linear["nnz"] and linear["bytes"] < 0.3 * linear["dense_bytes"]


def test_dense_layers_are_not_encoded_where_the_encoding_would_be_larger():
    model = nn.Sequential(nn.Linear(8, 8))
    assert encode_sparse_(model, ["0"]) == {} and type(model[0]) is nn.Linear


def test_sparse_layers_export_to_onnx_runtime_as_dense_ops_from_sparse_bytes(tmp_path, ort_optimized_ops):
    ort = pytest.importorskip("onnxruntime")
    from slimkit.backends.onnxruntime import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    dense_path = export_onnx(model, (torch.randn(1, 256),), tmp_path / "dense.onnx")
    masks = masks_from_scores({"0": model[0].weight.abs(), "2": model[2].weight.abs()}, 0.9, "global")
    with torch.no_grad():
        model[0].weight.mul_(masks["0"])
        model[2].weight.mul_(masks["2"])
    x = torch.randn(4, 256)
    reference = model(x).detach().numpy()
    encode_sparse_(model, ["0", "2"])
    path = export_onnx(model, (x[:1],), tmp_path / "sparse.onnx")
    assert path.stat().st_size < 0.2 * dense_path.stat().st_size
    assert set(ort_optimized_ops(path)) <= {"Gemm", "FusedGemm", "MatMul", "Relu"}  # the decode folded at load
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], reference,
                               rtol=1e-5, atol=1e-6)


def _state(model):
    return FitState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), total_steps=100)


def test_the_callback_holds_masks_through_optimizer_steps():
    torch.manual_seed(0)
    model = nn.Linear(20, 20)
    cb = PruningCallback({"w": model.weight}, 0.75, lambda s, sp: masks_from_scores(s, sp, "layer"))
    state = _state(model)
    cb.on_fit_start(state)
    pruned = model.weight == 0
    assert int(pruned.sum()) == 300
    for step in range(5):
        state.optimizer.zero_grad()
        model(torch.randn(8, 20)).pow(2).sum().backward()
        cb.after_backward(state)
        assert (model.weight.grad[pruned] == 0).all()
        state.optimizer.step()
        cb.on_step_end(state)
        state.step += 1
    assert (model.weight[pruned] == 0).all() and not (model.weight[~pruned] == 0).any()


def test_the_cubic_callback_raises_sparsity_gradually_and_ends_at_the_target():
    torch.manual_seed(0)
    model = nn.Linear(50, 50)
    cb = PruningCallback({"w": model.weight}, 0.9, lambda s, sp: masks_from_scores(s, sp, "layer"),
                         schedule="cubic", updates=10)
    state = _state(model)
    cb.on_fit_start(state)
    seen = []
    for step in range(100):
        cb.on_step_end(state)
        state.step += 1
        seen.append(float((model.weight == 0).float().mean()))
    cb.on_fit_end(state)
    assert seen[0] == 0.0 and 0.3 < seen[30] < 0.85 and seen[-1] == pytest.approx(0.9, abs=1e-3)
    assert len(set(seen)) >= 8  # many small cuts, not one


def test_movement_scores_rank_by_how_training_pushes_weights():
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0, -1.0, -1.0]]))
    cb = PruningCallback({"w": model.weight}, 0.5, lambda s, sp: masks_from_scores(s, sp, "layer"),
                         criterion="movement", schedule="cubic")
    model.weight.grad = torch.tensor([[-1.0, 1.0, 1.0, -1.0]])  # SGD moves weights 0 and 2 away from zero
    cb.after_backward(_state(model))
    assert cb.scores()["w"].tolist() == [[1.0, -1.0, 1.0, -1.0]]
    cb.prune_to(0.5)
    assert model.weight.tolist() == [[1.0, 0.0, -1.0, 0.0]]


@pytest.mark.parametrize("fields, message", [
    ({}, "sparsity is required"),
    ({"pattern": "2:4", "sparsity": 0.5}, "fixes the sparsity"),
    ({"pattern": "4:2"}, "n < m"),
    ({"pattern": "two:four"}, "N:M"),
    ({"sparsity": 0.5, "criterion": "movement"}, "needs finetune.epochs"),
    ({"sparsity": 0.5, "schedule": "cubic"}, "needs finetune.epochs > 0"),
    ({"sparsity": 1.0}, "less than 1"),
])
def test_bad_prune_configs_name_the_problem(fields, message):
    with pytest.raises(Exception, match=message):
        PruneConfig(**fields)


def test_prune_step_fine_tuned_at_90_percent_keeps_accuracy_shrinks_bytes_and_resumes(tmp_path, rebuild_run_step):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 20}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"prune": {"sparsity": 0.9}},
                        {"prune": {"sparsity": 0.9, "schedule": "cubic", "finetune": {"epochs": 8, "lr": 1e-3}}}]}
    # the second step prunes what the first left (its magnitude masks keep the zeros) while fine-tuning
    result = run_recipe(recipe, tmp_path / "run").results
    base, cut, tuned = result["steps"]
    assert cut["info"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert tuned["info"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert tuned["metrics"]["quality"] >= base["metrics"]["quality"] - 0.02
    assert tuned["metrics"]["quality"] > cut["metrics"]["quality"]
    assert cut["metrics"]["size_bytes"] < 0.2 * base["metrics"]["size_bytes"]
    rebuilt, quality = rebuild_run_step(tmp_path / "run", "digits-mlp", 1, cut)
    assert sum(isinstance(m, SparseLinear) for m in rebuilt.modules()) == 3
    assert quality == pytest.approx(cut["metrics"]["quality"], abs=1e-9)


def test_prune_step_two_four_and_a_skip_list(tmp_path):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 5}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"prune": {"pattern": "2:4", "skip": ["net.6"], "encode": False}}]}
    with pytest.raises(ConfigError, match="skip names no module"):
        run_recipe(recipe, tmp_path / "bad")
    model_names = [n for n, m in build_task("digits-mlp").build_model().named_modules() if isinstance(m, nn.Linear)]
    recipe["steps"][0]["prune"]["skip"] = [model_names[-1]]
    _, step = run_recipe(recipe, tmp_path / "run").results["steps"]
    per_layer = step["info"]["sparsity_per_layer"]
    assert set(per_layer) == set(model_names[:-1]) and all(v == 0.5 for v in per_layer.values())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_deployed_sparse_models_match_eager_and_openvino_runs_no_decoding(tmp_path, backend):
    from slimkit.core.registry import BACKENDS

    if not BACKENDS.get(backend).available():
        pytest.skip(f"{backend} is not available here")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) > 0.9)
    encode_sparse_(model, ["0", "2"])
    x = torch.randn(4, 256)
    compiled = BACKENDS.get(backend).compile(model, (x[:1],), precision="fp32", threads=1, workdir=tmp_path)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    dense_bytes = 4 * (256 * 128 + 128 * 10)
    if backend == "onnxruntime":  # ships the encoding, folds it at load
        assert compiled.artifact_bytes < 0.25 * dense_bytes
    else:  # gets the dense weights: its runtime graph has no decoding left
        import openvino as ov

        ops = {op.get_type_name() for op in ov.Core().read_model(str(compiled.artifact[0])).get_ops()}
        assert "CumSum" not in ops and compiled.artifact_bytes > dense_bytes


def test_prune_then_quantize_keeps_the_zeros_and_resumes(tmp_path, rebuild_run_step):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 10}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"prune": {"sparsity": 0.8, "finetune": {"epochs": 3}}}, {"quantize": {"method": "dynamic"}}]}
    base, pruned, quant = run_recipe(recipe, tmp_path / "run").results["steps"]
    assert quant["info"]["layers_quantized"] == 3
    assert quant["metrics"]["quality"] >= pruned["metrics"]["quality"] - 0.02
    rebuilt, quality = rebuild_run_step(tmp_path / "run", "digits-mlp", 2, quant)
    assert quality == pytest.approx(quant["metrics"]["quality"], abs=1e-9)
    codes = [m.weight_int8 for m in rebuilt.modules() if hasattr(m, "weight_int8")]
    assert len(codes) == 3 and sum(int((c == 0).sum()) for c in codes) >= 0.8 * sum(c.numel() for c in codes)
