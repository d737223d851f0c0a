"""Explanations: the smallest change to the reference's semantics that reproduces a framework.

For each scenario and framework with ``differs`` or ``error`` rows, the reference is re-run with
candidate settings. A setting explains those rows only if it reproduces *every* row of that
framework in the scenario, the ones that agree with the reference included: a setting that
moves one row onto the framework's value and another off it names the wrong cause. Candidates,
in order: the framework's declared profile (its semantic switches, then with its arithmetic);
one semantic switch; native precision (float32 arithmetic in a given operation order); two
semantic switches; one semantic switch with native precision. The first that reproduces every
row, reduced to the switches it needs, explains them all. Each row names only the switches of
that setting that have acted by its step (``Search.word``): one that can be left out without
losing any row up to that step is not named there (``frozen_means_inference`` before anything
is frozen), where the named ones reproduce those rows on their own; ``(bit-exact)`` marks a
row that the named switches reproduce to the last bit. Bound and partial explanations name
their switches by the same rule. When no rerun reproduces every row, rounding-error bounds are
tried (``xbn.explain.bounds``): the two-pass variance's, then the one-pass formula's, which account for
an ill-conditioned reduction whose summation order no rerun can match. When nothing reproduces
every row, each row gets the setting that reproduces it and the most of the framework's other
rows, and names the rows that setting misses. A row that nothing reproduces says so: that is a
finding, not a failure of the search.
"""

from __future__ import annotations

import itertools
import math

import pandas as pd

from ..comparison.diffs import agreement, row_at
from ..frameworks.devices import base_id
from ..profiles.divergences import known_divergence
from ..profiles.facts import PROFILES
from ..profiles.refusals import error_mismatch
from ..reference.batchnorm import NUMERIC_SWITCH_VALUES
from ..scenario.loader import Scenario
from ..scenario.observation import ERROR
from .bounds import ALGORITHMS, Within, bound_text, corner_changes, within
from .candidates import NATIVE, declared_profile, explanation_order, relevant_switches, unique
from .reruns import LazyRun, describe, rerun, setting_key

UNEXPLAINED = ("unexplained: no single switch, pair, native rounding, declared profile or "
               "rounding bound reproduces it")
MISSED_SHOWN = 4  # rows a partial explanation names as missed, before "and N more"


def explain_diffs(diffs: pd.DataFrame, obs: pd.DataFrame, scenarios: list[Scenario],
                  reference: str, k: float, cache=None) -> pd.DataFrame:
    """Fill the ``explanation`` column of differs/error rows (only against the numpy reference).

    ``cache`` (an ``xbn.execution.cache.ResultCache``): each scenario x framework's explanations are kept
    there, keyed by what the search reads (``_search_key``), so an unchanged re-run skips the
    search, the largest part of analysing a run that the result cache served."""
    if reference != "numpy" or diffs.empty:
        return diffs
    by_name = {s.name: s for s in scenarios}
    values = {(r.scenario, r.framework, *row_at(r)): r for r in obs.itertuples(index=False)}
    runs: dict[tuple, LazyRun] = {}

    def observe(name: str, change: dict) -> LazyRun:
        """The reference's observations with ``change``, cached per scenario and setting, and
        computed only as far as a caller reads them (see ``rerun.LazyRun``)."""
        key = (name, setting_key(change))
        if key not in runs:
            runs[key] = LazyRun(rerun(by_name[name], change))
        return runs[key]

    diffs = diffs.copy()
    # published values (the pseudo-framework "expected") are explained like any framework
    mine_rows = diffs[diffs["scenario"].isin(list(by_name))]
    for (name, framework), rows in mine_rows.groupby(["scenario", "framework"], sort=False):
        scenario = by_name[name]
        framework_rows, targets = {}, []
        for i, r in zip(rows.index, rows.itertuples(index=False), strict=True):
            o = values.get((name, framework, *row_at(r)))
            if o is None or r.verdict not in ("same", "differs", "error") or \
                    (r.verdict != "same" and not pd.isna(r.explanation)):
                continue
            known = known_divergence(framework, scenario, int(r.step), r.quantity)
            if known:  # data, not a setting: no rerun is asked to reproduce it
                if r.verdict != "same":
                    diffs.at[i, "explanation"] = (f"known divergence: {known['reason']} "
                                                  f"({known['link']})")
                continue
            framework_rows[i] = o
            if r.verdict != "same":
                targets.append(i)
        if not targets:
            continue
        key = _search_key(scenario, framework, framework_rows, targets, k) if cache is not None else None
        found = cache.get_json("explanations", key) if key else None
        if found is None:
            search = Search(framework_rows, lambda change, name=name: observe(name, change), k)
            texts = search.explain(scenario, framework, targets)
            found = {_row_name(framework_rows[i]): texts.get(i, UNEXPLAINED) for i in targets}
            if key:
                cache.put_json("explanations", key, found)
        for i in targets:
            diffs.at[i, "explanation"] = found[_row_name(framework_rows[i])]
    return diffs


def _row_name(o) -> str:
    return "/".join(str(v) for v in row_at(o))  # step/quantity[/rep]


def _search_key(scenario: Scenario, framework: str, framework_rows: dict, targets: list, k: float) -> str:
    """Everything one search's answer depends on besides xbn's source (which ``derived_key``
    adds): the scenario's content (the reruns), the tolerance, and every row the search must
    reproduce (value, dtype, status, message, scale, and whether it is to be explained)."""
    from ..execution.cache import derived_key

    rows = sorted([_row_name(o), o.status, o.dtype, o.message, o.value,
                   getattr(o, "scale", None), i in targets] for i, o in framework_rows.items())
    return derived_key(scenario.digest, framework, k, rows)


class Search:
    """The search for one scenario and framework: ``framework_rows`` (row index -> observation) holds
    every row a setting must reproduce; rows are matched against cached reference runs, row
    by row in step order, so a setting that misses an early row is dropped without running
    the rest of the scenario (``covers``); every row is matched only where all of a setting's
    hits are needed (``hits``)."""

    def __init__(self, framework_rows: dict, observe, k: float):
        self.framework_rows, self.observe, self.k = framework_rows, observe, k
        self.order = sorted(framework_rows, key=lambda i: framework_rows[i].step)  # the rerun's order
        self.tried: dict[tuple, dict] = {}  # key -> change, in the order tried
        self.rows: dict[tuple, dict] = {}  # key -> {row: None | exact}, as far as matched
        self.bounds: list[tuple[dict, str, dict]] = []  # (base, algorithm, {row: Within})
        self.acting: dict[tuple, dict] = {}  # (setting, rows, algorithm) -> switch -> step

    def _row(self, change: dict, key: tuple, i) -> bool | None:
        matched = self.rows.setdefault(key, {})
        if i not in matched:
            m = self.framework_rows[i]
            matched[i] = _match(m, self.observe(change).get(row_at(m)), self.k)
        return matched[i]

    def covers(self, change: dict, need) -> bool:
        """Whether ``change`` reproduces every row in ``need``, stopping at the first miss."""
        self.tried.setdefault(setting_key(change), change)
        return self._first_miss(change, need) == math.inf

    def _first_miss(self, change: dict, need) -> float:
        """The step of the first row in ``need`` that ``change`` does not reproduce (inf:
        none), matched in step order as far as that row (the reruns are lazy)."""
        key = setting_key(change)
        return next((self.framework_rows[i].step for i in self.order
                     if i in need and self._row(change, key, i) is None), math.inf)

    def hits(self, change: dict) -> dict:
        """Rows ``change`` reproduces: row -> bit-exact or not."""
        key = setting_key(change)
        self.tried.setdefault(key, change)
        found = {i: self._row(change, key, i) for i in self.order}
        return {i: h for i, h in found.items() if h is not None}

    def bound_hits(self, base: dict, algorithm: str) -> dict:
        """Rows within the rounding-error interval of ``algorithm``'s variance: row -> Within."""
        found = {i: self._bound_row(base, algorithm, i) for i in self.order}
        return {i: w for i, w in found.items() if w is not None}

    def _bound_row(self, base: dict, algorithm: str, i) -> Within | None:
        """Row ``i`` within the interval (the runs computed as far as its step). An error is
        within it only as ``_match`` reproduces errors: the refusal the framework declares,
        never an error of xbn's own code nor any error for any other."""
        centre_change = {**base, "variance_algorithm": algorithm}
        m = self.framework_rows[i]
        row = row_at(m)
        centre = self.observe(centre_change).get(row)
        if m.status == ERROR or (centre is not None and centre["status"] == ERROR):
            return None if _match(m, centre, self.k) is None else Within(0.0, 0.0)
        return within(m, centre, [self.observe(c).get(row) for c in
                                  corner_changes(centre_change)], self.k)

    def minimize(self, change: dict, need: set, hits_of=None) -> dict:
        """Drop what the rows in ``need`` do not need (a profile brings many switches): each
        switch alone, the arithmetic (native precision with its rounding switches) as one,
        then pairs of those (a profile's Adam form may need its float32 order to stay within
        the tolerance, while neither is needed)."""
        covers = (lambda trial: need <= set(hits_of(trial))) if hits_of else \
            (lambda trial: self.covers(trial, need))
        arithmetic = tuple(k for k in change if k == "precision" or k in NUMERIC_SWITCH_VALUES)
        units = [(k,) for k in change if k != "precision"] + \
            ([arithmetic] if "precision" in change else [])
        for size in (1, 2):
            for group in itertools.combinations(units, size):
                drop = {k for unit in group for k in unit if k in change}
                if len(group) > 1 and any(not set(unit) & set(change) for unit in group):
                    continue  # one of the pair is gone already: tried alone
                trial = {k: v for k, v in change.items() if k not in drop}
                if trial and covers(trial):
                    change = trial
        return change

    def matters(self, base: dict, algorithm: str) -> dict:
        """The switches of ``base`` that change the reference's values in this scenario. A
        bound explanation keeps them all: an interval wide enough to hold a framework's
        cancellation may also hold a switch's effect, which does not make the switch wrong."""
        def centre(b: dict) -> dict:
            return self.observe({**b, "variance_algorithm": algorithm}).full()

        for key in list(base):
            trial = {k: v for k, v in base.items() if k != key}
            a, b = centre(trial), centre(base)
            if a.keys() == b.keys() and all(agreement(a[r], b[r], 0).agree for r in a):
                base = trial
        return base

    def word(self, change: dict, need: set, i) -> str:
        """Row ``i``'s explanation by ``change``, which reproduces every row in ``need``: the
        switches of ``change`` whose removal loses a row of ``need`` at a step up to row
        ``i``'s (the arithmetic leaves as one: native precision with its rounding switches;
        a rounding switch named brings precision with it). Named only where those switches
        alone reproduce every such row and row ``i`` as well as ``change`` does (to the last
        bit where it does): otherwise ``change`` itself."""
        step = self.framework_rows[i].step
        exact = self._row(change, setting_key(change), i)
        arithmetic = {k for k in change if k == "precision" or k in NUMERIC_SWITCH_VALUES}
        acting = self._acting(change, need, None, lambda trial: self._first_miss(trial, need),
                              arithmetic)
        shown = {k for k in change if acting[k] <= step}
        if shown & set(NUMERIC_SWITCH_VALUES) and "precision" in change:
            shown.add("precision")
        named = {k: v for k, v in change.items() if k in shown}
        if named and named != change:
            here = self._row(named, setting_key(named), i)
            upto = {j for j in need if self.framework_rows[j].step <= step}
            if here is not None and (here or not exact) and \
                    self._first_miss(named, upto) == math.inf:
                return describe(named, here)
        return describe(change, exact)

    def bound_word(self, base: dict, algorithm: str, arithmetic: str, need: set, i) -> str:
        """Row ``i``'s bound explanation, the switches named as ``word`` names them, by the
        rule ``matters`` keeps them: the switches of ``base`` whose removal changes the
        reference's values (the interval's centre) at a step up to row ``i``'s, where those
        alone hold every row of ``need`` up to that step in their interval."""
        step = self.framework_rows[i].step
        w = self._bound_row(base, algorithm, i)

        def centre(b: dict) -> dict:
            return self.observe({**b, "variance_algorithm": algorithm}).full()

        acting = self._acting(base, need, algorithm,
                              lambda trial: _first_change(centre(trial), centre(base)), set())
        named = {k: v for k, v in base.items() if acting[k] <= step}
        if named != base:
            upto = [j for j in self.order if j in need and self.framework_rows[j].step <= step]
            here = self._bound_row(named, algorithm, i)
            if here is not None and all(self._bound_row(named, algorithm, j) is not None
                                        for j in upto):
                base, w = named, here
        return describe(_bound_setting(base, algorithm)) + bound_text(algorithm, arithmetic, w)

    def _acting(self, change: dict, need: set, algorithm: str | None, first, arithmetic: set) -> dict:
        """Switch -> the first step at which ``change`` without it (without all of
        ``arithmetic`` for precision) differs by ``first``; computed once per setting."""
        key = (setting_key(change), frozenset(need), algorithm)
        if key not in self.acting:
            self.acting[key] = {
                k: first({kk: v for kk, v in change.items()
                          if kk not in (arithmetic if k == "precision" else {k})})
                for k in change}
        return self.acting[key]

    def explain(self, scenario: Scenario, framework: str, targets: list) -> dict:
        everything = set(self.framework_rows)
        for change in explanation_order(framework, relevant_switches(scenario)):
            if self.covers(change, everything):
                change = self.minimize(change, everything)
                return {i: self.word(change, everything, i) for i in targets}
        arithmetic = "float64" if "float64" in (scenario.layer.dtype,
                                                getattr(scenario.layer, "state_dtype", None)) \
            else "float32"
        if "variance_update" in relevant_switches(scenario):  # batch statistics are computed
            for base, algorithm in self._bound_options(framework, relevant_switches(scenario)):

                def hits_of(b, algorithm=algorithm):
                    return self.bound_hits(b, algorithm)

                hits = hits_of(base)
                if set(hits) == everything:
                    base = self.matters(base, algorithm)
                    return {i: self.bound_word(base, algorithm, arithmetic, everything, i)
                            for i in targets}
                self.bounds.append((base, algorithm, hits))
        return self._partial(targets, arithmetic)

    def _bound_options(self, framework: str, only: set[str]) -> list[tuple[dict, str]]:
        """(semantic switches, variance formula) to bound: the two-pass variance's rounding,
        then the one-pass formula only where the framework declares it (a bound that can
        reach a negative variance holds nearly anything: it explains only what it names)."""
        profile = declared_profile(framework, only)
        bases = unique(profile[:1]) + [{}]
        declared = profile[-1].get("variance_algorithm") if profile else None
        algorithms = ["two_pass"] + [a for a in ALGORITHMS if a == declared != "two_pass"]
        return [(b, a) for b in bases for a in algorithms]

    def _partial(self, targets: list, arithmetic: str) -> dict:
        """Each row: the setting that reproduces it and the most other rows, naming the
        rows that setting misses."""
        options = [("rerun", c, None, self.hits(c)) for c in list(self.tried.values())] + \
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
                text = self.word(change, set(hits), i)
            else:
                text = self.bound_word(change, algorithm, arithmetic, set(hits), i)
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
        missed = sorted(row_at(m) for i, m in self.framework_rows.items() if i not in hits)
        names = [f"step {s} {q}" + "".join(f" rep {r}" for r in rep)
                 for s, q, *rep in missed[:MISSED_SHOWN]]
        more = f" and {len(missed) - MISSED_SHOWN} more" if len(missed) > MISSED_SHOWN else ""
        return (f"; partial: reproduces {len(hits)} of {len(self.framework_rows)} rows, not "
                + ", ".join(names) + more)


def _first_change(a: dict, b: dict) -> float:
    """The first step at which two runs of the reference (row -> observation) differ at all,
    as ``Search.matters`` compares them: a row only one has, or values not equal (inf: none)."""
    for r in sorted(a.keys() | b.keys(), key=lambda r: r[0]):
        if r not in a or r not in b or not agreement(a[r], b[r], 0).agree:
            return r[0]
    return math.inf


def _bound_setting(base: dict, algorithm: str) -> dict:
    """What a bound explanation names: the semantic switches, native arithmetic, and the
    variance formula when it is not the two-pass one."""
    extra = {} if algorithm == "two_pass" else {"variance_algorithm": algorithm}
    return {**base, **NATIVE, **extra}


def _match(observed, cand: dict | None, k: float) -> bool | None:
    """None: not reproduced; False: reproduced within tolerance; True: bit for bit
    (``comparison.agreement``). A framework's error is reproduced by an error of the reference
    only when it is the refusal that framework's profile declares for it: raised inside the
    framework, of the declared exception type and message (``profiles.error_mismatch``);
    for a framework without a profile, an error of the same exception type."""
    if cand is not None and observed.status == ERROR and cand["status"] == ERROR \
            and observed.framework in PROFILES:  # else (plugins, tests): the exception type decides
        got = observed._asdict() if hasattr(observed, "_asdict") else dict(observed)
        return False if error_mismatch(base_id(observed.framework), got, cand) is None else None
    a = agreement(observed, cand, k)
    return a.exact if a.agree else None
