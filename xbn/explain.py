"""Explanations: the smallest change to the reference's semantics that reproduces a framework.

For a framework's ``differs`` and ``error`` rows in a scenario, the reference is re-run with
candidate switch settings, smallest change first: one semantic switch; native precision
(float32 arithmetic in a given operation order); the framework's declared profile; two
semantic switches; one semantic switch with native precision. The first setting that
reproduces all of those rows within the verdict's tolerance explains them all; otherwise each
row gets the first setting that reproduces it alone. ``(bit-exact)`` marks a reproduction to
the last bit. A row that nothing reproduces says so: that is a finding.
"""

from __future__ import annotations

import itertools
from functools import cache

import pandas as pd

from .adapters.base import run_scenario
from .adapters.numpy_ref import NumpyAdapter
from .compare import _less_precise, measure
from .profiles import PROFILES, differences
from .reference import NUMERIC_SWITCH_VALUES, SWITCH_VALUES, Semantics
from .scenario import Scenario

UNEXPLAINED = "unexplained: no single switch, pair, native rounding or declared profile reproduces it"
NATIVE = {"precision": "native"}


def _flips(values: dict[str, tuple]) -> list[dict]:
    base = Semantics()
    return [{name: v} for name, options in values.items() for v in options
            if getattr(base, name) != v]


@cache
def _generic() -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    singles = _flips(SWITCH_VALUES)
    native = [NATIVE] + [{**NATIVE, **f} for f in _flips(NUMERIC_SWITCH_VALUES)]
    pairs = [{**a, **b} for a, b in itertools.combinations(singles, 2) if set(a).isdisjoint(b)]
    mixed = [{**s, **n} for s in singles for n in native]
    return singles, native, pairs, mixed


def candidates(framework: str | None = None) -> list[dict]:
    """Switch settings to try, in the order described in the module docstring."""
    singles, native, pairs, mixed = _generic()
    profile = []
    if framework in PROFILES:
        declared = differences(framework)
        profile = [declared] if declared else []
        semantic = {k: v for k, v in declared.items() if k in SWITCH_VALUES}
        if semantic and semantic != declared:
            profile.insert(0, semantic)
    unique = {tuple(sorted(c.items())): c for c in singles + native + profile + pairs + mixed
              if c}  # dicts keep the first insertion's position
    return list(unique.values())


def describe(change: dict, exact: bool = False) -> str:
    text = ", ".join(f"{k}={_fmt(v)}" for k, v in change.items())
    return text + (" (bit-exact)" if exact else "")


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def explain_diffs(diffs: pd.DataFrame, obs: pd.DataFrame, scenarios: list[Scenario],
                  reference: str, k: float) -> pd.DataFrame:
    """Fill the ``explanation`` column of differs/error rows (only against the numpy reference)."""
    if reference != "numpy" or diffs.empty:
        return diffs
    by_name = {s.name: s for s in scenarios}
    values = {(r.scenario, r.step, r.quantity, r.framework): r
              for r in obs.itertuples(index=False)}

    @cache
    def observed(name: str, change_key: tuple) -> dict:
        adapter = NumpyAdapter("numpy", Semantics().with_(**dict(change_key)))
        return {(o["step"], o["quantity"]): o for o in run_scenario(adapter, by_name[name])}

    diffs = diffs.copy()
    todo = diffs[diffs["verdict"].isin(["differs", "error"]) & (diffs["framework"] != "expected")
                 & diffs["explanation"].isna() & diffs["scenario"].isin(list(by_name))]
    for (name, framework), rows in todo.groupby(["scenario", "framework"], sort=False):
        mine = {i: values.get((name, r.step, r.quantity, framework))
                for i, r in zip(rows.index, rows.itertuples(index=False), strict=True)}
        mine = {i: m for i, m in mine.items() if m is not None}
        pending = dict(mine)
        explained: dict[int, str] = {}
        for change in candidates(framework):
            theirs = observed(name, tuple(sorted(change.items())))
            hits = {i: _match(m, theirs.get((m.step, m.quantity)), k) for i, m in pending.items()}
            if len(pending) == len(mine) and all(h is not None for h in hits.values()):
                exact = all(hits.values())
                explained = {i: describe(change, exact) for i in pending}
                break
            for i, h in hits.items():
                if h is not None and i not in explained:
                    explained[i] = describe(change, h)
            pending = {i: m for i, m in mine.items() if i not in explained}
            if not pending:
                break
        for i in mine:
            diffs.at[i, "explanation"] = explained.get(i, UNEXPLAINED)
    return diffs


def _match(mine, cand: dict | None, k: float) -> bool | None:
    """None: not reproduced; False: reproduced within tolerance; True: bit for bit."""
    if cand is None:
        return None
    if mine.status == "error":
        return False if cand["status"] == "error" else None
    if mine.status != "ok" or cand["status"] != "ok":
        return None
    m = measure(mine.value, cand["value"], _less_precise(mine.dtype, cand["dtype"]), k)
    if not m["within"]:
        return None
    return m["max_abs"] == 0.0
