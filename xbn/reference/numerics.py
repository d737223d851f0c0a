"""Rounding error of BatchNorm's arithmetic, for the reference (ground floor, no framework).

Two kinds of numbers live here (the README's "Tolerances and verdicts" and "Explanations"
sections derive them):

- term magnitudes: next to a value the reference computes, the sum of the absolute values of
  the terms that produced it, per element (``largest`` of them is what a row records). Any
  operation order rounds such a sum with an error of a few unit roundoffs times that
  magnitude, also when the terms cancel to an exact zero, so it is the scale a tolerance needs.
- forward error bounds of the batch statistics computed in a given arithmetic, in any
  summation order: ``mean_error_bound`` and ``variance_error_bound`` for the two-pass and the
  one-pass (E[x^2] - E[x]^2) variance. With u the unit roundoff, a sum of n terms in any order
  errs by at most gamma(n - 1) * sum|terms|, gamma(k) = k u / (1 - k u) (Higham, Accuracy and
  Stability of Numerical Algorithms, 2nd ed., sec. 3.1 and 4.2).
"""

from __future__ import annotations

import numpy as np

from ..common.dtypes import EPS


def unit_roundoff(dtype: str) -> float:
    """u: half the gap between 1 and the next representable number."""
    return EPS[dtype] / 2


def gamma(k: int, u: float) -> float:
    """gamma(k) = k u / (1 - k u): the relative error bound of k successive roundings."""
    ku = k * u
    return ku / (1.0 - ku) if ku < 1 else float("inf")


def channels_last_2d(x: np.ndarray, axis: int) -> tuple[np.ndarray, tuple]:
    """x as a [values per channel, channels] matrix, and the shape to ``restore`` it from."""
    moved = x if axis in (-1, x.ndim - 1) else np.moveaxis(x, axis, -1)
    return moved.reshape(-1, moved.shape[-1]), moved.shape


def restore(y2: np.ndarray, moved_shape: tuple, axis: int) -> np.ndarray:
    y = y2.reshape(moved_shape)
    return y if axis in (-1, len(moved_shape) - 1) else np.moveaxis(y, -1, axis)


def moments(x2: np.ndarray, ft, algorithm: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance in arithmetic ``ft``: the mean of squared
    deviations ("two_pass") or E[x^2] - E[x]^2 ("fast", "fast_clamped"; the caller clamps)."""
    count = ft(x2.shape[0])
    with np.errstate(invalid="ignore"):  # no rows: 0/0, the NaN statistics of an empty batch
        mean = (x2.sum(axis=0, dtype=ft) / count).astype(ft)
        if algorithm == "two_pass":
            dev = (x2 - mean).astype(ft)
            return mean, ((dev * dev).sum(axis=0, dtype=ft) / count).astype(ft)
        return mean, ((x2 * x2).sum(axis=0, dtype=ft) / count - mean * mean).astype(ft)


def column_mean(a: np.ndarray) -> np.ndarray:
    """``a.mean(axis=0)``, NaN per column for no rows without numpy's "Mean of empty slice"
    warning (a batch of no rows is a scenario, not an accident)."""
    a = np.asarray(a)
    return a.mean(axis=0) if a.shape[0] else np.full(a.shape[1:], np.nan)


def mean_error_bound(x2: np.ndarray, u: float) -> np.ndarray:
    """d: how far a computed per-channel mean sum(x)/n can be from the exact one,
    gamma(n) * mean|x| (n - 1 additions, one division)."""
    x = np.asarray(x2, np.float64)
    return gamma(x.shape[0], u) * column_mean(np.abs(x))


def variance_error_bound(x2: np.ndarray, algorithm: str, u: float) -> np.ndarray:
    """B: how far a computed per-channel biased variance can be from the exact one.

    two-pass, mean((x - m)^2) with the computed mean m = mu + e, |e| <= d: each term is
    rounded three times and the sum of n of them n - 1 more, so it errs by gamma(n + 3) *
    mean((x - m)^2) = gamma(n + 3) * (var + e^2), plus e^2 itself:
    B = gamma(n + 3) (var + d^2) + d^2.
    one-pass, E[x^2] - m^2: E[x^2] errs by gamma(n + 1) mean(x^2); m^2 by 2|mu| d + d^2 and its
    own rounding u (|mu| + d)^2; the subtraction adds u times its operands:
    B = gamma(n + 2) mean(x^2) + 2|mu| d + d^2 + 2u(1 + u)(|mu| + d)^2. With a mean large
    against the spread, mean(x^2) ~ mu^2 and B dwarfs the variance: cancellation.
    """
    x = np.asarray(x2, np.float64)
    n = x.shape[0]
    mu = column_mean(x)
    d = mean_error_bound(x, u)
    if algorithm == "two_pass":
        var = column_mean(np.square(x - mu))
        return gamma(n + 3, u) * (var + d * d) + d * d
    big = np.abs(mu) + d
    return (gamma(n + 2, u) * column_mean(np.square(x)) + 2 * np.abs(mu) * d + d * d
            + 2 * u * (1 + u) * big * big)


def largest(magnitudes) -> float | None:
    """The largest finite magnitude (None when there is none: no floor is known)."""
    a = np.asarray(magnitudes, np.float64)
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else None


def output_magnitude(centered: np.ndarray, inv: np.ndarray, gamma_, beta) -> np.ndarray:
    """|x_hat * gamma| + |beta| per element, x_hat = (x - mean) * inv."""
    g = 1.0 if gamma_ is None else np.abs(np.asarray(gamma_, np.float64))
    b = 0.0 if beta is None else np.abs(np.asarray(beta, np.float64))
    return np.abs(centered * inv) * g + b


def gradient_magnitudes(dy2: np.ndarray, gamma_, centered: np.ndarray, deviation: np.ndarray,
                        inv: np.ndarray, weight: float) -> dict[str, np.ndarray]:
    """The terms of the reference's backward pass, in absolute value (see
    ``ReferenceBatchNorm.backward``): with dxhat = dy * gamma and a the weight of the batch
    statistics, grad_input = inv dxhat - a inv mean(dxhat) - a inv^3 dev mean(dxhat centered),
    grad_gamma = sum(dy centered inv), grad_beta = sum(dy)."""
    g = 1.0 if gamma_ is None else np.abs(np.asarray(gamma_, np.float64))
    dxhat = np.abs(dy2) * g
    grad_input = inv * dxhat
    if weight:
        grad_input = grad_input + weight * inv * column_mean(dxhat) \
            + weight * inv**3 * np.abs(deviation) * column_mean(dxhat * np.abs(centered))
    return {"grad_input": grad_input, "grad_gamma": (np.abs(dy2 * centered) * inv).sum(axis=0),
            "grad_beta": np.abs(dy2).sum(axis=0)}


def ema(old: np.ndarray, new: np.ndarray, m: float, ft, form: str) -> np.ndarray:
    """One update of a running statistic in arithmetic ``ft``, in the order ``form`` names
    (the reference's ``update_form``)."""
    keep = ft(m)  # rounded from float64, as Python floats are; and 1 - m likewise, except
    # weighted_sum_stored: m held in ft (a float attribute), 1 - m taken from that value
    take = ft(1.0 - np.float64(keep)) if form == "weighted_sum_stored" else ft(1.0 - m)
    if form == "decrement":
        return (old - ((old - new).astype(ft) * take).astype(ft)).astype(ft)
    if form == "fma":  # a float32 product is exact in float64
        kept = (old * keep).astype(ft).astype(np.float64)
        return (np.float64(take) * new.astype(np.float64) + kept).astype(ft)
    return ((old * keep).astype(ft) + (new * take).astype(ft)).astype(ft)


def normalize(x2: np.ndarray, mean: np.ndarray, var: np.ndarray, epsilon: float, gamma_, beta,
              ft, form: str) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * gamma + beta in arithmetic ``ft``, in the operation order
    ``form`` names (the reference's ``inference_form``; float64 is always "centered")."""
    one = ft(1)
    inv = (one / np.sqrt((var + ft(epsilon)).astype(ft))).astype(ft)
    if gamma_ is not None:
        inv = (inv * gamma_).astype(ft)
    beta = beta if beta is not None else np.zeros_like(inv)
    form = form if ft is np.float32 else "centered"
    if form == "centered":
        return ((x2 - mean).astype(ft) * inv + beta).astype(ft)
    if form == "folded":
        shift = (beta - (mean * inv).astype(ft)).astype(ft)
        return ((x2 * inv).astype(ft) + shift).astype(ft)
    # folded_fma: fma(x, inv, fma(-mean, inv, beta)); a float32 product is exact in float64
    f64 = np.float64
    shift = (-mean.astype(f64) * inv.astype(f64) + beta.astype(f64)).astype(ft)
    return (x2.astype(f64) * inv.astype(f64) + shift.astype(f64)).astype(ft)


def step_magnitudes(forward: tuple | None, backward: np.ndarray | None) -> dict[str, float | None]:
    """The largest term magnitude of each value of a forward pass (``forward``: its cache,
    gamma and beta) and of the backward pass that followed it (``backward``: the output
    weights dy, channels last)."""
    if forward is None:
        return {}
    cache, gamma_, beta = forward
    centered, inv = cache["centered"], cache["inv"]
    out = {"output": largest(output_magnitude(centered, inv, gamma_, beta))}
    if backward is not None:
        grads = gradient_magnitudes(backward, gamma_, centered, cache["deviation"], inv,
                                    cache["weight"])
        out.update({q: largest(m) for q, m in grads.items()})
    return out


def average_magnitude(terms: tuple, batch: np.ndarray, momentum: float | None, ema: str,
                      t: int) -> tuple[np.ndarray, np.ndarray]:
    """The term magnitudes (hidden, moving) of a running mean after its t-th update with a
    batch whose mean's terms have magnitude ``batch`` (mean|x|): the update's own weights,
    all positive, applied to magnitudes (``ReferenceBatchNorm._update``)."""
    hidden, moving = terms
    if momentum is None:  # cumulative average
        moving = (1 - 1 / t) * moving + batch / t
        return moving, moving
    hidden = batch if ema == "seeded" and t == 1 else momentum * hidden + (1 - momentum) * batch
    debias = 1 - momentum**t if ema == "debiased" else 1.0
    return hidden, hidden / debias if debias > 0 else hidden
