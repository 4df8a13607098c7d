"""What a ``torch.export`` in progress is for, so that an encoded layer can write itself in the
form its target runtime runs best. Backends set it (``exporting_for``); layers read it."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

_EXPORT_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("slimkit_export_target", default=None)


def export_target() -> str | None:
    """``"onnxruntime"`` (an ONNX file that may use ONNX Runtime's contrib ops), ``"onnx"``
    (standard ONNX, any runtime), ``"openvino"`` (standard ONNX that OpenVINO will read), or None (not exporting, or any other use of the program:
    torch.compile, TVM, OpenVINO's PyTorch frontend).

    A weight-only int4 linear becomes ONNX Runtime's ``MatMulNBits`` contrib op when exported for
    ONNX Runtime and standard ops (which every runtime reads) otherwise; a dynamic int8 linear
    becomes ONNX's ``MatMulInteger`` in either ONNX file."""
    return _EXPORT_TARGET.get() if torch.compiler.is_exporting() else None


@contextlib.contextmanager
def exporting_for(target: str | None) -> Iterator[None]:
    """``export_target()`` answers ``target`` inside the block (while ``torch.export`` traces)."""
    token = _EXPORT_TARGET.set(target)
    try:
        yield
    finally:
        _EXPORT_TARGET.reset(token)
