"""Structured pruning: the dependency graph on residual, concat, grouped-conv and attention
models (a physically pruned model equals the masked model), heads and FFN neurons of
``transformers`` models, blocks, targets, criteria, the recipe step and its restore."""

import copy

import pytest
import torch
import torch.nn as nn

from slimkit.core.errors import CheckpointError, ConfigError, SlimkitError
from slimkit.measure.macs import count_macs
from slimkit.recipes.runner import run_recipe
from slimkit.techniques.pruning.blocks import Skip, remove_blocks_, removable_blocks
from slimkit.techniques.pruning.structure import apply_structure_, snapshot, structure_diff
from slimkit.techniques.pruning.structured import Plan, StructuredPruner, attention_heads
from slimkit.techniques.pruning.structured_step import SlimmingPenalty, StructuredPruneConfig
from slimkit.train.objectives import Batch
from slimkit.zoo import create_model

pytest.importorskip("torch_pruning")


def tiny_bert(heads: int = 4, hidden: int = 32, layers: int = 2):
    transformers = pytest.importorskip("transformers")
    from slimkit.zoo.minilm import SentenceEncoder

    cfg = transformers.BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=32)
    return SentenceEncoder(transformers.BertModel(cfg, add_pooling_layer=False)).eval()


def token_inputs(batch: int = 2, length: int = 8):
    torch.manual_seed(1)
    return torch.randint(1, 100, (batch, length)), torch.ones(batch, length, dtype=torch.long)


def randomise_norms_(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (a fresh model's are 0/1)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def zero_removed_(model: nn.Module, removed) -> nn.Module:
    """The masked twin: every output channel the pruner removed is zeroed (weights, bias, and
    BatchNorm scale and shift), so it contributes exactly nothing downstream."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, handler, idxs in removed:
            module = modules[name]
            if handler != "prune_out_channels" or not idxs:
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                module.weight[idxs] = 0
                if module.bias is not None:
                    module.bias[idxs] = 0
    return model


CASES = {
    "residual (resnet18)": (lambda: create_model("resnet18", num_classes=5, small_input=True, width=8),
                            lambda: (torch.randn(2, 3, 16, 16),)),
    "concat (squeezenet fire)": (lambda: create_model("squeezenet1_1", num_classes=5, small_input=True,
                                                      batch_norm=True),
                                 lambda: (torch.randn(2, 3, 32, 32),)),
    "grouped conv (mobilenetv2)": (lambda: create_model("mobilenetv2_035", num_classes=5, small_input=True),
                                   lambda: (torch.randn(2, 3, 16, 16),)),
    "attention (bert heads + ffn)": (tiny_bert, token_inputs),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_physically_pruned_model_equals_the_masked_model(case):
    build, inputs = CASES[case]
    torch.manual_seed(0)
    model = randomise_norms_(build())
    x = inputs()
    masked = copy.deepcopy(model)
    before = count_macs(model, x)
    pruner = StructuredPruner(model, x, Plan(ratio=0.4, heads=0.5, criterion="l2"))
    pruner.step()
    assert count_macs(model, x) < 0.75 * before
    zero_removed_(masked, pruner.removed)
    with torch.no_grad():
        pruned_out, masked_out = model(*x), masked(*x)
    out = getattr(pruned_out, "logits", pruned_out)
    ref = getattr(masked_out, "logits", masked_out)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    # the masked twin really lost something: it differs from the unpruned model
    with torch.no_grad():
        original = randomise_norms_(build())(*x)
    assert not torch.allclose(getattr(original, "logits", original), ref, atol=1e-3)


# one model of each zoo family (ShuffleNet: below), at the inputs its tasks use
ZOO = {"mlp_digits": (64,), "lenet_300_100": (784,), "cnn_digits": (1, 8, 8), "lenet5": (1, 28, 28),
       "cnn_shapes": (3, 32, 32), "cnn_shapes_dws": (3, 32, 32), "mobilenetv1_025": (3, 32, 32),
       "mobilenetv2_035": (3, 32, 32), "mobilenetv3_small_075": (3, 32, 32), "mobilenetv3_large_075": (3, 32, 32),
       "efficientnet_b0": (3, 32, 32), "resnet18": (3, 32, 32), "squeezenet1_0": (3, 32, 32),
       "squeezenet1_1": (3, 32, 32)}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_family_prunes_to_a_smaller_model_equal_to_its_masked_twin(name):
    import inspect

    from slimkit.core.registry import MODELS

    kwargs = {"small_input": True} if "small_input" in inspect.signature(MODELS.get(name)).parameters else {}
    torch.manual_seed(0)
    model = randomise_norms_(create_model(name, num_classes=10, **kwargs))
    x = (torch.randn(2, *ZOO[name]),)
    masked, before, params = copy.deepcopy(model), count_macs(model, x), sum(p.numel() for p in model.parameters())
    pruner = StructuredPruner(model, x, Plan(ratio=0.3))
    pruner.step()
    assert count_macs(model, x) < 0.8 * before and sum(p.numel() for p in model.parameters()) < 0.85 * params
    with torch.no_grad():
        torch.testing.assert_close(model(*x), zero_removed_(masked, pruner.removed)(*x), atol=1e-5, rtol=1e-4)


def test_residual_adds_prune_every_coupled_layer_alike():
    model = create_model("resnet18", num_classes=5, small_input=True, width=8).eval()
    x = (torch.randn(1, 3, 16, 16),)
    StructuredPruner(model, x, Plan(ratio=0.5)).step()
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    for block in blocks:  # a block's output is added to its input (or its downsampled input)
        assert block.conv2[0].out_channels == block.conv2[1].num_features
        if isinstance(block.downsample, nn.Identity):
            assert block.conv2[0].out_channels == block.conv1[0].in_channels
    stem = model.features[0][0].out_channels
    assert stem < 8 and blocks[0].conv2[0].out_channels == stem and blocks[1].conv1[0].in_channels == stem


def test_bert_heads_and_ffn_neurons_are_removed_and_the_module_attributes_follow():
    model = tiny_bert(heads=4, hidden=32)
    x = token_inputs()
    ref_shape = model(*x).shape
    StructuredPruner(model, x, Plan(ratio=0.5, heads=0.5)).step()
    layer = model.encoder.encoder.layer[0]
    attn = layer.attention.self
    assert attn.query.out_features == attn.key.out_features == attn.value.out_features == 16
    assert attn.num_attention_heads == 2 and attn.all_head_size == 16
    assert layer.attention.output.dense.in_features == 16
    assert layer.intermediate.dense.out_features == 64 and layer.output.dense.in_features == 64
    assert layer.output.dense.out_features == 32  # the residual stream keeps its width
    assert model(*x).shape == ref_shape
    assert attention_heads(model) == {f"encoder.encoder.layer.{i}.attention.self": 2 for i in range(2)}


def _hf_vision(kind: str):
    transformers = pytest.importorskip("transformers")
    if kind == "resnet":
        cfg = transformers.ResNetConfig(num_labels=7, hidden_sizes=[16, 32, 64, 128], embedding_size=16,
                                        depths=[1, 1, 1, 1], layer_type="basic")
        return transformers.ResNetForImageClassification(cfg), (1, 3, 64, 64)
    if kind == "mobilenetv2":
        cfg = transformers.MobileNetV2Config(num_labels=7, image_size=64, depth_multiplier=0.35)
        return transformers.MobileNetV2ForImageClassification(cfg), (1, 3, 64, 64)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, num_labels=7)
    return transformers.ViTForImageClassification(cfg), (1, 3, 32, 32)


class Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


# MACs kept after removing 30%: channels on both sides of a conv -> about 0.7^2; a transformer
# keeps its residual width and loses 30% of heads and FFN neurons -> about 0.7
@pytest.mark.parametrize("kind, macs_band", [("resnet", (0.42, 0.58)), ("mobilenetv2", (0.42, 0.62)),
                                             ("vit", (0.6, 0.8))])
def test_transformers_models_built_from_configs_prune_30_percent_and_export(kind, macs_band, tmp_path):
    pytest.importorskip("onnxruntime")
    from slimkit.backends.onnxruntime import export_onnx, load_onnx

    torch.manual_seed(0)
    hf, shape = _hf_vision(kind)
    model = Logits(hf).eval()
    x = (torch.randn(*shape),)
    ref_shape, before = model(*x).shape, count_macs(model, x)
    StructuredPruner(model, x, Plan(ratio=0.3, heads=0.3)).step()
    assert model(*x).shape == ref_shape
    kept = count_macs(model, x) / before
    assert macs_band[0] <= kept <= macs_band[1], kept
    if kind == "vit":
        assert all(h == 3 for h in attention_heads(model).values())
    batch = (torch.randn(3, *shape[1:]),)
    built = load_onnx(export_onnx(model, batch, tmp_path / f"{kind}.onnx"), threads=1)
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(built.run(*batch)), model(*batch), atol=1e-4, rtol=1e-3)


def test_a_model_the_graph_cannot_follow_gets_a_clear_error():
    model = create_model("shufflenet_v2_x0_5", num_classes=5, small_input=True).eval()
    with pytest.raises(SlimkitError, match="channel shuffle"):
        StructuredPruner(model, (torch.randn(1, 3, 16, 16),), Plan(ratio=0.3)).step()


def test_taylor_removes_a_large_but_unused_neuron_that_l1_keeps():
    def net():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        with torch.no_grad():
            model[0].weight[5] *= 50  # big incoming weights...
            model[0].bias[5] = 10
            model[2].weight[:, 5] = 0  # ...but nothing reads the neuron
        return model

    x = torch.randn(32, 6)
    kept = {}
    for criterion in ("l1", "taylor"):
        model = net()
        if criterion == "taylor":
            nn.functional.cross_entropy(model(x), torch.randint(0, 3, (32,))).backward()
        pruner = StructuredPruner(model, (x[:1],), Plan(ratio=0.25, criterion=criterion))
        pruner.step()
        kept[criterion] = [i for name, h, idxs in pruner.removed if name == "0" for i in idxs]
    assert 5 in kept["taylor"] and 5 not in kept["l1"]


def test_activation_scores_remove_a_large_but_silent_neuron_that_l1_keeps():
    def net():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        with torch.no_grad():
            model[0].weight[5] *= 50  # big weights on both sides...
            model[2].weight[:, 5] *= 50
            model[0].bias[5] = -1e4  # ...but the ReLU never lets it through
        return model

    x = torch.randn(32, 6)
    removed = {}
    for criterion in ("l1", "activation"):
        model = net()
        pruner = StructuredPruner(model, (x[:1],), Plan(ratio=0.25, criterion=criterion, batches=[(x,)]))
        pruner.step()
        removed[criterion] = [i for name, h, idxs in pruner.removed if name == "0" for i in idxs]
    assert 5 in removed["activation"] and 5 not in removed["l1"]
    with pytest.raises(ConfigError, match="batches"):
        StructuredPruner(net(), (x[:1],), Plan(ratio=0.25, criterion="activation"))


def test_the_slimming_penalty_is_the_l1_norm_of_the_bn_scales_and_its_gradient_their_sign():
    model = randomise_norms_(create_model("cnn_digits", num_classes=10))
    penalty = SlimmingPenalty(1e-3)
    value = penalty(Batch(model, (), torch.zeros(0), torch.zeros(0)))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and float(value.detach()) == pytest.approx(sum(float(m.weight.abs().sum()) for m in bns))
    value.backward()
    for m in bns:
        assert torch.equal(m.weight.grad, m.weight.sign())
    with pytest.raises(ConfigError, match="no"):
        SlimmingPenalty(1.0)(Batch(nn.Linear(2, 2), (), torch.zeros(0), torch.zeros(0)))


def test_removable_blocks_are_residual_blocks_and_skip_passes_the_input():
    model = create_model("resnet18", num_classes=5, small_input=True, width=8).eval()
    x = (torch.randn(1, 3, 16, 16),)
    blocks = removable_blocks(model, x)
    # the four stages' second blocks keep their shape; the first of stages 2-4 change width or size
    assert [b for b in blocks if b.startswith("features.")] == blocks and len(blocks) >= 4
    kinds = {type(dict(model.named_modules())[b]).__name__ for b in blocks}
    assert "BasicBlock" in kinds
    remove_blocks_(model, blocks[:2])
    assert isinstance(dict(model.named_modules())[blocks[0]], Skip)
    assert model(*x).shape == (1, 5)
    t = torch.randn(3)
    assert Skip()(t, "ignored", mask=None) is t


def test_the_recorded_structure_rebuilds_the_pruned_model_from_a_fresh_one():
    def build():
        return randomise_norms_(create_model("resnet18", num_classes=5, small_input=True, width=8))

    x = (torch.randn(2, 3, 16, 16),)
    torch.manual_seed(0)
    model = build()
    before = snapshot(model)
    removed = removable_blocks(model, x)[:1]
    remove_blocks_(model, removed)
    StructuredPruner(model, x, Plan(ratio=0.4)).step()
    structure = structure_diff(before, model, removed)
    assert structure.tensors and structure.attrs and structure.removed == removed
    rebuilt = apply_structure_(build(), structure)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(*x), model.eval()(*x))
    bad = structure.model_copy(update={"tensors": {"nope.weight": [1]}})
    with pytest.raises(CheckpointError, match="names layer 'nope', which this model does not have"):
        apply_structure_(build(), bad)
    owner = next(iter(structure.tensors)).rpartition(".")[0]
    bad = structure.model_copy(update={"tensors": {f"{owner}.nope": [1]}})
    with pytest.raises(CheckpointError, match=f"does not fit this model: {owner}.nope is not a tensor"):
        apply_structure_(build(), bad)


@pytest.mark.parametrize("fields, message", [
    ({"ratio": 0.3, "target_macs": 0.5}, "one of"),
    ({}, "nothing to prune"),
    ({"ratio": 0.3, "allocation": "sensitivity"}, "target_macs"),
    ({"ratio": 0.3, "slimming": 1e-4}, "slimming_epochs"),
    ({"ratio": 0.3, "slimming_epochs": 2}, "slimming > 0"),
    ({"ratio": 1.5}, "less than 1"),
    ({"ratio": 0.3, "criterion": "l3"}, "criterion"),
    ({"target_macs": 0.5, "allocation": "sensitivity", "sensitivity_grid": [0.5, 1.2]}, "sensitivity_grid"),
])
def test_bad_structured_configs_name_the_problem(fields, message):
    with pytest.raises(Exception, match=message):
        StructuredPruneConfig(**fields)


MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}


def test_the_step_meets_a_macs_target_keeps_accuracy_and_resumes(tmp_path, rebuild_run_step):
    recipe = {"task": "digits-cnn", "seed": 0, "baseline": {"train": {"epochs": 15}}, "measure": MEASURE,
              "steps": [{"prune_structured": {"target_macs": 0.6, "finetune": {"epochs": 6, "lr": 5e-4}}},
                        {"prune_structured": {"target_macs": 0.7, "allocation": "sensitivity", "blocks": 1,
                                              "sensitivity_grid": [0.25, 0.5, 0.75], "eval_samples": 256}}]}
    result = run_recipe(recipe, tmp_path / "run").results
    base, uniform, sensitive = result["steps"]
    assert uniform["metrics"]["macs"] <= 0.6 * base["metrics"]["macs"]
    assert uniform["metrics"]["quality"] >= base["metrics"]["quality"] - 0.02
    assert uniform["metrics"]["size_bytes"] < 0.75 * base["metrics"]["size_bytes"]
    assert sensitive["metrics"]["macs"] <= 0.7 * uniform["metrics"]["macs"]
    ratios = sensitive["info"]["sensitivity"]["layer_ratios"]
    assert len(set(ratios.values())) > 1  # the scan gives layers different ratios
    assert len(sensitive["info"]["blocks"]["removed"]) == 1
    for index, step in ((1, uniform), (2, sensitive)):
        rebuilt, quality = rebuild_run_step(tmp_path / "run", "digits-cnn", index, step)
        assert quality == pytest.approx(step["metrics"]["quality"], abs=1e-9)


def test_slimming_then_bn_scale_and_a_latency_target(tmp_path, monkeypatch):
    from slimkit.techniques.pruning import structured_step

    # a deterministic stand-in for the latency measurement: proportional to MACs
    monkeypatch.setattr(structured_step, "_latency_ms",
                        lambda model, ctx: count_macs(model, structured_step.example_inputs(ctx)) / 1e5)
    recipe = {"task": "digits-cnn", "seed": 0, "baseline": {"train": {"epochs": 5}}, "measure": MEASURE,
              "steps": [{"prune_structured": {"criterion": "bn_scale", "allocation": "global", "ratio": 0.4,
                                              "slimming": 1e-3, "slimming_epochs": 2}},
                        {"prune_structured": {"target_latency": 0.8, "criterion": "random"}},
                        {"prune_structured": {"ratio": 0.2, "criterion": "activation", "score_batches": 2}}]}
    result = run_recipe(recipe, tmp_path / "run").results
    base, slim, fast, active = result["steps"]
    assert active["metrics"]["macs"] < fast["metrics"]["macs"]
    assert slim["info"]["slimming_train"]["epochs"] == 2
    assert slim["metrics"]["macs"] < base["metrics"]["macs"]
    trail = fast["info"]["increments"]
    assert trail["trail"][-1] <= trail["budget"] < trail["trail"][0] / 0.8 + 1e-9
    recipe["steps"] = [{"prune_structured": {"ratio": 0.3, "ignore": ["no.such.layer"]}}]
    with pytest.raises(ConfigError, match="no.such.layer"):
        run_recipe(recipe, tmp_path / "bad")
    recipe["steps"] = [{"prune_structured": {"heads": 0.5}}]
    with pytest.raises(ConfigError, match="no attention module"):
        run_recipe(recipe, tmp_path / "heads")
    recipe["steps"] = [{"prune_structured": {"ratio": 0.3, "ignore": ["0", "1", "3", "6"]}}]
    with pytest.raises(SlimkitError, match="removed nothing"):
        run_recipe(recipe, tmp_path / "nothing")
    recipe["steps"] = [{"quantize_weights": {}}, {"prune_structured": {"ratio": 0.3}}]
    with pytest.raises(ConfigError, match="before the quantization steps"):
        run_recipe(recipe, tmp_path / "quantized")
