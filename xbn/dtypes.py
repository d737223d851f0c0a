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
