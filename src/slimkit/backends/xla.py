"""XLA through ``torch_xla``: listed so that ``slimkit ls`` and ``slimkit backends`` say why it
cannot run, not silently missing.

torch_xla is built against one torch release. The newest on PyPI, torch_xla 2.9.0 (checked
2026-11-28), installs without pulling torch but fails to import with torch 2.13:
``_XLAC...so: undefined symbol: _ZN5torch8autograd10deleteNodeEPNS0_4NodeE`` (a C++ ABI
mismatch), and PyTorch's own ``torch.compile`` has no XLA backend without it. So this backend
reports itself unavailable with the import error of the machine it runs on, and has no compile
path: none could be tested.
"""

from __future__ import annotations

import torch

from slimkit.backends.base import Availability, Backend
from slimkit.core.registry import BACKENDS


@BACKENDS.register("xla", summary="XLA via torch_xla: no release works with this torch (see docs)")
class XlaBackend(Backend):
    name = "xla"

    @classmethod
    def available(cls) -> Availability:
        try:
            import torch_xla
        except Exception as err:  # noqa: BLE001 - an ABI mismatch raises ImportError or OSError
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            return Availability(False, f"torch_xla does not import with torch {torch.__version__} ({first}); "
                                       "torch_xla releases are built for one torch version and none matches")
        return Availability(False, f"torch_xla {getattr(torch_xla, '__version__', '?')} imports, but slimkit has "
                                   "no XLA runtime path yet: no torch_xla release was usable to test one")

    @classmethod
    def precisions(cls, device: str = "cpu") -> tuple[str, ...]:
        return ()
