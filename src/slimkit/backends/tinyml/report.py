"""Will it fit? Flash and SRAM of a generated model against named microcontroller classes.

Flash is the ARM cross-compiled object's ``text + data`` where ``arm-none-eabi-gcc`` is installed
(code and constants, measured), else the constant arrays alone (the code not counted, and said).
SRAM is the arena plus the caller's input and output buffers; the kernels' stack frames (a few
dozen bytes of locals, no recursion) are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimkit.backends.tinyml.build import ArmSize
from slimkit.backends.tinyml.graph import IntGraph
from slimkit.backends.tinyml.planner import MemoryPlan

KB = 1024


@dataclass(frozen=True)
class Target:
    name: str
    sram: int
    flash: int
    example: str


TARGETS = {t.name: t for t in (
    Target("cortex-m7-320k", 320 * KB, 1024 * KB, "STM32F746 class (MCUNet's board)"),
    Target("cortex-m4-256k", 256 * KB, 1024 * KB, "STM32F412 class"),
    Target("cortex-m4-64k", 64 * KB, 256 * KB, "nRF52832 class"),
    Target("cortex-m0-32k", 32 * KB, 128 * KB, "STM32G0 class"),
)}


@dataclass
class Footprint:
    flash: int
    flash_measured: bool  # ARM object size (code + constants) rather than constants alone
    sram: int
    arena: int
    io: int
    macs: int

    def fit(self, target: Target) -> dict:
        """{"target", "fits", "sram_over", "flash_over", "why"} for one target."""
        sram_over, flash_over = self.sram - target.sram, self.flash - target.flash
        why = []
        if sram_over > 0:
            why.append(f"SRAM over by {sram_over:,} B (arena {self.arena:,} + input/output {self.io:,} "
                       f"> {target.sram:,})")
        if flash_over > 0:
            what = "code and constants" if self.flash_measured else "constants alone"
            why.append(f"flash over by {flash_over:,} B ({what} {self.flash:,} > {target.flash:,})")
        return {"target": target.name, "fits": not why, "sram_over": max(0, sram_over),
                "flash_over": max(0, flash_over), "why": "; ".join(why) or "fits"}

    def to_dict(self) -> dict:
        return {"flash_bytes": self.flash, "flash_measured": self.flash_measured, "sram_bytes": self.sram,
                "arena_bytes": self.arena, "io_bytes": self.io, "macs": self.macs,
                "fit": [self.fit(t) for t in TARGETS.values()]}


def footprint(graph: IntGraph, plan: MemoryPlan, arm: ArmSize | str | None = None) -> Footprint:
    io = graph.input_tensor.nbytes + graph.output_tensor.nbytes
    measured = isinstance(arm, ArmSize)
    flash = arm.flash if measured else graph.const_bytes()
    return Footprint(flash, measured, plan.peak + io, plan.peak, io, graph.macs())

