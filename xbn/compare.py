"""Observations as a tidy DataFrame, diffs against a reference, verdicts and views.

Tolerance rule (documented in the README): a value is ``same`` as the reference when every
element is within ``k * eps(dtype) * scale``, where dtype is the less precise of the two
observed dtypes, eps is that dtype's machine epsilon, scale is the largest magnitude in the
reference array (1 when it is all zeros), and k defaults to 16. The tolerance never grows with
the number of steps, so float32 rounding that accumulates over a long run is reported as
``differs`` and left to the explanation to attribute.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .dtypes import EPS, ulp_distance
from .scenario import STATE_QUANTITIES

QUANTITY_ORDER = ("output", "loss", "grad_input", "grad_gamma", "grad_beta", *STATE_QUANTITIES)

DEFAULT_K = 16.0
COLUMNS = ["scenario", "step", "op", "framework", "quantity", "status", "value", "dtype", "message"]
DIFF_COLUMNS = ["scenario", "step", "op", "quantity", "framework", "reference", "dtype",
                "max_abs", "max_rel", "max_ulp", "tolerance", "verdict", "explanation", "message"]
VERDICTS = ("same", "differs", "error", "n/a")


def observations_frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    if frame.empty:
        return frame
    frame["step"] = frame["step"].astype(int)
    order = {q: i for i, q in enumerate(("step", *QUANTITY_ORDER))}
    frame["_q"] = frame["quantity"].map(lambda q: order.get(q, len(order)))
    frame = frame.sort_values(["scenario", "step", "_q", "framework"], kind="stable",
                              ignore_index=True)
    return frame.drop(columns="_q")


def _less_precise(a: str | None, b: str | None) -> str:
    dtypes = [d for d in (a, b) if d in EPS]
    if not dtypes:
        return "float64"
    return max(dtypes, key=lambda d: EPS[d])


def measure(value, ref, dtype: str, k: float = DEFAULT_K) -> dict:
    """max_abs, max_rel, max_ulp, tolerance and whether all elements are within it."""
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
    finite_r = np.abs(r[np.isfinite(r)])
    scale = float(finite_r.max()) if finite_r.size and finite_r.max() > 0 else 1.0
    tol = k * EPS[dtype] * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(r))
    ulps = np.where(exact, 0.0, ulp_distance(np.nan_to_num(a), np.nan_to_num(r), dtype))
    ulps = np.where(np.isnan(a) != np.isnan(r), np.inf, ulps)
    max_abs = float(diff.max()) if diff.size else 0.0
    return {"max_abs": max_abs, "max_rel": float(rel.max()) if rel.size else 0.0,
            "max_ulp": float(ulps.max()) if ulps.size else 0.0, "tolerance": tol,
            "within": bool(np.all(diff <= tol)), "note": None}


def _row_key(frame: pd.DataFrame) -> pd.Series:
    return list(zip(frame["scenario"], frame["step"], frame["quantity"], strict=True))


def diff_table(obs: pd.DataFrame, reference: str = "numpy", k: float = DEFAULT_K) -> pd.DataFrame:
    """One row per (scenario, step, quantity, framework other than the reference)."""
    rows = []
    if obs.empty:
        return pd.DataFrame(columns=DIFF_COLUMNS)
    refs = {key: row for key, row in zip(_row_key(obs), obs.itertuples(index=False), strict=True)
            if row.framework == reference}
    for key, row in zip(_row_key(obs), obs.itertuples(index=False), strict=True):
        if row.framework == reference:
            continue
        ref = refs.get(key)
        rows.append(_diff_row(row, ref, reference, k))
    return pd.DataFrame.from_records(rows, columns=DIFF_COLUMNS)


def _diff_row(row, ref, reference: str, k: float) -> dict:
    out = {"scenario": row.scenario, "step": int(row.step), "op": row.op, "quantity": row.quantity,
           "framework": row.framework, "reference": reference, "dtype": row.dtype,
           "max_abs": None, "max_rel": None, "max_ulp": None, "tolerance": None,
           "verdict": None, "explanation": None, "message": row.message}
    if row.status in ("error", "n/a"):
        out["verdict"] = row.status
        return out
    if ref is None or ref.status != "ok":
        why = "no reference value" if ref is None else f"reference {ref.status}: {ref.message}"
        if ref is not None and ref.status == "error" and row.status == "ok":
            out["verdict"] = "differs"
            out["explanation"] = f"{reference} raised, {row.framework} did not"
        else:
            out["verdict"] = "n/a"
        out["message"] = why if row.message is None else f"{row.message}; {why}"
        return out
    if row.quantity == "step":  # a set/set_weights step that both accepted
        out["verdict"] = "same"
        return out
    dtype = _less_precise(row.dtype, ref.dtype)
    m = measure(row.value, ref.value, dtype, k)
    out.update({"dtype": dtype, "max_abs": m["max_abs"], "max_rel": m["max_rel"],
                "max_ulp": m["max_ulp"], "tolerance": m["tolerance"],
                "verdict": "same" if m["within"] else "differs"})
    if m["note"]:
        out["message"] = m["note"]
    return out


def summarize(value, dtype: str | None = None, digits: int = 8) -> str:
    """Short text for a value in tables: all of a small array, the head of a big one."""
    if value is None:
        return ""
    arr = np.asarray(value, dtype=np.float64).ravel()
    def fmt(v):
        return (f"{v:.{digits}g}")
    if arr.size == 1:
        return fmt(arr[0])
    if arr.size <= 3:
        return "[" + ", ".join(fmt(v) for v in arr) + "]"
    return "[" + ", ".join(fmt(v) for v in arr[:2]) + f", … ({arr.size})]"


MARK = {"same": "", "differs": " ✗", "error": "", "n/a": ""}


def side_by_side(obs: pd.DataFrame, diffs: pd.DataFrame, scenario: str,
                 frameworks: list[str] | None = None) -> pd.DataFrame:
    """Values of every framework next to each other for one scenario, with verdict marks."""
    o = obs[obs["scenario"] == scenario]
    d = diffs[diffs["scenario"] == scenario]
    verdict = {(r.step, r.quantity, r.framework): r.verdict for r in d.itertuples(index=False)}
    cols = frameworks or list(dict.fromkeys(o["framework"]))
    table: dict[tuple, dict] = {}
    for r in o.itertuples(index=False):
        if r.quantity == "step" and r.status == "ok":
            continue
        cell = summarize(r.value) if r.status == "ok" else r.status
        cell += MARK.get(verdict.get((r.step, r.quantity, r.framework), ""), "")
        table.setdefault((r.step, r.op, r.quantity), {})[r.framework] = cell
    table = _drop_unchanged_state(table)
    index = pd.MultiIndex.from_tuples(list(table), names=["step", "op", "quantity"])
    frame = pd.DataFrame(list(table.values()), index=index)
    frame = frame.reindex(columns=[c for c in cols if c in frame.columns]).fillna("")
    return frame


def _drop_unchanged_state(table: dict) -> dict:
    """Keep a state row only at step 0 and where some framework's value changed."""
    last: dict[str, dict] = {}
    kept = {}
    for key, cells in table.items():
        quantity = key[2]
        if quantity in STATE_QUANTITIES:
            measured = {f: v for f, v in cells.items() if f != "expected"}
            if last.get(quantity) == measured and "expected" not in cells:
                continue
            last[quantity] = measured
        kept[key] = cells
    return kept
