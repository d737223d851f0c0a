"""The campaign: Hypothesis generates batches of scenarios, every framework's persistent worker
runs them, xbn's verdicts (``xbn.fuzz.verdict``) decide, and Hypothesis shrinks each new finding.

One Hypothesis run per finding: the property "no framework shows a root cause we have not
seen" fails on the first flag whose cause (``xbn.fuzz.cause``: the mechanism, e.g. a one-pass
variance not clamped) is new for its framework; from then on the run's *target* is that
signature (framework, cause) and the flag's kind, only that framework's worker is asked, and an
example fails only when it shows the same kind of symptom (a NaN in any quantity) of the same
cause, so Hypothesis' shrinker cannot wander off to another bug, nor from a NaN to a milder
symptom. The smallest failing scenario is kept (one a standalone script can
replay first); its signature joins the known ones, and the next run starts with the next seed.
A flag of a known cause adds its symptom to that finding instead of starting a run. The
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
from .cause import Cause, root_cause
from .verdict import KINDS, Flag, flags_of


def minimal_document(document: dict, last_step: int | None = None) -> dict:
    """The document without the steps after ``last_step`` (the finding's: a later step cannot
    change its row) and without inputs no step uses (Hypothesis cannot drop a drawn input that
    an earlier choice made and a later one stopped using)."""
    steps = document["steps"] if last_step is None else document["steps"][:last_step + 1]
    used = {s.get(k) for s in steps for k in ("input", "target", "weights", "mask")}
    return {**document, "steps": steps,
            "inputs": {k: v for k, v in document["inputs"].items() if k in used}}


def without_step(document: dict, index: int) -> dict | None:
    """The document without step ``index`` (later ``@N`` inputs renumbered), or None where a
    later step reads its output or it is the last step."""
    steps = document["steps"]
    if index >= len(steps) - 1 or any(s.get("input") == f"@{index}" for s in steps):
        return None

    def moved(step: dict) -> dict:
        x = step.get("input")
        if isinstance(x, str) and x.startswith("@") and int(x[1:]) > index:
            return {**step, "input": f"@{int(x[1:]) - 1}"}
        return step

    return minimal_document({**document, "steps": [moved(s) for i, s in enumerate(steps)
                                                   if i != index]})


def _repeat_once(document: dict, index: int) -> dict | None:
    """The document with step ``index``'s repeat made 1 (None: it has none)."""
    step = document["steps"][index]
    if step.get("repeat", 1) == 1:
        return None
    rest = {k: v for k, v in step.items() if k not in ("repeat", "trace")}
    return {**document, "steps": [*document["steps"][:index], rest,
                                  *document["steps"][index + 1:]]}


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
    cause: Cause
    shrink_calls: int = 0
    symptoms: set[tuple[str, str]] = field(default_factory=set)  # (quantity, kind) seen

    @property
    def signature(self) -> tuple[str, str]:
        """What deduplicates findings: the framework and the root cause (its mechanism)."""
        return (self.flag.framework, self.cause.name)


def deduplicate(findings: list[Finding]) -> list[Finding]:
    """One finding per signature: the first (the campaign finds the worst kind first), with
    the symptoms of the others added to it."""
    kept: dict[tuple[str, str], Finding] = {}
    for f in findings:
        if f.signature in kept:
            kept[f.signature].symptoms |= f.symptoms | {f.flag.key[1:]}
        else:
            f.symptoms.add(f.flag.key[1:])
            kept[f.signature] = f
    return list(kept.values())


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
    cpu_seconds: float = 0.0  # this process's CPU after the workers' start-up: xbn's own
    sessions: dict[str, Session] = field(default_factory=dict)
    known: dict[tuple[str, str], str] = field(default_factory=dict)  # --known: signature->link
    known_seen: dict[tuple[str, str], int] = field(default_factory=dict)  # hits of those
    command: str = ""  # the campaign's whole command line, recorded in every report

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
            cpu0 = time.process_time()
            self.log(f"workers up in {self.startup:.1f} s: {', '.join(self.frameworks)}")
            attempt = 0
            while self._time_left() > 0 and self._examples_left() > 0:
                if not self._round(attempt):
                    break
                attempt += 1
        finally:
            if "cpu0" in locals():
                self.cpu_seconds = time.process_time() - cpu0
            for s in self.sessions.values():
                s.close()
            self.seconds = time.monotonic() - self.t0
        return self.findings

    def _examples_left(self) -> int:
        return 10**9 if self.max_examples is None else self.max_examples - self.examples

    def evaluate(self, documents: list[dict], frameworks: list[str]) -> list[tuple]:
        """(document, scenario, framework, rows) for every document and framework."""
        scenarios = [parse(d, "<fuzz>") for d in documents]
        start = time.monotonic()
        with ThreadPoolExecutor(len(frameworks)) as pool:
            results = dict(zip(frameworks, pool.map(
                lambda fw: self.sessions[fw].run([s.to_dict() for s in scenarios]), frameworks),
                strict=True))
        self.worker_seconds += time.monotonic() - start
        return [(doc, scenario, fw, results[fw].get(scenario.name, []))
                for doc, scenario in zip(documents, scenarios, strict=True) for fw in frameworks]

    def hits(self, evaluated: list[tuple], hazards_only: bool = False) -> list[tuple]:
        """(doc, scenario, framework, rows, flag) of every flag (``verdict.flags_of``;
        ``hazards_only``: the hazards alone), the worst kind first (a NaN before a rounding
        question)."""
        found = sorted(((KINDS.index(flag.kind), flag.step, i, (doc, scenario, fw, rows, flag))
                        for i, (doc, scenario, fw, rows) in enumerate(evaluated)
                        for flag in flags_of(fw, scenario, rows, self.k, hazards_only)),
                       key=lambda h: h[:3])  # then the earliest step: what a report shows
        return [hit for *_, hit in found]

    def cause_of(self, flag: Flag, scenario: Scenario, rows: list[dict]) -> Cause:
        return root_cause(flag, scenario, rows, self.k)

    def _new(self, hits: list[tuple]) -> tuple | None:
        """The worst hit whose cause is new for its framework; each hit of a known cause adds
        its symptom to that finding. A hit is (doc, scenario, framework, rows, flag)."""
        known = {f.signature: f for f in self.findings}
        for hit in hits:
            _, scenario, fw, rows, flag = hit
            cause = self.cause_of(flag, scenario, rows)
            reported = self.reported(fw, cause.name)
            if reported is not None:  # --known: already reported upstream, counted only
                self.known_seen[reported] = self.known_seen.get(reported, 0) + 1
                continue
            if (fw, cause.name) not in known:
                return (*hit, cause)
            known[(fw, cause.name)].symptoms.add(flag.key[1:])
        return None

    def reported(self, framework: str, cause: str) -> tuple[str, str] | None:
        """The ``--known`` entry that covers (framework, cause), or None. An entry naming a
        plain id covers its modes and devices (``haiku`` covers ``haiku+jit``: one upstream
        report); one naming a mode covers that mode only."""
        from ..frameworks.devices import base_id, run_id

        for fid in (framework, run_id(framework), base_id(framework)):
            if (fid, cause) in self.known:
                return (fid, cause)
        return None

    def _round(self, attempt: int) -> bool:
        """One Hypothesis run; True when it found (and shrank) a new finding."""
        from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings

        from .repro import scriptable
        from .strategies import batches

        state: dict = {"target": None, "best": None, "calls": 0, "since": None}

        def keep(doc, scenario, fw, rows, flag, cause) -> None:
            # one a standalone script can replay, then the smallest
            rank = (not scriptable(scenario, fw), len(json.dumps(doc)))
            if state["best"] is None or rank < state["best"][0]:
                state["best"] = (rank, Finding(flag, doc, scenario, rows, cause))

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
            evaluated = self.evaluate(documents, frameworks)
            if target is None:
                found = self._new(self.hits(evaluated))
            else:  # the same kind of symptom, any quantity, of the same cause; hazards first
                found = next(((*hit, target[1]) for quick in (True, False)
                              for hit in self.hits(evaluated, quick) if hit[4].kind == target[2]
                              and self.cause_of(hit[4], hit[1], hit[3]) == target[1]), None)
            if found:
                doc, scenario, fw, rows, flag, cause = found
                if target is None:
                    state["target"] = (fw, cause, flag.kind)
                    state["since"] = time.monotonic()
                    self.log(f"found {' '.join(flag.key)} ({cause.name}) after "
                             f"{self.examples} examples; shrinking")
                keep({**doc, "name": "fuzz"}, scenario, fw, rows, flag, cause)
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
        finding = self._fewer_steps(state["best"][1])
        finding.shrink_calls = state["calls"]
        finding.symptoms.add(finding.flag.key[1:])
        self.findings = deduplicate(self.findings + [finding])
        self.log(f"shrunk {' '.join(finding.flag.key)} ({finding.cause.name}) in "
                 f"{finding.shrink_calls} calls to {len(finding.scenario.steps)} step(s): "
                 f"{finding.flag.detail}")
        return True

    def _fewer_steps(self, finding: Finding) -> Finding:
        """Hypothesis shrinks choices, not steps: a flag at step 3 may need none of steps
        0-2, and a ``repeat = 100`` may show it at 1. Greedily try the finding's scenario cut
        to its flag's step with one earlier step dropped, or one repeat made 1, all in one
        request to its worker; keep the first variant that still shows the same kind of
        symptom of the same cause, until none does (or the shrink time is spent)."""
        fw, cause, kind = finding.flag.framework, finding.cause, finding.flag.kind
        deadline = time.monotonic() + self.shrink_seconds
        doc = minimal_document(finding.document, finding.flag.step)
        while time.monotonic() < deadline and self._time_left() > 0:
            variants = [v for i in range(len(doc["steps"]))
                        for v in (without_step(doc, i), _repeat_once(doc, i)) if v is not None]
            if not variants:
                break
            named = [{**v, "name": f"fuzz-{i}"} for i, v in enumerate(variants)]
            for doc_, scenario, _fw, rows, flag in self.hits(self.evaluate(named, [fw])):
                if flag.kind == kind and self.cause_of(flag, scenario, rows) == cause:
                    doc = minimal_document({**doc_, "name": "fuzz"}, flag.step)
                    finding = Finding(flag, doc, parse(doc, "<fuzz>"),
                                      [{**o, "scenario": "fuzz"} for o in rows], cause,
                                      symptoms=finding.symptoms)
                    break
            else:
                break
        return finding

    def _exhausted(self, attempt: int) -> bool:
        """A round that ended without a finding and without spending the budget: Hypothesis
        ran out of examples to try (only with --max-examples)."""
        return self.max_examples is not None or attempt > 1000

    def rates(self) -> dict[str, float]:
        """Examples per second of each framework's worker (its own time, protocol included)."""
        return {fw: s.examples / s.seconds for fw, s in self.sessions.items() if s.seconds}
