"""Explanations: the smallest change to the reference's semantics that reproduces a framework.

For every ``differs`` (or ``error``) row, the reference is re-run with one switch changed, then
with two, and the first setting whose result matches the framework's observation within the
same tolerance as the verdict is named in the ``explanation`` column. A row that no setting
reproduces says so: that is a finding, not a failure of the search.
"""

from __future__ import annotations

import itertools
from functools import cache

import pandas as pd

from .adapters.base import run_scenario
from .adapters.numpy_ref import NumpyAdapter
from .compare import _less_precise, measure
from .profiles import PROFILES, differences
from .reference import SWITCH_VALUES, Semantics
from .scenario import Scenario

UNEXPLAINED = "unexplained: no single switch, pair of switches or declared profile reproduces it"


@cache
def _singles_and_pairs() -> list[dict]:
    base = Semantics()
    singles = [{name: value} for name, values in SWITCH_VALUES.items()
               for value in values if getattr(base, name) != value]
    pairs = [{**a, **b} for a, b in itertools.combinations(singles, 2)
             if set(a).isdisjoint(b)]
    return singles + pairs


def candidates(framework: str | None = None) -> list[dict]:
    """Switch settings to try, smallest change first: every single flip, every pair, then
    the framework's whole declared profile (which may change more than two switches)."""
    found = list(_singles_and_pairs())
    if framework in PROFILES:
        profile = differences(framework)
        if len(profile) > 2:
            found.append(profile)
    return found


def describe(change: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in change.items())


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _observe(scenario: Scenario, change: dict) -> dict:
    adapter = NumpyAdapter("numpy", Semantics().with_(**change))
    return {(o["step"], o["quantity"]): o for o in run_scenario(adapter, scenario)}


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
        return _observe(by_name[name], dict(change_key))

    diffs = diffs.copy()
    for i, row in diffs.iterrows():
        if row["verdict"] not in ("differs", "error") or row["framework"] == "expected":
            continue
        if row["explanation"] or row["scenario"] not in by_name:
            continue
        mine = values.get((row["scenario"], row["step"], row["quantity"], row["framework"]))
        if mine is None:
            continue
        found = None
        for change in candidates(row["framework"]):
            theirs = observed(row["scenario"], tuple(sorted(change.items())))
            cand = theirs.get((row["step"], row["quantity"]))
            if cand is not None and _matches(mine, cand, k):
                found = describe(change)
                break
        diffs.at[i, "explanation"] = found or UNEXPLAINED
    return diffs


def _matches(mine, cand: dict, k: float) -> bool:
    if mine.status == "error":
        return cand["status"] == "error" and \
            cand["message"].split(":")[0] == mine.message.split(":")[0]
    if mine.status != "ok" or cand["status"] != "ok":
        return False
    return measure(mine.value, cand["value"], _less_precise(mine.dtype, cand["dtype"]), k)["within"]
