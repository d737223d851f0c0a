"""Explanations: the smallest change to the reference's semantics that reproduces a framework.

For each scenario and framework with ``differs`` or ``error`` rows, the reference is re-run with
candidate settings. A setting explains those rows only if it reproduces *every* row of that
framework in the scenario, the ones that agree with the reference included: a setting that
moves one row onto the framework's value and another off it names the wrong cause. Candidates,
in order: the framework's declared profile (its semantic switches, then with its arithmetic);
one semantic switch; native precision (float32 arithmetic in a given operation order); two
semantic switches; one semantic switch with native precision. The first that reproduces every
row, reduced to the switches it needs, explains them all; ``(bit-exact)`` marks a row
reproduced to the last bit. When no rerun reproduces every row, rounding-error bounds are tried
(``xbn.explain_bounds``): the two-pass variance's, then the one-pass formula's, which account for
an ill-conditioned reduction whose summation order no rerun can match. When nothing reproduces
every row, each row gets the setting that reproduces it and the most of the framework's other
rows, and names the rows that setting misses. A row that nothing reproduces says so: that is a
finding, not a failure of the search.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd

from .adapters.base import run_scenario
from .adapters.numpy.adapter import NumpyAdapter
from .comparison import agreement
from .explain_bounds import ALGORITHMS, bound_text, corner_changes, within
from .profiles import PROFILES, differences, error_mismatch, known_divergence
from .reference import NUMERIC_SWITCH_VALUES, SWITCH_VALUES, Semantics
from .scenario import Scenario

UNEXPLAINED = ("unexplained: no single switch, pair, native rounding, declared profile or "
               "rounding bound reproduces it")
NATIVE = {"precision": "native"}
MISSED_SHOWN = 4  # rows a partial explanation names as missed, before "and N more"


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


def _profile(framework: str | None) -> list[dict]:
    """The framework's declared profile: its semantic switches, then with its arithmetic."""
    if framework not in PROFILES:
        return []
    declared = differences(framework)
    return [{k: v for k, v in declared.items() if k in SWITCH_VALUES}, declared]


def candidates(framework: str | None = None, only: set[str] | None = None) -> list[dict]:
    """Switch settings to try, smallest change first (the upgrade guard's order: single
    switches, native rounding, the declared profile, pairs, a switch with native rounding)."""
    singles = _flips(SWITCH_VALUES, only)
    native = [NATIVE] + [{**NATIVE, **f} for f in _flips(NUMERIC_SWITCH_VALUES)]
    profile = _profile(framework)
    numeric = {k: v for k, v in profile[-1].items() if k not in SWITCH_VALUES} if profile else {}
    pairs = [{**a, **b} for a, b in itertools.combinations(singles, 2) if set(a).isdisjoint(b)]
    mixed = [{**s, **n} for s in singles for n in ([NATIVE, numeric] if numeric else [NATIVE])]
    return _unique(singles + native + profile + pairs + mixed)


def explanation_order(framework: str | None, only: set[str] | None = None) -> list[dict]:
    """``candidates`` with the framework's declared profile first: among settings that
    reproduce every row, the framework's own (the part of it that matters) is the cause."""
    return _unique(_profile(framework) + candidates(framework, only))


def _unique(changes: list[dict]) -> list[dict]:
    unique = {_key(c): c for c in reversed(changes) if c}  # the first occurrence's position
    return [unique[k] for k in dict.fromkeys(_key(c) for c in changes if c)]


def _key(change: dict) -> tuple:
    """A cache key: the setting without the entries that are the reference's defaults."""
    base = Semantics()
    return tuple(sorted((k, v) for k, v in change.items() if getattr(base, k) != v))


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
    runs: dict[tuple, dict] = {}

    def observe(name: str, change: dict) -> dict:
        """The reference's observations with ``change``, cached per scenario and setting."""
        key = (name, _key(change))
        if key not in runs:
            adapter = NumpyAdapter("numpy", Semantics().with_(**change))
            # far-off settings divide by zero or take roots of negative variances: answers
            # ("this does not reproduce it"), not news
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                runs[key] = {(o["step"], o["quantity"]): o
                             for o in run_scenario(adapter, by_name[name])}
        return runs[key]

    diffs = diffs.copy()
    # published values (the pseudo-framework "expected") are explained like any framework
    mine_rows = diffs[diffs["scenario"].isin(list(by_name))]
    for (name, framework), rows in mine_rows.groupby(["scenario", "framework"], sort=False):
        scenario = by_name[name]
        mine, targets = {}, []
        for i, r in zip(rows.index, rows.itertuples(index=False), strict=True):
            o = values.get((name, r.step, r.quantity, framework))
            if o is None or r.verdict not in ("same", "differs", "error") or \
                    (r.verdict != "same" and not pd.isna(r.explanation)):
                continue
            known = known_divergence(framework, name, scenario.layer.dtype, r.quantity, r.op)
            if known:  # data, not a setting: no rerun is asked to reproduce it
                if r.verdict != "same":
                    diffs.at[i, "explanation"] = (f"known divergence: {known['reason']} "
                                                  f"({known['link']})")
                continue
            mine[i] = o
            if r.verdict != "same":
                targets.append(i)
        if targets:
            search = _Search(mine, lambda change, name=name: observe(name, change), k)
            texts = search.explain(scenario, framework, targets)
            for i in targets:
                diffs.at[i, "explanation"] = texts.get(i, UNEXPLAINED)
    return diffs


class _Search:
    """The search for one scenario and framework: ``mine`` (row index -> observation) holds
    every row a setting must reproduce; rows are matched against cached reference runs."""

    def __init__(self, mine: dict, observe, k: float):
        self.mine, self.observe, self.k = mine, observe, k
        self.tried: dict[tuple, tuple[dict, dict]] = {}  # key -> (change, {row: exact})
        self.bounds: list[tuple[dict, str, dict]] = []  # (base, algorithm, {row: Within})

    def hits(self, change: dict) -> dict:
        """Rows ``change`` reproduces: row -> bit-exact or not."""
        key = _key(change)
        if key not in self.tried:
            theirs = self.observe(change)
            found = {i: _match(m, theirs.get((m.step, m.quantity)), self.k)
                     for i, m in self.mine.items()}
            self.tried[key] = (change, {i: h for i, h in found.items() if h is not None})
        return self.tried[key][1]

    def bound_hits(self, base: dict, algorithm: str) -> dict:
        """Rows within the rounding-error interval of ``algorithm``'s variance: row -> Within."""
        centre_change = {**base, "variance_algorithm": algorithm}
        centre = self.observe(centre_change)
        corners = [self.observe(c) for c in corner_changes(centre_change)]
        found = {}
        for i, m in self.mine.items():
            row = (m.step, m.quantity)
            w = within(m, centre.get(row), [c.get(row) for c in corners], self.k)
            if w is not None:
                found[i] = w
        return found

    def minimize(self, change: dict, need: set, hits_of=None) -> dict:
        """Drop what the rows in ``need`` do not need (a profile brings many switches): each
        switch alone, the arithmetic (native precision with its rounding switches) as one,
        then pairs of those (a profile's Adam form may need its float32 order to stay within
        the tolerance, while neither is needed)."""
        hits_of = hits_of or self.hits
        arithmetic = tuple(k for k in change if k == "precision" or k in NUMERIC_SWITCH_VALUES)
        units = [(k,) for k in change if k != "precision"] + \
            ([arithmetic] if "precision" in change else [])
        for size in (1, 2):
            for group in itertools.combinations(units, size):
                drop = {k for unit in group for k in unit if k in change}
                if len(group) > 1 and any(not set(unit) & set(change) for unit in group):
                    continue  # one of the pair is gone already: tried alone
                trial = {k: v for k, v in change.items() if k not in drop}
                if trial and need <= set(hits_of(trial)):
                    change = trial
        return change

    def matters(self, base: dict, algorithm: str) -> dict:
        """The switches of ``base`` that change the reference's values in this scenario. A
        bound explanation keeps them all: an interval wide enough to hold a framework's
        cancellation may also hold a switch's effect, which does not make the switch wrong."""
        def centre(b: dict) -> dict:
            return self.observe({**b, "variance_algorithm": algorithm})

        for key in list(base):
            trial = {k: v for k, v in base.items() if k != key}
            a, b = centre(trial), centre(base)
            if a.keys() == b.keys() and all(agreement(a[r], b[r], 0).agree for r in a):
                base = trial
        return base

    def explain(self, scenario: Scenario, framework: str, targets: list) -> dict:
        everything = set(self.mine)
        for change in explanation_order(framework, relevant_switches(scenario)):
            if set(self.hits(change)) == everything:
                change = self.minimize(change, everything)
                hits = self.hits(change)
                return {i: describe(change, hits[i]) for i in targets}
        arithmetic = "float64" if "float64" in (scenario.layer.dtype,
                                                getattr(scenario.layer, "state_dtype", None)) \
            else "float32"
        if "variance_update" in relevant_switches(scenario):  # batch statistics are computed
            for base, algorithm in self._bound_options(framework):

                def hits_of(b, algorithm=algorithm):
                    return self.bound_hits(b, algorithm)

                hits = hits_of(base)
                if set(hits) == everything:
                    base = self.matters(base, algorithm)
                    hits = hits_of(base)
                    return {i: describe(_bound_setting(base, algorithm))
                            + bound_text(algorithm, arithmetic, hits[i]) for i in targets}
                self.bounds.append((base, algorithm, hits))
        return self._partial(targets, arithmetic)

    def _bound_options(self, framework: str) -> list[tuple[dict, str]]:
        """(semantic switches, variance formula) to bound: the two-pass variance's rounding,
        then the one-pass formula only where the framework declares it (a bound that can
        reach a negative variance holds nearly anything: it explains only what it names)."""
        profile = _profile(framework)
        bases = _unique(profile[:1]) + [{}]
        declared = profile[-1].get("variance_algorithm") if profile else None
        algorithms = ["two_pass"] + [a for a in ALGORITHMS if a == declared != "two_pass"]
        return [(b, a) for b in bases for a in algorithms]

    def _partial(self, targets: list, arithmetic: str) -> dict:
        """Each row: the setting that reproduces it and the most other rows, naming the
        rows that setting misses."""
        options = [("rerun", c, None, h) for c, h in self.tried.values()] + \
                  [("bound", b, a, h) for b, a, h in self.bounds]
        texts = {}
        settled: dict[int, tuple] = {}
        for i in targets:
            best = max((o for o in options if i in o[3]), key=lambda o: len(o[3]), default=None)
            if best is None:
                continue
            if id(best) not in settled:
                settled[id(best)] = self._settle(best)
            kind, change, algorithm, hits = settled[id(best)]
            if kind == "rerun":
                text = describe(change, hits[i])
            else:
                text = describe(_bound_setting(change, algorithm)) + \
                    bound_text(algorithm, arithmetic, hits[i])
            texts[i] = text + self._missed(hits)
        return texts

    def _settle(self, option: tuple) -> tuple:
        """The option reduced to the switches its rows need, with its hits recomputed."""
        kind, change, algorithm, hits = option
        if kind == "rerun":
            change = self.minimize(change, set(hits))
            return kind, change, algorithm, self.hits(change)

        change = self.matters(change, algorithm)
        return kind, change, algorithm, self.bound_hits(change, algorithm)

    def _missed(self, hits: dict) -> str:
        missed = sorted((m.step, m.quantity) for i, m in self.mine.items() if i not in hits)
        names = [f"step {s} {q}" for s, q in missed[:MISSED_SHOWN]]
        more = f" and {len(missed) - MISSED_SHOWN} more" if len(missed) > MISSED_SHOWN else ""
        return (f"; partial: reproduces {len(hits)} of {len(self.mine)} rows, not "
                + ", ".join(names) + more)


def _bound_setting(base: dict, algorithm: str) -> dict:
    """What a bound explanation names: the semantic switches, native arithmetic, and the
    variance formula when it is not the two-pass one."""
    extra = {} if algorithm == "two_pass" else {"variance_algorithm": algorithm}
    return {**base, **NATIVE, **extra}


def _match(mine, cand: dict | None, k: float) -> bool | None:
    """None: not reproduced; False: reproduced within tolerance; True: bit for bit
    (``comparison.agreement``). A framework's error is reproduced by an error of the reference
    only when it is the refusal that framework's profile declares for it: raised inside the
    framework, of the declared exception type and message (``profiles.error_mismatch``);
    for a framework without a profile, an error of the same exception type."""
    if cand is not None and mine.status == "error" and cand["status"] == "error" \
            and mine.framework in PROFILES:  # else (plugins, tests): the exception type decides
        got = mine._asdict() if hasattr(mine, "_asdict") else dict(mine)
        return False if error_mismatch(mine.framework, got, cand) is None else None
    a = agreement(mine, cand, k)
    return a.exact if a.agree else None
