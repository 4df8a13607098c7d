"""An offline NAS benchmark: the 15,625 NAS-Bench-201 cells with the accuracies that the
``analog-nasbench`` wheel (AnalogNAS-Bench, 2025) ships, so search strategies are compared on
thousands of runs in seconds, without training.

The space (Dong & Yang 2020): a cell of 4 nodes, one operation on each of its 6 edges, 5 choices
each. The wheel keys cells by 6 integers; its operation names are not in the wheel, so the
names below are inferred from the cells with one operation on every edge (all 1: 10.0%, chance,
so 1 cuts every path: ``none``; all 2: 93.2%, the best uniform cell: 3x3 conv; all 3: 89.5%: 1x1
conv; all 4: 50.3%: average pooling; all 0: 60.8%: the skip connection).

Data caveat: these are AnalogNAS-Bench's CIFAR-10 test accuracies of its digital baseline
training (one training per cell, its own schedule; best 94.07%), not NAS-Bench-201's own tables;
searches on them rank strategies, they do not transfer to another data set.

The wheel stores a pickle. slimkit never unpickles untrusted data with the stock loader: the
restricted unpickler here builds only plain records from the two classes the file holds (and
the builtins that pickles of plain objects use) and refuses any other global, so a tampered file
cannot run code. The wheel's own module is not imported (it needs ``pkg_resources``).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from slimkit.core.errors import CheckpointError, SlimkitError

OPERATIONS = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")  # the wheel's codes 0-4
EDGES = ("1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2")  # NAS-Bench-201's edge order (node<-node)
METRICS = ("baseline_accuracy", "ptq_accuracy", "qat_accuracy", "noisy_accuracy", "analog_accuracy")


class _Record:
    """Stands in for the wheel's ``Architecture`` and ``DriftMeasurement``: attributes only."""


class _RestrictedUnpickler(pickle.Unpickler):
    ALLOWED = {("analognasbench.data", "Architecture"), ("analognasbench.data", "DriftMeasurement")}

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self.ALLOWED:
            return _Record
        raise pickle.UnpicklingError(f"refusing the global {module}.{name} (only plain records are expected)")


def table_path() -> Path:
    """Where the installed wheel keeps its table."""
    from importlib import metadata

    try:
        dist = metadata.distribution("analog-nasbench")
    except metadata.PackageNotFoundError:
        raise SlimkitError("the NAS-Bench-201 table needs the 'analog-nasbench' wheel: "
                           "pip install analog-nasbench==0.1.3") from None
    return Path(str(dist.locate_file("analognasbench/data.anb")))


def load_records(data: bytes, source: str = "table") -> dict[tuple[int, ...], dict[str, float]]:
    """{cell: {metric: value}} from the wheel's bytes, through the restricted unpickler."""
    try:
        raw = _RestrictedUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CheckpointError(f"{source}: not a NAS-Bench table ({err})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: expected a dict of cells, got {type(raw).__name__}")
    out = {}
    for cell, rec in raw.items():
        values = getattr(rec, "__dict__", {})
        ok = (isinstance(cell, tuple) and len(cell) == len(EDGES) and all(isinstance(c, int) and 0 <= c < 5
                                                                          for c in cell))
        if not ok or not all(isinstance(values.get(m), (int, float)) for m in METRICS):
            raise CheckpointError(f"{source}: malformed cell {cell!r}")
        out[cell] = {m: float(values[m]) for m in METRICS}
    return out


@dataclass(frozen=True)
class NasBench201:
    """The table: ``accuracy(cell)`` (percent) for a cell of 6 operation codes; ``best``."""

    records: dict[tuple[int, ...], dict[str, float]]
    metric: str = "baseline_accuracy"

    def accuracy(self, cell: tuple[int, ...] | list[int]) -> float:
        try:
            return self.records[tuple(cell)][self.metric]
        except KeyError:
            raise SlimkitError(f"no cell {tuple(cell)} in the table (6 codes in 0-4)") from None

    @property
    def best(self) -> float:
        return max(r[self.metric] for r in self.records.values())

    def rank(self, value: float) -> float:
        """Share of the cells at least as accurate as ``value`` (0: better than every cell)."""
        return sum(r[self.metric] >= value for r in self.records.values()) / len(self.records)

    @staticmethod
    def describe(cell: tuple[int, ...]) -> str:
        """NAS-Bench-201's string form, ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
        ops = [OPERATIONS[c] for c in cell]
        return f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|"


@lru_cache(maxsize=2)
def load_nasbench201(metric: str = "baseline_accuracy") -> NasBench201:
    """The installed wheel's table (read once per process)."""
    if metric not in METRICS:
        raise SlimkitError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    path = table_path()
    return NasBench201(load_records(path.read_bytes(), str(path)), metric)
