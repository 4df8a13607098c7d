"""What this machine's CPU can do, read once per call from the OS (no optional packages)."""

from __future__ import annotations


def cpu_flags() -> set[str] | None:
    """This CPU's feature flags (``/proc/cpuinfo``: x86 ``flags``, ARM ``Features``), or None
    where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (x86 AVX512-BF16 or AMX-BF16; ARM BF16). Without
    it PyTorch emulates bf16 through conversions to fp32, slower than fp32 itself, so eager and
    torch_compile offer bf16 on CPU, and training autocasts to it, only where this is true."""
    flags = cpu_flags()
    return bool(flags and flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """What this CPU computes int8 and bf16 dot products with, for every speed table's header:
    e.g. ``int8: AVX512-VNNI; bf16: AVX512-BF16`` or ``int8: none (AVX2 only: u8xs8 pairs in
    int16); bf16: none``."""
    flags = cpu_flags()
    if flags is None:
        return "int8/bf16: unknown (no /proc/cpuinfo)"
    int8 = [name for flag, name in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"),
                                    ("avx_vnni", "AVX-VNNI"), ("asimddp", "ARM dotprod"), ("i8mm", "ARM i8mm"))
            if flag in flags]
    bf16 = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"),
                                    ("bf16", "ARM BF16")) if flag in flags]
    simd = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    no_int8 = f"none ({simd} only: no int8 dot-product instructions)" if simd else "none"
    return f"int8: {', '.join(int8) or no_int8}; bf16: {', '.join(bf16) or 'none'}"
