"""Floating-point formats without a framework: rounding, machine epsilon and ULP distances.

numpy has no bfloat16, and xbn must not need ml_dtypes to validate a scenario, so bfloat16
is handled through its bit pattern: the top 16 bits of a float32.
"""

from __future__ import annotations

import numpy as np

DTYPES = ("float32", "float64", "float16", "bfloat16")

# Unit roundoff * 2 (the gap between 1 and the next representable number).
EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
}

# The largest finite value of each format (bfloat16: 0x7F7F, float32's exponent range with 8 bits).
MAX = {
    "float64": float(np.finfo(np.float64).max),
    "float32": float(np.finfo(np.float32).max),
    "float16": float(np.finfo(np.float16).max),
    "bfloat16": float(np.uint32(0x7F7F0000).view(np.float32)),
}

# 64 bits wide, 32 bits wide, the two 16-bit formats last: ``wider`` picks by this order.
_WIDTH = {"float64": 3, "float32": 2, "float16": 1, "bfloat16": 1}


def wider(a: str, b: str) -> str:
    """The wider of two dtypes (``a`` when both are 16-bit)."""
    return b if _WIDTH[b] > _WIDTH[a] else a


def _round_bfloat16(x: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest bfloat16 (ties to even), returned as float64."""
    f32 = np.asarray(x, dtype=np.float64).astype(np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    nan = np.isnan(f32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    rounded = ((bits + rounding) >> 16) << 16
    out = rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.where(nan, np.nan, out)


def round_to(x, dtype: str) -> np.ndarray:
    """Values of ``x`` rounded to ``dtype`` and held exactly in float64."""
    x = np.asarray(x, dtype=np.float64)
    if dtype == "float64":
        return x.copy()
    if dtype == "bfloat16":
        return _round_bfloat16(x)
    return x.astype(dtype).astype(np.float64)


def overflowing(x, dtype: str) -> np.ndarray:
    """The finite values of ``x`` that ``dtype`` cannot hold: they round to an infinity.

    A value a little above ``MAX[dtype]`` still rounds down to it (round to nearest); only
    what rounds past it is an overflow."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        rounded = round_to(x, dtype)
    return x[np.isfinite(x) & ~np.isfinite(rounded)]


def round_checked(x, dtype: str) -> np.ndarray:
    """``round_to``, or OverflowError("70000 is not representable in float16 (max 65504)")
    when a finite value would round to an infinity (infinities given as such stay)."""
    over = overflowing(x, dtype)
    if over.size:
        raise OverflowError(f"{float(over[0]):.8g} is not representable in {dtype} "
                            f"(max {MAX[dtype]:.8g})")
    with np.errstate(over="ignore"):
        return round_to(x, dtype)


def _ordered_ints(x: np.ndarray, dtype: str) -> np.ndarray:
    """Map floats to int64 whose order and spacing follow the representable values."""
    if dtype == "float64":
        bits = np.asarray(x, np.float64).view(np.int64)
    elif dtype == "float32":
        bits = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    elif dtype == "float16":
        bits = np.asarray(x, np.float16).view(np.int16).astype(np.int64)
    elif dtype == "bfloat16":
        bits = np.asarray(_round_bfloat16(x), np.float32).view(np.int32).astype(np.int64) >> 16
    else:
        raise ValueError(f"unknown dtype {dtype!r}")
    magnitude = bits & np.int64(np.iinfo(np.int64).max)
    if dtype != "float64":
        width = {"float32": 31, "float16": 15, "bfloat16": 15}[dtype]
        magnitude = bits & np.int64((1 << width) - 1)
    return np.where(bits < 0, -magnitude, magnitude)


def ulp_distance(a, b, dtype: str) -> np.ndarray:
    """Number of representable ``dtype`` steps between a and b, after rounding both to it."""
    ia = _ordered_ints(round_to(a, dtype), dtype)
    ib = _ordered_ints(round_to(b, dtype), dtype)
    same_side = (ia >= 0) == (ib >= 0)
    with np.errstate(over="ignore"):
        exact = np.abs(np.where(same_side, ia - ib, 0)).astype(np.float64)
    wide = np.abs(ia.astype(np.float64)) + np.abs(ib.astype(np.float64))
    return np.where(same_side, exact, wide)
