"""Views of observations and diffs for the writers: short value texts and the side-by-side
table of one scenario. Pure formatting: nothing here computes a verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..scenario import STATE_QUANTITIES


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
