"""TinyML: fixed-point arithmetic, lowering, the C generator bit for bit against the Python integer
reference (a trained digits CNN, fuzzed random CNNs, a MobileNetV2 under the arena planner), the
refusals, the backend and the ``tinyml`` step."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from slimkit.backends.tinyml import build
from slimkit.backends.tinyml.codegen import write_sources
from slimkit.backends.tinyml.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from slimkit.backends.tinyml.fuzz import random_cnn
from slimkit.backends.tinyml.graph import lower
from slimkit.backends.tinyml.patch import choose_patching, patch_graph, stage_error
from slimkit.backends.tinyml.planner import plan_memory
from slimkit.backends.tinyml.reference import dequantize_output, quantize_input, run_reference
from slimkit.core.errors import UnsupportedModelError
from slimkit.techniques.quantization.ptq import quantize_static

pytestmark = pytest.mark.skipif(build.host_compiler() is None, reason="no C compiler on PATH")


def quantized_random_cnn(seed: int, rows: int = 64):
    """``random_cnn(seed)`` with static int8 on ``rows`` random inputs; the model and those inputs."""
    net, shape = random_cnn(seed)
    x = torch.randn(rows, *shape, generator=torch.Generator().manual_seed(seed))
    return quantize_static(net, [(x[i:i + 16],) for i in range(0, rows, 16)])[0].eval(), x


def _c_outputs(graph, codes, folder, *, sanitize=None, in_place=True):
    """The compiled C's outputs (under ASan/UBSan where the host compiler has them) and the plan."""
    sanitize = build.sanitizers_available() if sanitize is None else sanitize
    plan = plan_memory(graph, in_place=in_place)
    write_sources(graph, plan, folder, "m")
    return build.run_harness(build.compile_harness(folder, "m", sanitize=sanitize), graph, codes, high_water=True), plan


def test_quantize_multiplier_and_requantization_round_as_gemmlowp():
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.75) == (3 << 29, 0)
    assert quantize_multiplier(0.0) == (0, 0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        quantize_multiplier(-1.0)
    # ties as gemmlowp breaks them: its doubling high multiply rounds them up (0.5 x -3 = -1.5 -> -1),
    # its rounding right shift away from zero (0.25 x -6 = -1.5 -> -2)
    ties = np.array([3, -3, 5, -5, 4])
    assert multiply_by_quantized_multiplier(ties, *quantize_multiplier(0.5)).tolist() == [2, -1, 3, -2, 2]
    assert multiply_by_quantized_multiplier(2 * ties, *quantize_multiplier(0.25)).tolist() == [2, -2, 3, -3, 2]
    rng = np.random.default_rng(0)
    for real in [1e-4, 3.7e-3, 0.0421, 0.37, 0.9999, 1.5, 17.25]:
        m0, shift = quantize_multiplier(real)
        assert 1 << 30 <= m0 < 1 << 31 and m0 * 2.0 ** (shift - 31) == pytest.approx(real, rel=2 ** -30)
        x = rng.integers(-(1 << 20), 1 << 20, 2000)
        got = multiply_by_quantized_multiplier(x, m0, shift)
        assert np.abs(got - x * real).max() <= 1.0  # within one step of the exact product


@pytest.fixture(scope="module")
def digits_int8():
    from slimkit.core.registry import MODELS, load_builtins
    from slimkit.data.digits import load_digits_splits

    load_builtins()
    splits = load_digits_splits(image=True)
    torch.manual_seed(0)
    net = MODELS.get("cnn_digits")()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    x, y = splits.train.inputs[0], splits.train.targets
    for _ in range(6):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    q, _ = quantize_static(net.eval(), [(x[i:i + 64],) for i in range(0, 512, 64)], weight_max=127)
    return q.eval(), splits


def test_digits_cnn_in_c_is_bit_exact_on_the_whole_test_set_and_as_accurate(digits_int8, tmp_path):
    q, splits = digits_int8
    x, y = splits.test.inputs[0], splits.test.targets
    graph = lower(q, x[:1])
    assert [op.kind for op in graph.ops] == ["conv", "conv", "maxpool", "conv", "maxpool", "linear", "linear"]
    assert graph.output_tensor.dtype == "int32"  # the float logits: int32 at one scale, no int8 ties
    codes = quantize_input(graph, x)
    reference = run_reference(graph, codes)
    ran, plan = _c_outputs(graph, codes, tmp_path)
    assert np.array_equal(ran.outputs, reference)
    assert ran.high_water == plan.peak  # the run touched exactly the planned arena, nothing beyond
    with torch.no_grad():
        fake_quant = q(x)
    c_logits = dequantize_output(graph, ran.outputs)
    acc_c, acc_fq = (c_logits.argmax(1) == y).float().mean(), (fake_quant.argmax(1) == y).float().mean()
    assert acc_c > 0.9 and abs(acc_c - acc_fq) <= 1 / len(y) + 1e-9
    # the integer graph computes what the fake-quantized model computes, up to its roundings
    assert (c_logits - fake_quant).abs().max() <= 0.02 * fake_quant.abs().max()


def test_fuzzed_random_cnns_are_bit_exact_under_sanitizers_whole_and_by_patches(tmp_path):
    kinds, patched = set(), 0
    for seed in range(10):
        q, x = quantized_random_cnn(seed)
        graph = lower(q, x[:1], calibration=x)
        kinds |= {op.kind + ("-dw" if op.kind == "conv" and op.attrs["groups"] > 1 else "") for op in graph.ops}
        codes = quantize_input(graph, x)
        reference = run_reference(graph, codes)
        ran, plan = _c_outputs(graph, codes, tmp_path / str(seed))
        assert np.array_equal(ran.outputs, reference), f"seed {seed}"
        assert ran.high_water <= plan.peak, f"seed {seed}: a run wrote beyond the planned arena"
        stages = [n for n in range(1, len(graph.ops)) if not stage_error(graph, n)]
        if stages:  # the longest stage by patches, on an uneven grid: the same outputs bit for bit
            by_patches = patch_graph(graph, stages[-1], 3)
            ran, plan = _c_outputs(by_patches, codes, tmp_path / f"{seed}-patched")
            assert np.array_equal(ran.outputs, reference), f"seed {seed}, first {stages[-1]} ops by patches"
            assert ran.high_water <= plan.peak
            patched += 1
    assert kinds >= {"conv", "conv-dw", "linear", "maxpool", "avgpool", "add", "relu"}, kinds
    assert patched >= 6


def test_a_consumer_with_its_own_input_scale_gets_a_requantize(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(32, 1, 8, 8)
    q, _ = quantize_static(net.eval(), [(x,)])
    layers = [m for m in q.modules() if type(m).__name__ == "QuantConv2d"]
    second = layers[1]
    second.input_quant.scale.mul_(1.5)
    second.input_quant._frozen_from_buffers()
    graph = lower(q, x[:1])
    assert "requantize" in [op.kind for op in graph.ops]
    codes = quantize_input(graph, x)
    ran, _ = _c_outputs(graph, codes, tmp_path)
    assert np.array_equal(ran.outputs, run_reference(graph, codes))


def test_planner_runs_mobilenetv2_in_less_than_its_two_largest_tensors_and_patches_halve_it(tmp_path):
    from slimkit.core.registry import MODELS, load_builtins

    load_builtins()
    torch.manual_seed(0)
    net = MODELS.get("mobilenetv2_035")(num_classes=10, small_input=True).eval()
    x = torch.randn(16, 3, 32, 32)
    q, _ = quantize_static(net, [(x,)])
    graph = lower(q, x[:1])
    plan, flat = plan_memory(graph), plan_memory(graph, in_place=False)
    two_largest = sum(sorted((t.nbytes for t in graph.tensors.values()), reverse=True)[:2])
    assert plan.peak < two_largest < plan.naive and plan.peak < flat.peak
    codes = quantize_input(graph, x[:4])
    reference = run_reference(graph, codes)
    ran, _ = _c_outputs(graph, codes, tmp_path / "whole", sanitize=False)
    assert np.array_equal(ran.outputs, reference)
    assert ran.high_water == plan.peak
    # the first layers patch by patch (MCUNetV2) need half the arena, for recomputed halos
    choice = choose_patching(graph)
    assert choice.peak <= plan.peak // 2 and graph.macs() < choice.executed_macs < 1.5 * graph.macs()
    ran, patched_plan = _c_outputs(choice.graph, codes, tmp_path / "patched", sanitize=False)
    assert np.array_equal(ran.outputs, reference)
    assert ran.high_water == patched_plan.peak == choice.peak


def test_models_without_integer_kernels_are_refused_with_the_op_and_where():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    with pytest.raises(UnsupportedModelError, match="run a static `quantize` step first"):
        lower(nn.Sequential(nn.Conv2d(1, 2, 3)), x[:1])
    hard = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Hardswish(), nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(UnsupportedModelError, match="Hardswish"):
        lower(quantize_static(hard.eval(), [(x,)])[0], x[:1])

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3), nn.Linear(144, 2)

        def forward(self, x):
            return self.fc(torch.cat([self.a(x), self.b(x)], 1).flatten(1))

    with pytest.raises(UnsupportedModelError, match="no integer kernel for .*cat"):
        lower(quantize_static(Cat().eval(), [(x,)])[0], x[:1])


def test_the_model_compiles_without_floating_point_and_for_a_cortex_m4(digits_int8, tmp_path):
    q, splits = digits_int8
    graph = lower(q, splits.test.inputs[0][:1])
    write_sources(graph, plan_memory(graph), tmp_path, "digits")
    assert build.check_no_float(tmp_path, "digits") == ""
    # the check is not vacuous: a float in the model source fails it
    source = (tmp_path / "digits.c").read_text()
    (tmp_path / "digits.c").write_text(source + "\nfloat sk_scale(int x) { return x * 0.5f; }\n")
    with pytest.raises(RuntimeError, match="general-regs-only|SSE"):
        build.check_no_float(tmp_path, "digits")
    (tmp_path / "digits.c").write_text(source)
    arm = build.arm_cross_compile(tmp_path, "digits")
    if isinstance(arm, str):
        pytest.skip(arm)
    assert arm.float_calls == [] and arm.text >= graph.const_bytes() and arm.bss >= plan_memory(graph).peak


def test_tinyml_backend_runs_the_generated_c(digits_int8, tmp_path):
    from slimkit.core.registry import BACKENDS

    q, splits = digits_int8
    x = splits.test.inputs[0][:40]
    compiled = BACKENDS.get("tinyml").compile(q, (x[:1],), workdir=tmp_path)
    graph = lower(q, x[:1])
    expected = dequantize_output(graph, run_reference(graph, quantize_input(graph, x)))
    assert torch.equal(compiled(x), expected)
    assert sorted(p.name for p in compiled.artifact) == ["slimkit_kernels.h", "slimkit_model.c", "slimkit_model.h"]
    assert compiled.info["arena_bytes"] > 0 and compiled.info["macs"] == graph.macs()
    with pytest.raises(UnsupportedModelError, match="quantize"):
        BACKENDS.get("tinyml").compile(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), (x[:1],), workdir=tmp_path / "f")


def test_tinyml_is_never_an_auto_candidate():
    from slimkit.backends.measure import all_candidates

    assert "tinyml" not in [b for b, _ in all_candidates()]
    assert "tinyml" in [b for b, _ in all_candidates(backends=["tinyml"])]


def test_tinyml_step_in_a_recipe_writes_checked_c_and_the_fit(tmp_path):
    from slimkit.recipes.runner import run_recipe

    recipe = {"task": "digits-cnn", "seed": 0, "baseline": {"train": {"epochs": 3}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"quantize": {"weight_range": "int8", "calibration_samples": 128}},
                        {"tinyml": {"name": "digits", "check_rows": 100, "require_fit": "cortex-m4-64k"}}]}
    results = run_recipe(recipe, tmp_path).results
    info = results["steps"][-1]["info"]
    assert info["bit_exact_rows"] == info["test_rows"] == 100
    assert abs(info["c_quality"] - info["int8_eager_quality"]) <= 0.011
    assert info["arena_high_water"] == info["arena_bytes"] < info["naive_arena_bytes"]
    assert (tmp_path / "steps" / "02-tinyml" / "c" / "digits.c").is_file()
    assert any(f["target"] == "cortex-m4-64k" and f["fits"] for f in info["fit"])
    assert "Microcontroller fit of tinyml" in (tmp_path / "report.md").read_text()


def test_tinyml_step_config_and_fit_are_checked():
    from slimkit.backends.tinyml.step import TinyMLConfig

    with pytest.raises(ValueError, match="C identifier"):
        TinyMLConfig(name="2fast")
    with pytest.raises(ValueError, match="unknown target 'esp32'"):
        TinyMLConfig(require_fit="esp32")


def test_fit_report_names_what_overflows():
    from slimkit.backends.tinyml.report import TARGETS, Footprint

    fp = Footprint(flash=300_000, flash_measured=True, sram=70_000, arena=69_000, io=1_000, macs=1)
    verdict = fp.fit(TARGETS["cortex-m4-64k"])
    assert not verdict["fits"] and verdict["sram_over"] == 70_000 - 65_536 and verdict["flash_over"] == 300_000 - 262_144
    assert "SRAM over by 4,464 B" in verdict["why"] and "flash over by 37,856 B" in verdict["why"]
    assert fp.fit(TARGETS["cortex-m7-320k"])["fits"]


def test_training_memory_counts_what_each_mode_keeps():
    from slimkit.backends.tinyml.ondevice import training_memory

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    x = torch.randn(64, 20)
    q, _ = quantize_static(net.eval(), [(x,)])
    graph = lower(q, x[:1])
    last = training_memory(graph, q, "last", "sgd")
    # the last layer's weights and bias as float32 masters and gradients; its int8 input kept; the
    # output gradient (int32 logits -> 5 floats) is all that is live going back
    assert last.trained_params == 30 * 5 + 5 and last.param_bytes == 4 * 155 * 2
    assert last.saved_bytes == 30 and last.gradient_bytes == 4 * 5
    bias = training_memory(graph, q, "bias", "sgd-momentum")
    # both biases, with momentum; nothing kept but the ReLU's mask (30 bits); gradients of the
    # output and of the hidden layer live together when going back through the last layer
    assert bias.trained_params == 35 and bias.param_bytes == 4 * 35 * 3
    assert bias.saved_bytes == 4 and bias.gradient_bytes == 4 * (5 + 30)
    full = training_memory(graph, q, "full", "adam")
    assert full.saved_bytes == 20 + 30 + 4 and full.param_bytes == 4 * (20 * 30 + 30 + 155) * 4
    for m in (last, bias, full):
        assert m.total_bytes == m.param_bytes + max(m.arena_bytes + m.saved_bytes, m.saved_bytes + m.gradient_bytes)
    assert max(last.total_bytes, bias.total_bytes) < full.total_bytes
    with pytest.raises(ValueError, match="unknown on-device training mode"):
        training_memory(graph, q, "weights", "sgd")


def test_on_device_training_adapts_to_a_shifted_domain_changing_only_its_parameters(digits_int8):
    import copy

    from slimkit.api.verbs import user_context
    from slimkit.backends.tinyml.ondevice import train_on_device
    from slimkit.data.mnist import load_mnist_as_digits
    from slimkit.techniques.quantization.ptq import quantized_layers
    from slimkit.train.config import TrainConfig

    q, _ = digits_int8
    mnist = load_mnist_as_digits()  # other writers, resized to digits' 8x8: a domain shift
    few = torch.cat([torch.nonzero(mnist.train.targets == c).flatten()[:10] for c in range(10)])
    data = [(mnist.train.inputs[0][few], mnist.train.targets[few])]

    def accuracy(model):
        with torch.no_grad():
            return float((model(mnist.test.inputs[0]).argmax(1) == mnist.test.targets).float().mean())

    before = accuracy(q)
    cfg = TrainConfig(epochs=30, batch_size=8, lr=0.01, optimizer="sgd", keep_best=False)
    results = {}
    for mode in ("bias", "bias+last"):
        tuned = copy.deepcopy(q)
        train_on_device(tuned, user_context(tuned, data), mode, cfg)
        results[mode] = accuracy(tuned)
        old, new = quantized_layers(q), quantized_layers(tuned)
        names = list(old)
        for name in names:
            same_codes = torch.equal(old[name].weight_int8, new[name].weight_int8)
            assert same_codes == (mode == "bias" or name != names[-1]), (mode, name)  # only the last layer's weights
            assert not torch.equal(old[name].bias, new[name].bias)  # every bias trained
        assert not any(p.requires_grad for p in tuned.parameters())
        graph = lower(tuned, mnist.test.inputs[0][:1])  # still an int8 model the C generator takes
        codes = quantize_input(graph, mnist.test.inputs[0][:50])
        assert run_reference(graph, codes).shape == (50, 10)
    assert results["bias"] > before + 0.03 and results["bias+last"] > before + 0.15, (before, results)


def test_on_device_train_step_chooses_within_the_budget(tmp_path):
    from slimkit.backends.tinyml.step import OnDeviceTrainConfig
    from slimkit.core.errors import SlimkitError
    from slimkit.recipes.runner import run_recipe

    with pytest.raises(ValueError, match="give budget_bytes"):
        OnDeviceTrainConfig(mode="auto")
    recipe = {"task": "digits-cnn", "seed": 0, "baseline": {"train": {"epochs": 2}},
              "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False},
              "steps": [{"quantize": {"weight_range": "int8", "calibration_samples": 128}},
                        {"on_device_train": {"budget_bytes": 30_000, "finetune": {"epochs": 1}}}]}
    info = run_recipe(recipe, tmp_path / "run").results["steps"][-1]["info"]
    fitting = [m for m, v in info["memory"].items() if v["total_bytes"] <= 30_000]
    assert info["mode"] in fitting and info["sram_bytes"] <= 30_000
    assert info["memory"][info["mode"]]["trained_params"] == max(info["memory"][m]["trained_params"] for m in fitting)
    recipe["steps"][1] = {"on_device_train": {"budget_bytes": 1_000, "finetune": {"epochs": 1}}}
    with pytest.raises(SlimkitError, match="no mode fits budget_bytes=1,000"):
        run_recipe(recipe, tmp_path / "small")


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2"])
def test_transformers_cnns_that_fx_cannot_trace_go_through_torch_export(name, tmp_path):
    pytest.importorskip("transformers")
    from slimkit.zoo.thirdparty import FAMILIES

    family = FAMILIES[name]
    net, x = family.build(10), family.example(16)
    q, _ = quantize_static(net, [(x,)], weight_max=127)
    graph = lower(q, x[:1], calibration=x)  # HF code branches on shapes: traced by torch.export
    kinds = {op.kind for op in graph.ops}
    assert {"conv", "add"} <= kinds and "linear" in kinds
    codes = quantize_input(graph, x)
    reference = run_reference(graph, codes)
    with torch.no_grad():
        fake_quant = q(x)
    assert (dequantize_output(graph, reference) - fake_quant).abs().max() <= 0.1 * fake_quant.abs().max()
    ran, _ = _c_outputs(graph, codes, tmp_path / "whole", sanitize=False)
    assert np.array_equal(ran.outputs, reference)
    if name == "mobilenet_v2":  # TF-style asymmetric padding folded into the convs, standalone ReLU6 clamps
        assert any(op.attrs.get("padding_end", op.attrs.get("padding")) != op.attrs.get("padding")
                   for op in graph.ops if op.kind == "conv") and "relu" in kinds
        choice = choose_patching(graph)
        ran, plan = _c_outputs(choice.graph, codes, tmp_path / "patched", sanitize=False)
        assert np.array_equal(ran.outputs, reference) and plan.peak < plan_memory(graph).peak


@pytest.mark.parametrize("name, reason", [
    ("regnet", "no integer kernel for .*sigmoid"),  # squeeze-excitation
    ("efficientnet", "fuses SiLU, which has no integer kernel"),
    ("vit", "reads its tensor 'hf.vit.embeddings.cls_token' outside any layer"),
])
def test_transformers_models_without_integer_kernels_are_refused_in_one_line(name, reason):
    pytest.importorskip("transformers")
    from slimkit.zoo.thirdparty import FAMILIES

    family = FAMILIES[name]
    net, x = family.build(10), family.example(8)
    q, _ = quantize_static(net, [(x,)], weight_max=127)
    with pytest.raises(UnsupportedModelError, match=reason) as err:
        lower(q, x[:1], calibration=x)
    assert "\n" not in str(err.value) and str(err.value).startswith("tinyml: ")
