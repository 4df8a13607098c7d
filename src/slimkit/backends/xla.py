"""XLA through ``torch_xla``: listed so that ``slimkit ls`` and ``slimkit backends`` say why it
cannot run, not silently missing.

torch_xla is built against one torch release; the newest on PyPI (2.9) fails to import with
torch 2.13 (an undefined C++ symbol, measured 2026-11), and PyTorch's own ``torch.compile``
has no XLA backend without it. The reason shown is the import error of this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from slimkit.backends.base import Availability, Compiled
from slimkit.core.errors import BackendUnavailableError
from slimkit.core.registry import BACKENDS


@BACKENDS.register("xla", summary="XLA via torch_xla: no release works with this torch (see docs)")
class XlaBackend:
    name = "xla"

    @staticmethod
    def available() -> Availability:
        try:
            import torch_xla
        except Exception as err:  # noqa: BLE001 - an ABI mismatch raises ImportError or OSError
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            return Availability(False, f"torch_xla does not import with torch {torch.__version__} ({first}); "
                                       "torch_xla releases are built for one torch version and none matches")
        return Availability(False, f"torch_xla {getattr(torch_xla, '__version__', '?')} imports, but slimkit has "
                                   "no XLA runtime path yet: no torch_xla release was usable to test one")

    @staticmethod
    def precisions(device: str = "cpu") -> tuple[str, ...]:
        return ()

    @classmethod
    def compile(cls, model: nn.Module, example_inputs: Sequence[torch.Tensor], *, precision: str = "fp32",
                threads: int | None = None, workdir: Path, device: str = "cpu") -> Compiled:
        raise BackendUnavailableError(f"backend 'xla' is not available: {cls.available().reason}")
