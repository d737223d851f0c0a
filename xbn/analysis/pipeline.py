"""From a run to a finished ``Report``: observations, diffs against the reference, and the
explanation of every difference. The writers in ``xbn.report`` only format what this returns.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pandas as pd

from ..comparison.diffs import DEFAULT_K, diff_table, observations_frame, row_at
from ..comparison.drift import drift_table
from ..execution.runner import DEFAULT_TIMEOUT, EXPLAINED_REFERENCE, ProgressCallback, RunResult
from ..execution.runner import run as run_scenarios
from ..explain.search import explain_diffs
from ..scenario.loader import Scenario
from .model import Report


def reference_notes(reference: str) -> list[str]:
    """What a reader must know about the reference before reading the tables."""
    if reference == EXPLAINED_REFERENCE:
        return []
    return [f"no explanations: the reference is {reference}, and explanations re-run xbn's "
            f"float64 model, so they exist only with --reference {EXPLAINED_REFERENCE} "
            "(the default)"]


class EarlyExplanations:
    """The explanation search for each framework started as soon as its rows are in, while
    slower workers still run (pass ``framework_done`` as ``runner.run``'s ``on_framework``).

    The search is most of an analysis (about 14 s of the built-in suite's 16 on two cores),
    and it needs only one framework's rows and the reference's: run after the last worker it
    is a tail on one core, run here it fills the core a finished worker left idle. One
    background thread (the main thread only waits for the workers meanwhile); ``analyze``
    takes what it found and searches only the rest, so the answer is the same either way."""

    def __init__(self, scenarios: list[Scenario], reference: str, k: float, cache=None):
        from concurrent.futures import ThreadPoolExecutor

        self.scenarios, self.reference, self.k, self.cache = scenarios, reference, k, cache
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xbn-explain")
        self._lock = threading.Lock()
        self._reference_rows: list[dict] | None = None
        self._waiting: list[list[dict]] = []  # frameworks' rows that came before the reference's
        self._found: list[Future] = []

    def framework_done(self, framework: str, observations: list[dict]) -> None:
        if self.reference != EXPLAINED_REFERENCE:
            return
        with self._lock:
            if framework == self.reference:
                self._reference_rows = observations
                for waiting in self._waiting:
                    self._submit(waiting)
                self._waiting = []
            elif self._reference_rows is None:
                self._waiting.append(observations)
            else:
                self._submit(observations)

    def _submit(self, observations: list[dict]) -> None:
        self._found.append(self._pool.submit(self._explain, observations))

    def _explain(self, observations: list[dict]) -> dict[tuple, str]:
        obs = observations_frame(self._reference_rows + observations)
        diffs = diff_table(obs, self.reference, self.k)
        diffs = explain_diffs(diffs, obs, self.scenarios, self.reference, self.k, self.cache)
        return _explanations(diffs)

    def found(self) -> dict[tuple, str]:
        """Every explanation found, by (scenario, framework, step, quantity[, rep]); waits for
        searches still running (an exception raised in one is raised here: xbn's bug)."""
        out: dict[tuple, str] = {}
        for future in self._found:
            out.update(future.result())
        self._pool.shutdown()
        return out


def _explanations(diffs) -> dict[tuple, str]:
    rows = diffs[diffs["explanation"].notna()]
    return {(r.scenario, r.framework, *row_at(r)): r.explanation
            for r in rows.itertuples(index=False)}


def analyze(result: RunResult, reference: str = "numpy", k: float = DEFAULT_K,
            cache=None, early: EarlyExplanations | None = None) -> Report:
    """Diff every framework's observations against the reference's, explain each diff, and
    measure every framework's distance to the reference at every step (for the plots);
    ``cache``: where explanations are kept between runs (``explain.explain_diffs``);
    ``early``: the searches already made while the run went on."""
    obs = observations_frame(result.observations)
    diffs = diff_table(obs, reference, k)
    if early is not None:
        found = early.found()
        if found:
            keys = [(r.scenario, r.framework, *row_at(r)) for r in diffs.itertuples(index=False)]
            texts = [found.get(key, text)
                     for key, text in zip(keys, diffs["explanation"], strict=True)]
            diffs["explanation"] = pd.Series(texts, index=diffs.index, dtype=object)
    diffs = explain_diffs(diffs, obs, result.scenarios, reference, k, cache)
    return Report(obs=obs, diffs=diffs, reference=reference, k=k,
                  frameworks={fid: dict(meta) for fid, meta in result.frameworks.items()},
                  scenarios=list(result.scenarios),
                  drift=drift_table(result.observations, reference, k),
                  notes=reference_notes(reference))


def run_and_analyze(scenarios: list[Scenario], frameworks: list[str] | None, reference: str,
                    k: float = DEFAULT_K, *, timeout: float = DEFAULT_TIMEOUT,
                    jobs: int | None = None, progress: ProgressCallback | None = None,
                    cache=None) -> Report:
    """Run scenarios through frameworks (default: every installed one), then ``analyze``;
    ``cache``: a ``xbn.execution.cache.ResultCache`` to read and fill (None: run everything)."""
    early = EarlyExplanations(scenarios, reference, k, cache)
    result = run_scenarios(scenarios, frameworks, timeout=timeout, jobs=jobs, progress=progress,
                           cache=cache, on_framework=early.framework_done)
    return analyze(result, reference, k, cache, early)
