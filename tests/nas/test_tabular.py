"""The NAS-Bench-201 table of the analog-nasbench wheel, read without running pickled code."""

from __future__ import annotations

import os
import pickle
from importlib import metadata

import pytest

from slimkit.core.errors import CheckpointError, SlimkitError
from slimkit.nas.tabular import NasBench201, load_nasbench201, load_records


def _installed() -> bool:
    try:
        metadata.distribution("analog-nasbench")
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _installed(), reason="the analog-nasbench wheel is not installed")
def test_the_table_holds_every_cell_and_the_uniform_cells_name_the_operations():
    table = load_nasbench201()
    assert len(table.records) == 5 ** 6
    assert table.accuracy((1,) * 6) == 10.0  # 'none' everywhere: no path, chance on CIFAR-10
    conv3, conv1, skip, pool = (table.accuracy((c,) * 6) for c in (2, 3, 0, 4))
    assert conv3 > conv1 > skip > pool > 10.0  # the order that gives the inferred names
    assert 93.5 < table.best < 95 and table.rank(table.best) == 1 / 5 ** 6
    assert table.describe((2, 2, 3, 0, 1, 4)) == ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|"
                                                   "none~1|avg_pool_3x3~2|")
    with pytest.raises(SlimkitError, match="no cell"):
        table.accuracy((5,) * 6)
    with pytest.raises(SlimkitError, match="unknown metric"):
        load_nasbench201("top5")


class _Hostile:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_hostile_or_malformed_table_is_refused_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="refusing the global"):
        load_records(pickle.dumps({(0,) * 6: _Hostile()}), "evil.anb")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(CheckpointError, match="not a NAS-Bench table"):
        load_records(b"\x80\x04junk", "junk.anb")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_records(pickle.dumps([1, 2]), "list.anb")
    with pytest.raises(CheckpointError, match="malformed cell"):
        load_records(pickle.dumps({(9,) * 6: None}), "bad.anb")


def test_records_become_plain_metrics():
    cls = type("Architecture", (), {})
    cls.__module__, cls.__qualname__ = "analognasbench.data", "Architecture"
    import sys
    import types

    module = types.ModuleType("analognasbench.data")
    module.Architecture = cls
    saved = {k: sys.modules.get(k) for k in ("analognasbench", "analognasbench.data")}
    sys.modules.update({"analognasbench": types.ModuleType("analognasbench"), "analognasbench.data": module})
    try:
        rec = cls()
        rec.__dict__.update(baseline_accuracy=90.0, ptq_accuracy=89.0, qat_accuracy=88.0, noisy_accuracy=50.0,
                            analog_accuracy=80.0, extra="ignored")
        data = pickle.dumps({(0, 1, 2, 3, 4, 0): rec})
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    table = NasBench201(load_records(data))
    assert table.accuracy([0, 1, 2, 3, 4, 0]) == 90.0 and table.records[(0, 1, 2, 3, 4, 0)]["qat_accuracy"] == 88.0
