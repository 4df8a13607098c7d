"""The encoded-layer protocol: every encoded layer class, made by its technique's own function
from a small dense layer, densifies to an equivalent plain layer and reports the dense layer's
weight count, its kept weights and the bytes it stores; no encoded class escapes the protocol;
techniques never import backends; and results.json's weight counts are the dense model's."""

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import slimkit
from slimkit.core.errors import ConfigError
from slimkit.encoding import (EncodedLayer, dense_fp32_bytes, densified, densify_, encoded_classes, encoded_layers,
                              is_encoded, logical_param_count, nonzero_param_count, refuse_encoded)

SRC = Path(slimkit.__file__).parent


def _pruned(layer: nn.Module, keep: float = 0.2) -> nn.Module:
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) < keep)
    return layer


def sparse(dense):
    from slimkit.techniques.pruning.sparse import encode_sparse_

    model = nn.Sequential(_pruned(dense))
    encode_sparse_(model, ["0"])
    return model[0]


def shared(dense):
    from slimkit.techniques.sharing.codebook import share_
    from slimkit.techniques.sharing.kmeans import kmeans_1d

    model = nn.Sequential(dense)
    share_(model, ["0"], 8, {"0": False}, {"0": kmeans_1d(dense.weight, 8)})
    return model[0]


def hashed(dense):
    from slimkit.techniques.sharing.hashing import hash_

    model = nn.Sequential(dense)
    hash_(model, {"0": {"stored": dense.weight.numel() // 8, "seed": 1}})
    model[0].project_(dense.weight)
    return model[0]


def static_int8(dense, x):
    from slimkit.techniques.quantization.ptq import quantize_static, quantized_layers

    q, _ = quantize_static(nn.Sequential(dense), [(x,)], bias_correction=False)
    return next(iter(quantized_layers(q).values()))


def weight_only(dense):
    from slimkit.techniques.quantization.weight_only import WeightOnlySpec, quantize_weight_only

    q, _ = quantize_weight_only(nn.Sequential(dense), WeightOnlySpec(bits=4, group_size=16),
                                kinds=("linear", "conv", "embedding"))
    return q[0]


def dynamic_int8(dense):
    from slimkit.techniques.quantization.dynamic import quantize_dynamic

    q, _ = quantize_dynamic(nn.Sequential(dense))
    return q[0]


def _linear():
    return nn.Linear(64, 32)


def _conv():
    return nn.Conv2d(8, 16, 3, padding=1, stride=2, groups=2)


def _linear_input():
    return torch.randn(16, 64)


def _conv_input():
    return torch.randn(4, 8, 10, 10)


# class name -> (dense layer, input, encoder, tolerance of densify's output against the layer's, relative)
CASES = {
    "SparseLinear": (_linear, _linear_input, sparse, 0.0),
    "SparseConv2d": (_conv, _conv_input, sparse, 0.0),
    "SharedLinear": (_linear, _linear_input, shared, 1e-6),
    "SharedConv2d": (_conv, _conv_input, shared, 1e-6),
    "HashedLinear": (_linear, _linear_input, hashed, 1e-6),
    "HashedConv2d": (_conv, _conv_input, hashed, 1e-6),
    # activations are rounded to 8 bits on the way in and out: a few output LSBs
    "QuantLinear": (_linear, _linear_input, static_int8, 0.03),
    "QuantConv2d": (_conv, _conv_input, static_int8, 0.03),
    "WeightOnlyLinear": (_linear, _linear_input, weight_only, 1e-6),
    "WeightOnlyConv2d": (_conv, _conv_input, weight_only, 1e-6),
    "WeightOnlyEmbedding": (lambda: nn.Embedding(50, 32), lambda: torch.randint(0, 50, (4, 7)), weight_only, 1e-6),
    "DynamicQuantLinear": (_linear, _linear_input, dynamic_int8, 0.02),
}


def _encode(name):
    make_dense, make_input, encoder, tol = CASES[name]
    dense, x = make_dense().eval(), make_input()
    layer = encoder(dense, x) if encoder is static_int8 else encoder(dense)
    return dense, layer.eval(), x, tol


def _encoded_tensor_bytes(layer: nn.Module) -> int:
    """Bytes of the layer's checkpoint entries other than its bias and activation quantizers."""
    return sum(t.numel() * t.element_size() for k, t in layer.state_dict().items()
               if k != "bias" and not k.startswith(("input_quant.", "output_quant.")))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoded_layer_conforms(name):
    dense, layer, x, tol = _encode(name)
    assert type(layer).__name__ == name and isinstance(layer, EncodedLayer)
    plain = layer.densify()
    assert not any(isinstance(m, EncodedLayer) for m in plain.modules())
    core = plain[0] if isinstance(plain, nn.Sequential) else plain  # a quantized layer's fused activation follows
    assert type(core) is type(dense)
    with torch.no_grad():
        assert _rel(plain(x), layer(x)) <= tol
    assert layer.logical_weights() == sum(p.numel() for p in dense.parameters())
    assert layer.nonzero_weights() == sum(int(torch.count_nonzero(p)) for p in plain.parameters())
    assert layer.stored_bytes() == _encoded_tensor_bytes(layer) < 4 * dense.weight.numel()


def test_every_encoded_class_has_a_conformance_case():
    _import_all_techniques()
    assert sorted(c.__name__ for c in encoded_classes()) == sorted(CASES)


# what marks a module class as storing its weight encoded: a decoder or a byte count of its own
ENCODED_MARKS = ("def dense_weight", "def dequantized_weight", "def stored_bytes", 'register_buffer("weight_')


def test_no_module_class_stores_an_encoded_weight_outside_the_protocol():
    modules = _import_all_techniques()
    offenders = []
    for module in modules:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, nn.Module):
                continue
            source = inspect.getsource(cls)
            if any(mark in source for mark in ENCODED_MARKS) and not issubclass(cls, EncodedLayer):
                offenders.append(f"{module.__name__}.{cls.__name__}")
    assert not offenders, f"encoded layers outside slimkit.encoding.EncodedLayer: {offenders}"


def test_a_class_without_the_protocol_cannot_be_made():
    class Incomplete(EncodedLayer):
        kind = "sparse"

    with pytest.raises(TypeError):
        Incomplete()
    with pytest.raises(TypeError, match="kind"):
        type("Unnamed", (EncodedLayer,), {"kind": "zipped"})


def test_model_helpers_find_densify_and_refuse():
    model = nn.Sequential(_linear(), nn.ReLU(), nn.Linear(32, 10))
    x = _linear_input()
    from slimkit.techniques.pruning.sparse import encode_sparse_

    _pruned(model[0])
    encode_sparse_(model, ["0"])
    model[2] = dynamic_int8(model[2])
    assert set(encoded_layers(model)) == {"0", "2"} and list(encoded_layers(model, "sparse")) == ["0"]
    assert is_encoded(model, ("sparse",)) and not is_encoded(model, "shared")
    with pytest.raises(ValueError, match="unknown encoding kind"):
        is_encoded(model, "zipped")
    with pytest.raises(ConfigError, match=r"lora: the model is already pruned and bitmask-encoded \(0\) and "
                                          r"dynamically quantized \(2\); adapt a dense model"):
        refuse_encoded(model, "lora", "adapt a dense model")
    refuse_encoded(model, "cluster", "one cluster step per run", ("shared", "hashed"))  # none: no error
    copy = densified(model, "sparse")
    assert type(copy[0]) is nn.Linear and is_encoded(copy, "dynamic_int8") and is_encoded(model, "sparse")
    with torch.no_grad():
        assert torch.equal(copy(x), model(x))
    assert densify_(model) == ["0", "2"] and not is_encoded(model)


def test_counts_of_an_encoded_model_are_the_dense_models():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 64),
                          nn.Linear(64, 10))
    params = sum(p.numel() for p in model.parameters())
    fp32 = 4 * (params + 2 * 8)  # BatchNorm's running mean and variance
    assert logical_param_count(model) == params and dense_fp32_bytes(model) == fp32
    _pruned(model[3], 0.1)
    kept = int(torch.count_nonzero(model[3].weight)) + 64
    from slimkit.techniques.pruning.sparse import encode_sparse_

    encode_sparse_(model, ["3"])
    model[4] = shared(model[4])
    assert logical_param_count(model) == params and dense_fp32_bytes(model) == fp32
    assert model[3].nonzero_weights() == kept
    plain = densified(model)
    assert nonzero_param_count(model) == sum(int(torch.count_nonzero(p)) for p in plain.parameters())
    assert logical_param_count(plain) == params and dense_fp32_bytes(plain) == fp32


def test_mnist_mlp_pruned_to_90_percent_counts_the_lenet_300_100_weights():
    from slimkit.tasks.context import Context
    from slimkit.tasks import build_task
    from slimkit.techniques.pruning.step import PruneConfig, prune

    task = build_task("mnist-mlp")
    model = prune(task.build_model(), PruneConfig(sparsity=0.9), Context(task=task)).model
    assert is_encoded(model, "sparse")
    weights, biases = 784 * 300 + 300 * 100 + 100 * 10, 300 + 100 + 10
    assert logical_param_count(model) == weights + biases == 266_610
    assert dense_fp32_bytes(model) == 4 * 266_610 == 1_066_440
    expected = round(0.1 * weights) + biases
    assert abs(nonzero_param_count(model) - expected) <= 0.01 * expected


@pytest.mark.parametrize("package, forbidden", [("techniques", "slimkit.backends"),
                                                ("backends", "slimkit.techniques"),
                                                ("measure", "slimkit.techniques")])
def test_layers_ask_the_encoding_not_each_other(package, forbidden):
    offenders = [f"{path.relative_to(SRC)}: {name}" for path in (SRC / package).rglob("*.py")
                 for name in _imports(path) if name == forbidden or name.startswith(forbidden + ".")]
    assert not offenders


def test_encoding_imports_only_core_and_torch():
    allowed = ("slimkit.core", "slimkit.encoding")
    offenders = [f"{path.name}: {name}" for path in (SRC / "encoding").rglob("*.py") for name in _imports(path)
                 if name.startswith("slimkit") and not name.startswith(allowed)
                 or not name.startswith(("slimkit", "torch", "__future__")) and name.split(".")[0] not in _STDLIB]
    assert not offenders


_STDLIB = {"abc", "contextlib", "contextvars", "copy", "math", "typing"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _import_all_techniques() -> list:
    import slimkit.techniques as techniques

    return [importlib.import_module(info.name)
            for info in pkgutil.walk_packages(techniques.__path__, "slimkit.techniques.")]
