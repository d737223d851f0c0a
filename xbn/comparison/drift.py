"""How far each framework is from the reference, step by step, or repetition by repetition
when observations carry ``rep``: the data behind the report's drift plots.

A verdict says only "differs"; float32 rounding that accumulates over a thousand updates shows
as a distance growing by orders of magnitude, and a semantic difference as a distance that
jumps at one step. Distances come from ``comparison.agreement``, the rule behind the verdicts,
so a plot and a table never disagree about a value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import pandas as pd

from ..scenario.observation import OK, STEP
from .diffs import DEFAULT_K, agreement

COLUMNS = ["scenario", "x", "step", "rep", "op", "framework", "quantity", "dtype", "status",
           "max_abs", "max_ulp"]


def _rep(obs: Mapping) -> float:
    """The repetition an observation records; a step's own (final) value sorts after them."""
    rep = obs.get("rep")
    return math.inf if rep is None or (isinstance(rep, float) and math.isnan(rep)) else rep


def positions(observations: Iterable[Mapping]) -> dict[tuple, int]:
    """The x position of each (scenario, step, rep): the step itself when no observation of
    the scenario carries ``rep``, else the running count of recorded repetitions."""
    keys: dict[str, set] = {}
    for o in observations:
        keys.setdefault(o["scenario"], set()).add((int(o["step"]), _rep(o)))
    out = {}
    for scenario, ks in keys.items():
        traced = any(rep != math.inf for _, rep in ks)
        for i, (step, rep) in enumerate(sorted(ks)):
            out[(scenario, step, rep)] = i if traced else step
    return out


def drift_table(observations: Iterable[Mapping], reference: str = "numpy",
                k: float = DEFAULT_K) -> pd.DataFrame:
    """One row per observation of a framework other than the reference that has a reference
    counterpart: its x position, status, and max_abs/max_ulp (NaN unless both hold values)."""
    obs = [o for o in observations if o.get("quantity") != STEP]
    refs = {(o["scenario"], int(o["step"]), _rep(o), o["quantity"]): o
            for o in obs if o["framework"] == reference}
    where = positions(obs)
    rows = []
    for o in obs:
        if o["framework"] == reference:
            continue
        key = (o["scenario"], int(o["step"]), _rep(o))
        ref = refs.get((*key, o["quantity"]))
        if ref is None:
            continue
        a = agreement(o, ref, k) if o["status"] == OK and ref["status"] == OK else None
        measured = a is not None and a.compared and a.kind != "shape"
        rows.append({"scenario": o["scenario"], "x": where[key], "step": key[1],
                     "rep": None if key[2] == math.inf else key[2], "op": o["op"],
                     "framework": o["framework"], "quantity": o["quantity"],
                     "dtype": a.dtype if measured else o.get("dtype"), "status": o["status"],
                     "max_abs": a.max_abs if measured else math.nan,
                     "max_ulp": a.max_ulp if measured else math.nan})
    return pd.DataFrame.from_records(rows, columns=COLUMNS)
