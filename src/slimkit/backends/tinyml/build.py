"""Compile and run the generated C: the host harness (gcc), a shared library for the deploy
backend, the no-floating-point check, and an ARM Cortex-M cross-compile for code size.

Compilers are found on PATH (``CC`` overrides ``gcc``); what is missing is reported as the
reason a check did not run, never as a pass.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimkit.backends.tinyml.codegen import KERNELS
from slimkit.backends.tinyml.graph import IntGraph
from slimkit.core.errors import BackendUnavailableError

C_FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
ARM_CC = "arm-none-eabi-gcc"
# Cortex-M4 without its FPU: any floating point would need the soft-float library calls checked below
ARM_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft", "-Os", "-ffunction-sections", "-fdata-sections"]


def host_compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "gcc"))


def _run(cmd: list[str], cwd: Path, stdin: bytes | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}) in {cwd}:\n{err}")
    return proc


def _cc() -> str:
    cc = host_compiler()
    if cc is None:
        raise BackendUnavailableError("tinyml: no C compiler on PATH (gcc, or set CC); apt install gcc")
    return cc


@functools.cache
def sanitizers_available() -> bool:
    """Whether the host compiler links programs with AddressSanitizer and UBSan (libasan, libubsan)."""
    import tempfile

    if host_compiler() is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "t.c").write_text("int main(void) { return 0; }\n")
        proc = subprocess.run([_cc(), "-fsanitize=address,undefined", "-o", "t", "t.c"], cwd=tmp, capture_output=True)
        return proc.returncode == 0 and subprocess.run([str(Path(tmp) / "t")], capture_output=True).returncode == 0


def compile_harness(folder: Path, name: str, *, sanitize: bool = False, guard_bytes: int = 4096) -> Path:
    """The host harness executable (``harness.c`` + the model), with ``guard_bytes`` of arena
    beyond the plan so that the high-water measurement sees a plan overrun; ``sanitize``:
    AddressSanitizer and UndefinedBehaviorSanitizer (signed overflow, misaligned or
    out-of-bounds accesses abort the run)."""
    if sanitize and not sanitizers_available():
        raise BackendUnavailableError("tinyml: the host compiler cannot build with -fsanitize=address,undefined "
                                      "(Debian: the gcc package's libasan and libubsan)")
    exe = folder / ("harness-san" if sanitize else "harness")
    flags = C_FLAGS + [f"-DSLIMKIT_ARENA_EXTRA={guard_bytes}"]
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-O1"]
    _run([_cc(), *flags, "-o", exe.name, "harness.c", f"{name}.c"], folder)
    return exe


@dataclass
class HarnessRun:
    outputs: np.ndarray
    high_water: int | None  # arena bytes the runs changed (with --high-water)


def run_harness(exe: Path, graph: IntGraph, codes: np.ndarray, *, high_water: bool = False) -> HarnessRun:
    """Stream int8 input rows through the compiled harness; its output rows (and high water)."""
    rows = np.ascontiguousarray(np.asarray(codes, dtype=np.int8).reshape(len(codes), -1))
    proc = _run([str(exe), *(["--high-water"] if high_water else [])], exe.parent, stdin=rows.tobytes())
    dtype = np.int32 if graph.output_tensor.dtype == "int32" else np.int8
    out = np.frombuffer(proc.stdout, dtype=dtype).reshape(len(rows), *graph.output_tensor.shape)
    mark = None
    if high_water:
        line = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("high_water")][-1]
        mark = int(line.split()[1])
    return HarnessRun(out, mark)


def check_no_float(folder: Path, name: str) -> str:
    """Compile the model with the host's general-purpose registers only (x86 gcc's
    ``-mgeneral-regs-only``: any float or vector-float operation is a compile error); ``""`` when
    it compiles, else the reason the check could not run."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the check needs x86-64 gcc's -mgeneral-regs-only (this is {platform.machine()})"
    _run([_cc(), *C_FLAGS, "-mgeneral-regs-only", "-c", "-o", f"{name}.nofloat.o", f"{name}.c"], folder)
    (folder / f"{name}.nofloat.o").unlink()
    return ""


def compile_shared(folder: Path, name: str) -> Path:
    lib = folder / f"lib{name}.so"
    _run([_cc(), *C_FLAGS, "-shared", "-fPIC", "-o", lib.name, f"{name}.c"], folder)
    return lib


class SharedModel:
    """The compiled model in this process (ctypes): ``run(codes)`` calls ``<name>_invoke`` once per row."""

    def __init__(self, lib: Path, graph: IntGraph, name: str) -> None:
        self._lib = ctypes.CDLL(str(lib))
        self._invoke = getattr(self._lib, f"{name}_invoke")
        self._invoke.restype = None
        self._invoke.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.graph = graph
        self._dtype = np.int32 if graph.output_tensor.dtype == "int32" else np.int8

    def run(self, codes: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(np.asarray(codes, dtype=np.int8).reshape(len(codes), -1))
        out = np.empty((len(rows), self.graph.output_tensor.numel), dtype=self._dtype)
        for i in range(len(rows)):
            self._invoke(rows[i].ctypes.data, out[i].ctypes.data)
        return out.reshape(len(rows), *self.graph.output_tensor.shape)


@dataclass
class ArmSize:
    text: int  # code + const data (flash)
    data: int  # initialised RAM (also stored in flash)
    bss: int  # zeroed RAM: the arena
    float_calls: list[str]  # soft-float library routines the object calls (should be none)
    compiler: str

    @property
    def flash(self) -> int:
        return self.text + self.data

    @property
    def ram(self) -> int:
        return self.data + self.bss


def arm_cross_compile(folder: Path, name: str) -> ArmSize | str:
    """``arm-none-eabi-gcc`` for a Cortex-M4 (soft float ABI, -Os) and ``size`` of the object;
    the reason instead where the cross compiler is not installed."""
    cc = shutil.which(ARM_CC)
    size = shutil.which("arm-none-eabi-size")
    nm = shutil.which("arm-none-eabi-nm")
    if cc is None or size is None or nm is None:
        return "arm-none-eabi-gcc is not installed (Debian: apt install gcc-arm-none-eabi)"
    obj = f"{name}.arm.o"
    _run([cc, *ARM_FLAGS, "-std=c99", "-Wall", "-Wextra", "-Werror", "-c", "-o", obj, f"{name}.c"], folder)
    fields = _run([size, obj], folder).stdout.decode().splitlines()[1].split()
    undefined = _run([nm, "-u", obj], folder).stdout.decode().split()
    floats = sorted({s for s in undefined if s.startswith(("__aeabi_f", "__aeabi_d", "__aeabi_i2f", "__aeabi_i2d"))
                     or s in ("__addsf3", "__mulsf3", "__adddf3", "__muldf3")})
    version = _run([cc, "--version"], folder).stdout.decode().splitlines()[0]
    return ArmSize(int(fields[0]), int(fields[1]), int(fields[2]), floats, version)


def source_files(folder: Path, name: str) -> list[Path]:
    """The files that ship: the model's header and source and the kernels."""
    return [folder / f"{name}.h", folder / f"{name}.c", folder / KERNELS]
