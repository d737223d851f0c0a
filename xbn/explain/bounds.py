"""Rounding-error bounds as explanations, for what no rerun reproduces to the last bit.

A framework that computes an ill-conditioned batch variance (E[x^2] - E[x]^2 on inputs with a
large mean) in its own summation order cannot be matched by a bit-exact rerun; it can be shown
to be within what that formula's rounding can produce. The reference runs in float64 with every
batch mean moved by -d or +d and every batch variance by -B or +B (``Semantics.mean_error``,
``Semantics.variance_error``; d and B from ``xbn.reference.numerics``, in the framework's arithmetic, for
the variance formula the candidate names). Outputs and running statistics are monotone in each
batch mean and each batch variance, so on those rows the framework's value must lie between the
four corner runs (within the verdict's tolerance; anywhere, or NaN, where a corner is NaN:
var - B + eps < 0). Other rows (gradients, losses) must agree with the centre run as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common.dtypes import EPS
from ..comparison.diffs import agreement, less_precise, tolerance_scale
from ..scenario.observation import OK

# quantities monotone in every batch mean and batch variance (for fixed inputs)
MONOTONE = ("output", "moving_mean", "moving_variance")
CORNERS = ((-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0))  # (mean_error, variance_error)
# variance formulas to try, the plain rounding bound first; the profile's formula goes first
# among the one-pass ones
ALGORITHMS = ("two_pass", "fast", "fast_clamped")


@dataclass(frozen=True)
class Within:
    """A row inside its interval: ``observed`` = max|value - centre|, ``bound`` = max|corner -
    centre| over the row (inf where a corner is NaN)."""

    observed: float
    bound: float


def corner_changes(change: dict) -> list[dict]:
    return [{**change, "mean_error": m, "variance_error": v} for m, v in CORNERS]


def within(observed, centre: dict | None, corners: list[dict | None], k: float):
    """``Within`` when observation ``observed`` lies in the interval of the corner runs' values
    (``centre`` and ``corners``: the reference's observations of the same row), else None."""
    if centre is None or any(c is None for c in corners):
        return None
    if observed.quantity not in MONOTONE or observed.status != OK or centre["status"] != OK \
            or any(c["status"] != OK or c["value"] is None for c in corners) \
            or observed.value is None or centre["value"] is None:
        a = agreement(observed, centre, k, same_exception=False)
        if not a.agree:
            return None
        return Within(a.max_abs or 0.0, 0.0)
    value = np.asarray(observed.value, np.float64)
    mid = np.asarray(centre["value"], np.float64)
    ends = np.stack([np.asarray(c["value"], np.float64) for c in corners])
    if value.shape != mid.shape or ends.shape[1:] != mid.shape:
        return None
    with np.errstate(all="ignore"):
        open_ = ~np.isfinite(ends).all(axis=0)  # a corner below -eps: no bound on that side
        low = np.where(open_, -np.inf, ends.min(axis=0))
        high = np.where(open_, np.inf, ends.max(axis=0))
        dtype = less_precise(observed.dtype, centre["dtype"])
        tol = k * EPS[dtype] * tolerance_scale(mid, centre.get("scale"))
        inside = ((value >= low - tol) & (value <= high + tol)) | (np.isnan(value) & open_)
        inside &= ~(np.isnan(mid) & ~np.isnan(value))  # the centre's NaN bounds nothing finite
        if not inside.all():
            return None
        gap = np.abs(value - mid)
        observed = float("nan") if np.isnan(gap).any() else float(gap.max()) if gap.size else 0.0
        reach = np.abs(ends - mid).max(axis=0)
        bound = float(np.max(np.where(open_, np.inf, reach))) if reach.size else 0.0
    return Within(observed, bound)


def _number(x: float) -> str:
    return "NaN" if np.isnan(x) else str(x) if np.isinf(x) else f"{x:.3g}"


def bound_text(algorithm: str, arithmetic: str, w: Within) -> str:
    """': within the float32 cancellation bound (observed 13.5, bound 40)' (observed NaN:
    the value is NaN; bound unbounded: a corner's variance is below -eps)."""
    kind = "rounding bound of the two-pass variance" if algorithm == "two_pass" else \
        "cancellation bound"
    bound = "unbounded" if np.isinf(w.bound) else _number(w.bound)
    return f": within the {arithmetic} {kind} (observed {_number(w.observed)}, bound {bound})"
