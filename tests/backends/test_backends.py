"""Every registered backend: numerics against eager on a CNN (dynamic batch) and on a small BERT
(dynamic batch and sequence), its artifact on disk, and its reason when it cannot run here."""

import pytest
import torch
import torch.nn as nn

from slimkit.backends.base import Compiled
from slimkit.backends.measure import output_difference
from slimkit.core.errors import BackendUnavailableError
from slimkit.core.registry import BACKENDS

NAMES = BACKENDS.names()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net.eval()


def _bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=64)
            self.bert = transformers.BertModel(cfg, add_pooling_layer=False)

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1)

    torch.manual_seed(0)
    return Encoder().eval()


def _tokens(batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2:] = 0  # one padded row
    return ids, mask


def _compile_or_skip(name: str, model: nn.Module, example, tmp_path, precision: str = "fp32") -> Compiled:
    backend = BACKENDS.get(name)
    if backend.int8_only:
        pytest.skip(f"{name} runs static int8 models only (tests/backends/test_tinyml.py)")
    avail = backend.available()
    if not avail:
        with pytest.raises(BackendUnavailableError):
            backend.compile(model, example, precision=precision, threads=1, workdir=tmp_path)
        pytest.skip(f"{name} unavailable here: {avail.reason}")
    return backend.compile(model, example, precision=precision, threads=1, workdir=tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_backend_matches_eager_on_a_cnn_at_several_batch_sizes(name, tmp_path):
    model = _cnn()
    compiled = _compile_or_skip(name, model, (torch.randn(1, 1, 8, 8),), tmp_path)
    for batch in (1, 3, 16):
        x = torch.randn(batch, 1, 8, 8)
        with torch.no_grad():
            ref = model(x)
        _, rel = output_difference(compiled(x), ref)
        assert rel <= 1e-5, f"{name} at batch {batch}: max rel diff {rel:.3g}"
    assert compiled.artifact and all(p.is_file() and p.is_relative_to(tmp_path) for p in compiled.artifact)
    assert compiled.artifact_bytes > 4 * sum(p.numel() for p in model.parameters())  # the weights are in it


@pytest.mark.parametrize("name", NAMES)
def test_backend_matches_eager_on_a_transformer_with_dynamic_batch_and_sequence(name, tmp_path):
    model = _bert()
    compiled = _compile_or_skip(name, model, _tokens(1, 16), tmp_path)
    for batch, seq in ((1, 16), (3, 9)):
        inputs = _tokens(batch, seq)
        with torch.no_grad():
            ref = model(*inputs)
        _, rel = output_difference(compiled(*inputs), ref)
        assert rel <= 1e-4, f"{name} at {batch}x{seq}: max rel diff {rel:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_bf16_where_offered_is_close_but_not_identical(name, tmp_path):
    backend = BACKENDS.get(name)
    if not backend.available() or "bf16" not in backend.precisions("cpu"):
        pytest.skip(f"{name} offers no bf16 here")
    model = _cnn()
    x = torch.randn(16, 1, 8, 8)
    compiled = _compile_or_skip(name, model, (x[:1],), tmp_path, precision="bf16")
    with torch.no_grad():
        _, rel = output_difference(compiled(x), model(x))
    assert 0 < rel < 5e-2  # bf16 really ran (not fp32) and is still close


def test_unsupported_precision_is_a_clear_error(tmp_path):
    with pytest.raises(BackendUnavailableError, match="cannot run precision 'fp16'.*can: fp32"):
        BACKENDS.get("onnxruntime").compile(_cnn(), (torch.randn(1, 1, 8, 8),), precision="fp16", workdir=tmp_path)


def test_unavailable_backends_say_why():
    for name in NAMES:
        avail = BACKENDS.get(name).available()
        assert avail or len(avail.reason) > 20, name
    if not torch.cuda.is_available():
        assert "CUDA" in BACKENDS.get("tensorrt").available().reason
    assert "torch_xla" in BACKENDS.get("xla").available().reason


def test_openvino_fp32_is_asked_for_explicitly(tmp_path):
    if not BACKENDS.get("openvino").available():
        pytest.skip("openvino not installed")
    compiled = BACKENDS.get("openvino").compile(_cnn(), (torch.randn(1, 1, 8, 8),), precision="fp32", workdir=tmp_path)
    assert "float32" in compiled.info["inference_precision"] or "f32" in compiled.info["inference_precision"]
    bin_bytes = (tmp_path / "model.bin").stat().st_size
    conv_linear = sum(p.numel() for m in _cnn().modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())
    assert bin_bytes >= 4 * conv_linear  # weights kept in fp32, not compressed to fp16 (OpenVINO folds the BN)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_cuda_precisions_are_close_to_cpu_fp32(name, precision, tmp_path):
    backend = BACKENDS.get(name)
    if not backend.available() or precision not in backend.precisions("cuda"):
        pytest.skip(f"{name} offers no {precision} on CUDA here")
    model = _cnn()
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
    compiled = backend.compile(model, (x[:1],), precision=precision, threads=1, workdir=tmp_path, device="cuda")
    _, rel = output_difference(torch.as_tensor(compiled(x)).float().cpu(), ref)
    # fp32 on CUDA may use TF32 convolutions (10-bit mantissa, like fp16); bf16 has 7 bits.
    assert rel < {"fp32": 5e-3, "fp16": 5e-3, "bf16": 5e-2}[precision], f"{name} {precision}: {rel:.3g}"
    if precision != "fp32":
        assert rel > 0  # the half precision really ran
