"""Fixed-point requantization, exactly as TensorFlow Lite's reference kernels and CMSIS-NN do it.

A real multiplier ``M`` (input scale x weight scale / output scale) becomes an int32 ``M0`` in
[2^30, 2^31) and a power-of-two ``shift`` with ``M = M0 * 2^(shift - 31)``; an int32 accumulator is
scaled by ``SaturatingRoundingDoublingHighMul`` (ties up) followed by a right shift rounding
ties away from zero. The functions
here are the Python side of the generated C (``kernels.c`` holds the same arithmetic): numpy
int64 arrays, integer operations only, so that the reference and the C agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(M0, shift) with ``real = M0 * 2^(shift - 31)``, M0 in [2^30, 2^31) (TFLite's
    ``QuantizeMultiplier``: frexp, the mantissa rounded half away from zero to 31 bits)."""
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"a requantization multiplier must be finite and >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real)
    m0 = math.floor(mantissa * (1 << 31) + 0.5)
    if m0 == 1 << 31:
        m0 //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return INT32_MAX, 30
    return int(m0), int(shift)


def quantize_multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``quantize_multiplier`` per element: int32 arrays (M0, shift)."""
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(reals, dtype=np.float64).reshape(-1)]
    return (np.array([p[0] for p in pairs], dtype=np.int32), np.array([p[1] for p in pairs], dtype=np.int32))


def saturate_int32(x: np.ndarray) -> np.ndarray:
    return np.clip(x, INT32_MIN, INT32_MAX)


def rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` on int32 values held in int64: the high
    32 bits of ``2ab``, rounded to nearest with ties up (a nudge of 2^30, or 1 - 2^30 below zero,
    then C's truncating division by 2^31)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    ab = a * b
    nudged = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))  # C division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero."""
    x, exponent = np.asarray(x, dtype=np.int64), np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``x * M0 * 2^(shift - 31)`` rounded, for int32 ``x`` (TFLite's
    ``MultiplyByQuantizedMultiplier``); a left shift that would leave int32 saturates."""
    shift = np.asarray(shift, dtype=np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    shifted = saturate_int32(np.asarray(x, dtype=np.int64) * (np.int64(1) << left))
    return rounding_divide_by_pot(rounding_doubling_high_mul(shifted, m0), right)
