"""The int8 coverage inspection: what OpenVINO's CPU plugin runs on integers, op by op."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from slimkit.backends.openvino_inspect import op_macs

pytest.importorskip("openvino")


def test_op_macs_from_static_shapes():
    assert op_macs("FullyConnected", [(1, 128, 384), (1536, 384)], (1, 128, 1536)) == 128 * 1536 * 384
    # attention scores [.., 128, 32] x [.., 32, 128] and probabilities [.., 128, 128] x [.., 128, 32]
    assert op_macs("MatMul", [(1, 12, 128, 32), (1, 12, 32, 128)], (1, 12, 128, 128)) == 12 * 128 * 128 * 32
    assert op_macs("MatMul", [(1, 12, 128, 128), (1, 12, 128, 32)], (1, 12, 128, 32)) == 12 * 128 * 32 * 128
    assert op_macs("Convolution", [(1, 3, 8, 8), (16, 3, 3, 3)], (1, 16, 8, 8)) == 16 * 64 * 27
    assert op_macs("GroupConvolution", [(1, 16, 8, 8), (16, 1, 1, 3, 3)], (1, 16, 8, 8)) == 16 * 64 * 9
    assert op_macs("FullyConnected", [(-1, 384), (384, 384)], (-1, 384)) == 0  # dynamic: unknown
    assert op_macs("Eltwise", [(4,)], (4,)) == 0


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def irs(tmp_path_factory):
    from slimkit.backends.openvino import save_ir
    from slimkit.techniques.quantization.ptq import quantize_static

    folder = tmp_path_factory.mktemp("irs")
    model, example = _cnn(), (torch.randn(1, 1, 8, 8),)
    q = quantize_static(model, [(torch.randn(16, 1, 8, 8),)])[0]
    return save_ir(model, example, folder / "fp32.xml")[0], save_ir(q, example, folder / "int8.xml")[0]


def test_float_and_int8_models_are_told_apart(irs):
    from slimkit.backends.openvino_inspect import compute_table, coverage_markdown, inspect_ir

    fp32, int8 = (inspect_ir(path, label, shape=[1, 1, 8, 8], profile=3) for path, label in zip(irs, ("fp32", "int8")))
    assert fp32.integer_mac_share() == 0
    assert not fp32.fake_quantize
    convs = [op for op in int8.compute if op.layer_type == "Convolution"]
    assert len(convs) == 2 and all(op.integer for op in convs), [(op.name, op.precision, op.kernel) for op in convs]
    assert convs[1].macs == 8 * 64 * 8 * 9
    assert int8.integer_mac_share() > 0.9
    assert int8.fake_quantize[("Convolution", "activation")] >= 2
    assert all(op.ms is not None for op in int8.compute) and int8.total_ms > 0
    header, rows = compute_table(fp32, int8)
    first = dict(zip(header, rows[0]))  # the rows that differ in integer use come first
    assert first["fp32: precision"] == "f32" and first["int8: precision"] in ("u8", "i8")
    text = coverage_markdown([fp32, int8])
    assert "share of compute MACs on integer kernels" in text and "| Convolution |" in text


def test_cli_prints_both_models_and_names_bad_input(irs, tmp_path):
    from slimkit.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["int8-coverage", *map(str, irs), "--shape", "1,1,8,8", "--profile", "2",
                                 "--markdown"])
    assert result.exit_code == 0, result.output
    assert "fp32" in result.output and "int8" in result.output and "Reorder" in result.output
    missing = runner.invoke(app, ["int8-coverage", str(tmp_path / "nope.xml")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    many = runner.invoke(app, ["int8-coverage", *map(str, irs), str(irs[0])])
    assert many.exit_code == 2 and "one or two" in many.output
    shape = runner.invoke(app, ["int8-coverage", str(irs[0]), "--shape", "a,b"])
    assert shape.exit_code == 2 and "--shape" in shape.output


def test_cli_names_a_corrupt_file_and_a_shape_that_does_not_fit(irs, tmp_path):
    from slimkit.cli import app

    runner = CliRunner()
    corrupt = tmp_path / "corrupt.xml"
    corrupt.write_text("<net>not a model")
    bad = runner.invoke(app, ["int8-coverage", str(corrupt)])
    assert bad.exit_code == 2 and "cannot read" in bad.output and "Traceback" not in bad.output
    rank = runner.invoke(app, ["int8-coverage", str(irs[0]), "--shape", "1,128", "--profile", "0"])
    assert rank.exit_code == 2 and "do not fit" in rank.output, rank.output
