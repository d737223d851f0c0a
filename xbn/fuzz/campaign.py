"""The campaign: Hypothesis generates batches of scenarios, every framework's persistent worker
runs them, xbn's verdicts (``xbn.fuzz.verdict``) decide, and Hypothesis shrinks each new finding.

One Hypothesis run per finding: the property "no framework shows a finding we have not seen"
fails on the first new one; from then on the run's *target* is that finding's key (framework,
quantity, kind), only that framework's worker is asked, and an example fails only when it shows
the same key, so Hypothesis' shrinker cannot wander off to another bug. The smallest failing
scenario is kept; its key joins the known ones and the next run starts with the next seed. The
campaign stops when the wall-clock budget or the example count is spent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..execution.session import Session
from ..scenario.loader import Scenario, parse
from .verdict import KINDS, Flag, broken_switches, flags_of


class _OutOfTime(BaseException):
    """Budget spent: a BaseException so that Hypothesis lets it through without a replay."""


class _Found(Exception):
    """The property failed: an example shows the finding (or a new one)."""


@dataclass
class Finding:
    flag: Flag
    document: dict
    scenario: Scenario
    rows: list[dict]
    switches: tuple[str, ...] = ()
    shrink_calls: int = 0

    @property
    def signature(self) -> tuple[str, str, str, tuple[str, ...]]:
        """What deduplicates findings: framework, quantity, kind and the switches involved."""
        return (*self.flag.key, self.switches)


@dataclass
class Campaign:
    frameworks: list[str]
    seed: int = 0
    budget: float | None = None  # seconds of wall time
    max_examples: int | None = None
    batch: int = 8
    k: float = 16.0
    shrink_seconds: float = 60.0  # at most per finding
    log: Callable[[str], None] = lambda _text: None
    findings: list[Finding] = field(default_factory=list)
    examples: int = 0
    seconds: float = 0.0
    startup: float = 0.0
    worker_seconds: float = 0.0  # waiting for the slowest worker of each round trip
    sessions: dict[str, Session] = field(default_factory=dict)

    def _time_left(self) -> float:
        return float("inf") if self.budget is None else self.budget - (time.monotonic() - self.t0)

    def run(self) -> list[Finding]:
        """Start every worker, search until the budget is spent, return unique findings."""
        self.t0 = time.monotonic()
        self.sessions = {fw: Session(fw) for fw in self.frameworks}
        try:
            with ThreadPoolExecutor(len(self.sessions)) as pool:
                list(pool.map(Session.start, self.sessions.values()))
            self.startup = time.monotonic() - self.t0
            self.log(f"workers up in {self.startup:.1f} s: {', '.join(self.frameworks)}")
            attempt = 0
            while self._time_left() > 0 and self._examples_left() > 0:
                if not self._round(attempt):
                    break
                attempt += 1
        finally:
            for s in self.sessions.values():
                s.close()
            self.seconds = time.monotonic() - self.t0
        return self.findings

    def _examples_left(self) -> int:
        return 10**9 if self.max_examples is None else self.max_examples - self.examples

    def evaluate(self, documents: list[dict], frameworks: list[str]) -> list[tuple]:
        """(document, scenario, framework, rows, flags) for every document and framework."""
        scenarios = [parse(d, "<fuzz>") for d in documents]
        start = time.monotonic()
        with ThreadPoolExecutor(len(frameworks)) as pool:
            results = dict(zip(frameworks, pool.map(
                lambda fw: self.sessions[fw].run([s.to_dict() for s in scenarios]), frameworks),
                strict=True))
        self.worker_seconds += time.monotonic() - start
        out = []
        for doc, scenario in zip(documents, scenarios, strict=True):
            for fw in frameworks:
                rows = results[fw].get(scenario.name, [])
                out.append((doc, scenario, fw, rows, flags_of(fw, scenario, rows, self.k)))
        return out

    def _round(self, attempt: int) -> bool:
        """One Hypothesis run; True when it found (and shrank) a new finding."""
        from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings

        from .strategies import batches

        known = {f.flag.key for f in self.findings}
        state: dict = {"target": None, "best": None, "calls": 0, "since": None}

        def keep(doc, scenario, fw, rows, flag) -> None:
            size = len(json.dumps(doc))
            if state["best"] is None or size < state["best"][0]:
                state["best"] = (size, Finding(flag, doc, scenario, rows))

        @settings(max_examples=max(1, self._examples_left()), deadline=None, database=None,
                  phases=(Phase.generate, Phase.shrink), verbosity=Verbosity.quiet,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
        @seed(self.seed * 1_000_003 + attempt)
        @given(batches(self.batch))
        def property_(documents: list[dict]) -> None:
            if self._time_left() <= 0 or (state["since"] is not None and
                                          time.monotonic() - state["since"] > self.shrink_seconds):
                raise _OutOfTime
            documents = [{**d, "name": f"fuzz-{i}"} for i, d in enumerate(documents)]
            target = state["target"]
            if target is None:
                if self._examples_left() <= 0:
                    raise _OutOfTime
                self.examples += len(documents)
            else:
                state["calls"] += 1
            frameworks = [target[0]] if target else self.frameworks
            hits = [(KINDS.index(flag.kind), i, doc, scenario, fw, rows, flag)
                    for i, (doc, scenario, fw, rows, flags)
                    in enumerate(self.evaluate(documents, frameworks)) for flag in flags
                    if (flag.key == target if target else flag.key not in known)]
            if hits:  # the worst kind first: a NaN before a rounding question
                _, _, doc, scenario, fw, rows, flag = min(hits, key=lambda h: h[:2])
                if target is None:
                    state["target"], state["since"] = flag.key, time.monotonic()
                    self.log(f"found {' '.join(flag.key)} after {self.examples} examples; "
                             "shrinking")
                keep({**doc, "name": "fuzz"}, scenario, fw, rows, flag)
                raise _Found

        try:
            property_()
        except _OutOfTime:
            pass
        except _Found:
            pass
        except Exception as exc:  # noqa: BLE001 - Hypothesis' Flaky when a replay differs
            self.log(f"round {attempt}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        if state["best"] is None:
            return state["target"] is None and self._time_left() > 0 \
                and self._examples_left() > 0 and not self._exhausted(attempt)
        finding = state["best"][1]
        finding.shrink_calls = state["calls"]
        finding.switches = broken_switches(finding.flag, finding.scenario, finding.rows)
        self.findings.append(finding)
        self.log(f"shrunk {' '.join(finding.flag.key)} in {finding.shrink_calls} calls to "
                 f"{len(finding.scenario.steps)} step(s): {finding.flag.detail}")
        return True

    def _exhausted(self, attempt: int) -> bool:
        """A round that ended without a finding and without spending the budget: Hypothesis
        ran out of examples to try (only with --max-examples)."""
        return self.max_examples is not None or attempt > 1000

    def rates(self) -> dict[str, float]:
        """Examples per second of each framework's worker (its own time, protocol included)."""
        return {fw: s.examples / s.seconds for fw, s in self.sessions.items() if s.seconds}
