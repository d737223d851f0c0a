"""Why an observation changed between a snapshot and now, in one line.

The same idea as ``xbn.explain.search``, applied to two values of one framework instead of a
framework and the reference: find a setting of the reference's semantic switches that
reproduces the old value, then the smallest change to that setting (one switch, then the
arithmetic, then two switches) that reproduces the new value, and name the switches that flipped
("variance_update: biased -> unbiased"). A difference within 16 eps of the dtype at the old
array's scale is called rounding before any search, and a change no setting reproduces is
reported as unexplained: that is a finding, not a failure of the search.
"""

from __future__ import annotations

import itertools
import time

from ..comparison.diffs import DEFAULT_K, agreement, row_at
from ..profiles.facts import PROFILES, semantics_of
from ..reference.batchnorm import NUMERIC_SWITCH_VALUES, SWITCH_VALUES, Semantics
from ..scenario.loader import Scenario
from ..scenario.observation import ERROR
from .candidates import candidates, relevant_switches
from .reruns import format_value, rerun_rows, setting_of

ROUNDING_K = DEFAULT_K
# Seconds of reference runs one check may spend searching: a long scenario takes about a
# second per setting and an unexplained change tries a few hundred settings.
SEARCH_BUDGET_S = 120.0
OUT_OF_TIME = "not searched: the explanation search used up its time budget"
UNEXPLAINED = ("unexplained: no setting of the reference's switches reproduces both the old "
               "and the new value")


def settings(sem: Semantics) -> str:
    """'variance_update=unbiased' (switches away from the defaults) or 'defaults'."""
    base = Semantics().switches()
    moved = {k: v for k, v in sem.switches().items() if base[k] != v}
    return ", ".join(f"{k}={format_value(v)}" for k, v in moved.items()) or "defaults"


def transition(old: Semantics, new: Semantics) -> str:
    """'variance_update: biased -> unbiased' for every switch that differs."""
    a, b = old.switches(), new.switches()
    return ", ".join(f"{k}: {format_value(a[k])} -> {format_value(b[k])}" for k in a if a[k] != b[k])


def flips(sem: Semantics, only: set[str] | None = None) -> list[Semantics]:
    """Settings near ``sem``, nearest first: one semantic switch flipped; the arithmetic
    changed (native precision, or one rounding-only switch with it); two semantic switches;
    one semantic switch with a change of arithmetic. ``only``: the semantic switches that can
    matter in the scenario (``xbn.explain.search.relevant_switches``)."""
    semantic = [{n: v} for n, values in SWITCH_VALUES.items() if only is None or n in only
                for v in values if getattr(sem, n) != v]
    native = {} if sem.precision == "native" else {"precision": "native"}
    precision = [{"precision": p} for p in ("float64", "native") if sem.precision != p]
    numeric = [{**native, n: v} for n, values in NUMERIC_SWITCH_VALUES.items()
               for v in values if getattr(sem, n) != v]
    # Already in native arithmetic: an operation-order switch names more than "float64 now".
    rounding = numeric + precision if not native else precision + numeric
    pairs = [{**a, **b} for a, b in itertools.combinations(semantic, 2) if set(a).isdisjoint(b)]
    mixed = [{**a, **r} for a in semantic for r in rounding]
    return list(dict.fromkeys(sem.with_(**c) for c in semantic + rounding + pairs + mixed))


def bases(framework: str, only: set[str] | None = None) -> list[Semantics]:
    """Settings that may reproduce an old value: defaults, the framework's declared profile,
    then ``xbn.explain.search.candidates`` (single switches, native rounding, pairs...)."""
    found = [Semantics()]
    if framework in PROFILES:
        found.append(semantics_of(framework))
    found += [Semantics().with_(**c) for c in candidates(framework, only)]
    return list(dict.fromkeys(found))


class _OutOfTime(Exception):
    """The search's time budget is spent; the remaining changes stay unsearched."""


def _is_error_pair(old: dict, new: dict) -> bool:
    return old["status"] == new["status"] == ERROR


def reproduces(obs: dict | None, cand: dict | None) -> bool:
    """Whether a reference observation matches an observed one (within 16 eps; an error by
    an error of the same exception type): ``compare.agreement``."""
    return agreement(obs, cand, ROUNDING_K).agree


class Explainer:
    """Explains ``guard.Change`` rows; reference runs are cached per scenario and setting."""

    def __init__(self, scenarios: list[Scenario], failed: dict[str, str] | None = None,
                 failed_steps: dict[tuple, dict] | None = None):
        self.by_name = {s.name: s for s in scenarios}
        self.failed = failed or {}  # framework id -> why its worker failed (crash, timeout)
        # (scenario, step, framework) -> an error or n/a row of that step in the new run
        self.failed_steps = failed_steps or {}
        self._runs: dict[tuple[str, Semantics], dict] = {}
        self._deadline = time.monotonic() + SEARCH_BUDGET_S

    def observe(self, scenario: str, sem: Semantics) -> dict:
        key = (scenario, sem)
        if key not in self._runs:
            if time.monotonic() > self._deadline:
                raise _OutOfTime
            self._runs[key] = rerun_rows(self.by_name[scenario], setting_of(sem))
        return self._runs[key]

    def explain(self, change) -> str:
        old, new = change.old, change.new
        failure = self.failed.get(change.framework)
        if failure and (new is None or new["message"] == failure):
            return f"not measured: the {change.framework} worker failed ({failure})"
        if change.kind == "missing":
            failed_step = self.failed_steps.get((change.scenario, change.step, change.framework))
            if failed_step is not None:
                return (f"not recorded: step {change.step} is {failed_step['status']} now "
                        f"({failed_step['message']})")
            return "no longer recorded: the framework reports nothing for this quantity now"
        if change.kind == "new":
            return "newly recorded: the snapshot has no such observation"
        prefix = ""
        if change.kind == "dtype":
            prefix = f"dtype {old['dtype']} -> {new['dtype']}; "
        elif change.kind == "shape":
            prefix = "shape changed; "
        rounding = self._rounding(old, new)
        if rounding:
            return prefix + rounding
        try:
            return prefix + self._search(change)
        except _OutOfTime:
            return prefix + OUT_OF_TIME

    def _search(self, change) -> str:
        old, new = change.old, change.new
        if change.kind == "status" and not _is_error_pair(old, new):
            found = self._switches(change, partial=False)
            return found or (f"{old['status']} -> {new['status']}: no setting of the reference's "
                             "switches does that (an API or environment change?)")
        return self._switches(change) or UNEXPLAINED

    @staticmethod
    def _rounding(old: dict, new: dict) -> str | None:
        a = agreement(new, old, ROUNDING_K)
        if not a.agree or not a.compared:
            return None
        return f"{a.dtype} rounding only (max {a.max_ulp:g} ulp, within {ROUNDING_K:g} eps)"

    def _switches(self, change, partial: bool = True) -> str | None:
        """Which switch setting reproduces the old value and which the new one (``partial``:
        also say so when only one of them is reproduced)."""
        if change.scenario not in self.by_name:
            return None
        key = row_at(change)

        def hit(sem: Semantics, obs: dict) -> bool:
            return reproduces(obs, self.observe(change.scenario, sem).get(key))

        only = relevant_switches(self.by_name[change.scenario])
        starts = bases(change.framework, only)
        was = next((s for s in starts if hit(s, change.old)), None)
        if was is not None:
            if hit(was, change.new):
                return (f"rounding only: old and new both match the reference ({settings(was)}) "
                        f"within {ROUNDING_K:g} eps")
            now = next((s for s in flips(was, only) if hit(s, change.new)), None)
            if now is not None:
                return transition(was, now)
        now = next((s for s in starts if hit(s, change.new)), None)
        if was is not None and now is not None:
            return transition(was, now)
        if not partial:
            return None
        if now is not None:
            return (f"the new value matches the reference with {settings(now)}; no setting "
                    "reproduces the old one")
        if was is not None:
            return (f"the old value matches the reference with {settings(was)}; no setting "
                    "reproduces the new one")
        return None
