"""Observations as a tidy DataFrame, diffs against a reference, and verdicts.

Tolerance rule (documented in the README): a value is ``same`` as the reference when every
element is within ``k * eps(dtype) * scale``, where dtype is the less precise of the two
observed dtypes, eps is that dtype's machine epsilon, and k defaults to 16. ``scale`` is the
larger of the reference array's largest magnitude and the magnitude of the terms that produced
it (the reference observation's ``scale``, ``xbn.reference.numerics``: a value whose terms cancel to
zero keeps the rounding error of those terms), 1 when both are 0. The tolerance never grows
with the number of steps, so float32 rounding that accumulates over a long run is reported as
``differs`` and left to the explanation to attribute.

``agreement`` is the one rule for "do these two observations agree" (statuses, exception
types, shapes, dtypes, values within the tolerance): the diff table, the explanation search
(``xbn.explain.search``), the upgrade guard (``xbn.guard.check``) and its explanations use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..common.dtypes import EPS, ulp_distance
from ..scenario.loader import COUNTER, RENORM_QUANTITIES, REPLICA_QUANTITIES, STATE_QUANTITIES
from ..scenario.observation import (  # REP: xbn.report.cells and xbn.report.view import it from here
    ERROR,
    FIELDS,
    NOT_APPLICABLE,
    OK,
    REP,
    STEP,
    Observation,
    with_rep,
)

QUANTITY_ORDER = ("output", "loss", "grad_input", "grad_gamma", "grad_beta", *STATE_QUANTITIES,
                  COUNTER, *REPLICA_QUANTITIES, *RENORM_QUANTITIES)

DEFAULT_K = 16.0
# an observation's fields (``xbn.scenario.observation.Observation``); "scale": the magnitude of
# the terms behind the value (the reference records it; else None)
COLUMNS = list(FIELDS)
DIFF_COLUMNS = ["scenario", "step", "op", "quantity", "framework", "reference", "dtype",
                "max_abs", "max_rel", "max_ulp", "tolerance", "verdict", "explanation", "message"]
# an observation that is an error or n/a has its status as its verdict
VERDICTS = ("same", "differs", ERROR, NOT_APPLICABLE)
# a traced step's observations carry "rep" (0-based repetition); frames get the column only
# when some row has one (``with_rep``), so untraced runs keep their columns (and reports)


def rep_of(obs) -> int | None:
    """The repetition a traced observation records; None for an untraced one (no key, or an
    empty cell of a frame's ``rep`` column)."""
    rep = _field(obs, REP)
    return None if rep is None or pd.isna(rep) else int(rep)


def row_at(obs) -> tuple:
    """Where an observation sits in its scenario's run: (step, quantity), with the repetition
    appended for a traced step. Rows of two runs pair up by it (with scenario, framework)."""
    at = (int(_field(obs, "step")), _field(obs, "quantity"))
    rep = rep_of(obs)
    return at if rep is None else (*at, rep)


def observations_frame(records: list[Observation]) -> pd.DataFrame:
    """The observations as a frame of ``COLUMNS`` (``rep`` too where some row is traced), in one
    order (scenario, step, repetition, ``QUANTITY_ORDER``, framework, stable otherwise), so
    that every table and report built from it lists the rows the same way."""
    traced = any(r.get(REP) is not None for r in records)
    frame = pd.DataFrame.from_records(records, columns=with_rep(COLUMNS) if traced else COLUMNS)
    if frame.empty:
        return frame
    frame["step"] = frame["step"].astype(int)
    if traced:  # None where untraced (never NaN), so that keys compare
        frame[REP] = pd.Series([rep_of(r) for r in records], dtype=object)
    frame["scale"] = pd.Series([_scale(s) for s in frame["scale"]], index=frame.index,
                               dtype=object)  # None where unknown, never NaN
    order = {q: i for i, q in enumerate((STEP, *QUANTITY_ORDER))}
    frame["_q"] = frame["quantity"].map(lambda q: order.get(q, len(order)))
    frame["_r"] = [-1 if r is None else r for r in frame[REP]] if traced else 0
    frame = frame.sort_values(["scenario", "step", "_r", "_q", "framework"], kind="stable",
                              ignore_index=True)
    return frame.drop(columns=["_q", "_r"])


def less_precise(a: str | None, b: str | None) -> str:
    """The dtype of two observed ones with the larger epsilon (float64 when neither is known):
    values are compared at the precision of the coarser side."""
    dtypes = [d for d in (a, b) if d in EPS]
    if not dtypes:
        return "float64"
    return max(dtypes, key=lambda d: EPS[d])


def exception_type(message: str | None) -> str:
    """'ValueError' from an error row's message 'ValueError: ...'."""
    return (message if isinstance(message, str) else "").split(":")[0].strip()


def _scale(value) -> float | None:
    """A recorded term magnitude, or None when there is none (missing, NaN)."""
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def tolerance_scale(ref, terms: float | None = None) -> float:
    """The magnitude the tolerance is relative to: the larger of the reference array's largest
    finite magnitude and ``terms`` (the magnitude of the terms that produced it), 1 when both
    are 0."""
    finite = np.abs(np.asarray(ref, np.float64))
    finite = finite[np.isfinite(finite)]
    scale = max(float(finite.max()) if finite.size else 0.0, _scale(terms) or 0.0)
    return scale if scale > 0 else 1.0


def measure(value, ref, dtype: str, k: float = DEFAULT_K, terms: float | None = None) -> dict:
    """max_abs, max_rel, max_ulp, tolerance and whether all elements are within it.
    ``terms``: the magnitude of the terms behind ``ref`` (``tolerance_scale``)."""
    a = np.asarray(value, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if a.shape != r.shape:
        return {"max_abs": math.nan, "max_rel": math.nan, "max_ulp": math.nan,
                "tolerance": math.nan, "within": False,
                "note": f"shape {list(a.shape)} vs reference {list(r.shape)}"}
    both_nan = np.isnan(a) & np.isnan(r)
    same_inf = np.isinf(a) & (a == r)
    exact = both_nan | same_inf
    diff = np.where(exact, 0.0, np.abs(a - r))
    diff = np.where(np.isnan(diff), np.inf, diff)
    tol = k * EPS[dtype] * tolerance_scale(r, terms)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(r))
    ulps = np.where(exact, 0.0, ulp_distance(np.nan_to_num(a), np.nan_to_num(r), dtype))
    ulps = np.where(np.isnan(a) != np.isnan(r), np.inf, ulps)
    max_abs = float(diff.max()) if diff.size else 0.0
    return {"max_abs": max_abs, "max_rel": float(rel.max()) if rel.size else 0.0,
            "max_ulp": float(ulps.max()) if ulps.size else 0.0, "tolerance": tol,
            "within": bool(np.all(diff <= tol)), "note": None}


def _row_key(frame: pd.DataFrame) -> pd.Series:
    reps = frame[REP] if REP in frame.columns else [None] * len(frame)
    return list(zip(frame["scenario"], frame["step"], frame["quantity"], reps, strict=True))


def diff_table(obs: pd.DataFrame, reference: str = "numpy", k: float = DEFAULT_K) -> pd.DataFrame:
    """One row per (scenario, step, quantity, framework other than the reference)."""
    rows = []
    columns = with_rep(DIFF_COLUMNS) if REP in obs.columns else DIFF_COLUMNS
    if obs.empty:
        return pd.DataFrame(columns=columns)
    keyed = list(zip(_row_key(obs), obs.itertuples(index=False), strict=True))
    refs = {key: row for key, row in keyed if row.framework == reference}
    # another reference is compared at the scale of the float64 reference's terms, if it ran
    terms = {key: row.scale for key, row in keyed if row.framework == "numpy"}
    for key, row in keyed:
        if row.framework == reference:
            continue
        rows.append(_diff_row(row, refs.get(key), reference, k, terms.get(key)))
        if REP in obs.columns:
            rows[-1][REP] = key[3]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    if REP in columns:
        frame[REP] = pd.Series([r.get(REP) for r in rows], dtype=object)
    return frame


def _diff_row(row, ref, reference: str, k: float, terms: float | None = None) -> dict:
    out = {"scenario": row.scenario, "step": int(row.step), "op": row.op, "quantity": row.quantity,
           "framework": row.framework, "reference": reference, "dtype": row.dtype,
           "max_abs": None, "max_rel": None, "max_ulp": None, "tolerance": None,
           "verdict": None, "explanation": None, "message": row.message}
    if row.status in (ERROR, NOT_APPLICABLE):
        out["verdict"] = row.status
        return out
    if ref is None or ref.status != OK:
        why = "no reference value" if ref is None else f"reference {ref.status}: {ref.message}"
        if ref is not None and ref.status == ERROR and row.status == OK:
            out["verdict"] = "differs"
            out["explanation"] = f"{reference} raised, {row.framework} did not"
        else:
            out["verdict"] = NOT_APPLICABLE
        out["message"] = why if row.message is None else f"{row.message}; {why}"
        return out
    a = agreement(row, ref, k, terms=terms)
    out["verdict"] = "same" if a.agree else "differs"
    if a.compared:  # not a set/set_weights step, which has no value
        out.update({"dtype": a.dtype, "max_abs": a.max_abs, "max_rel": a.max_rel,
                    "max_ulp": a.max_ulp, "tolerance": a.tolerance})
    if a.note:
        out["message"] = a.note
    return out


# ----------------------------------------------------------------------------------------
# agreement of two observations: the one rule behind verdicts, explanations and the guard


@dataclass(frozen=True)
class Agreement:
    """Whether two observations agree, why not, and by how much when both hold values.

    ``kind`` (None when they agree): "missing" (one side is absent), "status" (different
    statuses, or two errors of different exception types), "shape", "dtype" (only asked for
    with ``same_dtype``), "value" (some element beyond the tolerance). ``exact``: two values
    equal to the last bit (NaN at the same places, the same infinities). The numbers come from
    ``measure`` in ``dtype``, the less precise of the two dtypes; they are None when no values
    were compared (errors, n/a, a step that records no value).
    """

    agree: bool
    kind: str | None = None
    exact: bool = False
    dtype: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    max_ulp: float | None = None
    tolerance: float | None = None
    note: str | None = None

    @property
    def compared(self) -> bool:
        """Whether two values were measured (the numbers are set)."""
        return self.dtype is not None


def _field(obs, name: str, default=None):
    if isinstance(obs, Mapping):
        return obs.get(name, default)
    return getattr(obs, name, default)


def agreement(obs, ref, k: float = DEFAULT_K, *, same_dtype: bool = False,
              same_exception: bool = True, terms: float | None = None) -> Agreement:
    """Whether observation ``obs`` agrees with ``ref``.

    Observations are dicts or rows (anything with ``status``, ``value``, ``dtype`` and
    ``message``). They agree when their statuses are equal; two errors must also name the
    same exception type (the message's text before the first colon), and two values must have
    the same shape and every element within ``k * eps(dtype) * scale`` (``measure``; NaN
    agrees with NaN at the same place). ``ref``'s magnitude scales the tolerance: pass the
    reference, or the older observation; ``scale`` is the larger of max|ref| and the magnitude
    of the terms behind it, ``terms`` or else ``ref``'s own ``scale`` field (the reference
    records one; ``tolerance_scale``). ``k=0`` asks for bit-identical values;
    ``same_dtype`` also asks for identical dtypes; ``same_exception=False`` lets any error
    agree with any error (for the reference, which models that a framework refuses something
    but not which exception class it picks: flax refuses a call without the training flag
    with ValueError, haiku with TypeError, the reference's ``bare_call="error"`` with TypeError).
    """
    if obs is None or ref is None:
        return Agreement(False, "missing")
    status = _field(obs, "status")
    if status != _field(ref, "status"):
        return Agreement(False, "status")
    if status == ERROR and same_exception and \
            exception_type(_field(obs, "message")) != exception_type(_field(ref, "message")):
        return Agreement(False, "status")
    value, ref_value = _field(obs, "value"), _field(ref, "value")
    if status != OK:
        return Agreement(True)
    if value is None or ref_value is None:  # a set/set_weights step records no value
        if value is None and ref_value is None:
            return Agreement(True, exact=True)
        return Agreement(False, "shape", note="a value on one side only")
    dtype = less_precise(_field(obs, "dtype"), _field(ref, "dtype"))
    with np.errstate(all="ignore"):  # inf - inf and casts of inf are answers here, not news
        m = measure(value, ref_value, dtype, k,
                    terms if terms is not None else _field(ref, "scale"))
    numbers = {"dtype": dtype, "max_abs": m["max_abs"], "max_rel": m["max_rel"],
               "max_ulp": m["max_ulp"], "tolerance": m["tolerance"], "note": m["note"]}
    if m["note"]:
        return Agreement(False, "shape", **numbers)
    if same_dtype and _field(obs, "dtype") != _field(ref, "dtype"):
        return Agreement(False, "dtype", **numbers)
    if not m["within"]:
        return Agreement(False, "value", **numbers)
    return Agreement(True, exact=m["max_abs"] == 0.0, **numbers)
