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
from functools import cache, partial

import pandas as pd

from .adapters.base import run_scenario
from .adapters.numpy.adapter import NumpyAdapter
from .comparison import agreement
from .profiles import PROFILES, differences, known_divergence
from .reference import NUMERIC_SWITCH_VALUES, SWITCH_VALUES, Semantics
from .scenario import Scenario

UNEXPLAINED = "unexplained: no single switch, pair, native rounding or declared profile reproduces it"
NATIVE = {"precision": "native"}


def _flips(values: dict[str, tuple], only: set[str] | None = None) -> list[dict]:
    base = Semantics()
    return [{name: v} for name, options in values.items() for v in options
            if getattr(base, name) != v and (only is None or name in only)]


def relevant_switches(scenario: Scenario) -> set[str]:
    """Semantic switches that can change anything in this scenario (prunes the search)."""
    layer, steps = scenario.layer, scenario.steps
    training = [s for s in steps if s.op == "fit" or (s.op in ("call", "grad") and s.training is not False)]
    found = set()
    if training:
        found |= {"variance_update", "ema", "training_normalization", "batch_of_one"}
    if layer.track_running_stats:
        found.add("initial_variance")
    if any(s.op == "set" and s.trainable is False for s in steps):
        found.add("frozen_means_inference")
    if any(s.op in ("call", "grad") and s.training is None for s in steps) or \
            any(s.op == "set" and s.mode for s in steps):
        found.add("bare_call")
    if any(s.op == "fit" and s.optimizer.name == "adam" for s in steps):
        found.add("adam_form")
    if any(s.op == "fit" for s in steps) and (
            any(s.op == "set" and s.trainable is False for s in steps)
            or not (layer.center or layer.scale)):
        found.add("frozen_fit")
    if layer.defaults:
        found |= {"default_momentum", "default_epsilon"}
    elif not layer.cumulative:
        found.add("momentum_convention")
    return found


def candidates(framework: str | None = None, only: set[str] | None = None) -> list[dict]:
    """Switch settings to try, in the order described in the module docstring."""
    singles = _flips(SWITCH_VALUES, only)
    native = [NATIVE] + [{**NATIVE, **f} for f in _flips(NUMERIC_SWITCH_VALUES)]
    numeric = {}
    profile = []
    if framework in PROFILES:
        declared = differences(framework)
        numeric = {k: v for k, v in declared.items() if k not in SWITCH_VALUES}
        semantic = {k: v for k, v in declared.items() if k in SWITCH_VALUES}
        profile = [semantic, declared]
    pairs = [{**a, **b} for a, b in itertools.combinations(singles, 2) if set(a).isdisjoint(b)]
    mixed = [{**s, **n} for s in singles for n in ([NATIVE, numeric] if numeric else [NATIVE])]
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
    # published values (the pseudo-framework "expected") are explained like any framework
    todo = diffs[diffs["verdict"].isin(["differs", "error"])
                 & diffs["explanation"].isna() & diffs["scenario"].isin(list(by_name))]
    for (name, framework), rows in todo.groupby(["scenario", "framework"], sort=False):
        mine = {i: values.get((name, r.step, r.quantity, framework))
                for i, r in zip(rows.index, rows.itertuples(index=False), strict=True)}
        mine = {i: m for i, m in mine.items() if m is not None}
        scenario = by_name[name]
        for i in list(mine):
            known = known_divergence(framework, name, scenario.layer.dtype, mine[i].quantity)
            if known:
                diffs.at[i, "explanation"] = f"known divergence: {known['reason']} ({known['link']})"
                del mine[i]
        if not mine:
            continue
        relevant = relevant_switches(scenario)
        explained = _cover(mine, candidates(framework, relevant),
                           partial(_observe_sorted, observed, name), k)
        for i in mine:
            if i in explained:
                change, exact = explained[i]
                shown = {key: v for key, v in change.items()
                         if key in relevant or key not in SWITCH_VALUES}
                diffs.at[i, "explanation"] = describe(shown, exact)
            else:
                diffs.at[i, "explanation"] = UNEXPLAINED
    return diffs


def _observe_sorted(observed, name: str, change: dict) -> dict:
    return observed(name, tuple(sorted(change.items())))


def _cover(mine: dict, options: list[dict], observe, k: float) -> dict:
    """Explain rows with as few settings as possible: one setting for all of them if one
    exists (the first in order), else greedily the setting that explains most of the rest."""
    hits_by_option = []
    for change in options:
        theirs = observe(change)
        hits = {i: _match(m, theirs.get((m.step, m.quantity)), k) for i, m in mine.items()}
        hits = {i: h for i, h in hits.items() if h is not None}
        if len(hits) == len(mine):
            change, hits = _minimize(change, mine, observe, k)
            return {i: (change, hits[i]) for i in mine}
        hits_by_option.append((change, hits))
    explained: dict = {}
    while True:
        best = max(hits_by_option, key=lambda ch: len(set(ch[1]) - set(explained)), default=None)
        if best is None or not set(best[1]) - set(explained):
            return explained
        for i, exact in best[1].items():
            explained.setdefault(i, (best[0], exact))


def _minimize(change: dict, mine: dict, observe, k: float) -> tuple[dict, dict]:
    """Drop every switch the explanation does not need (a profile brings many)."""
    best = {i: _match(m, observe(change).get((m.step, m.quantity)), k) for i, m in mine.items()}
    for key in [key for key in change if key != "precision"]:
        trial = {k2: v for k2, v in change.items() if k2 != key}
        if not trial:
            continue
        theirs = observe(trial)
        hits = {i: _match(m, theirs.get((m.step, m.quantity)), k) for i, m in mine.items()}
        if all(h is not None for h in hits.values()):
            change, best = trial, hits
    return change, best


def _match(mine, cand: dict | None, k: float) -> bool | None:
    """None: not reproduced; False: reproduced within tolerance; True: bit for bit
    (``compare.agreement``). An error is reproduced by any error of the reference: it models
    that a framework refuses, not which exception class the framework raises."""
    a = agreement(mine, cand, k, same_exception=False)
    return a.exact if a.agree else None
