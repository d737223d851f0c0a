"""From a run to a finished ``Report``: observations, diffs against the reference, and the
explanation of every difference. The writers in ``xbn.report`` only format what this returns.
"""

from __future__ import annotations

from .comparison import DEFAULT_K, diff_table, observations_frame
from .drift import drift_table
from .explain import explain_diffs
from .report.model import Report
from .runner import DEFAULT_TIMEOUT, ProgressCallback, RunResult
from .runner import run as run_scenarios
from .scenario import Scenario

EXPLAINED_REFERENCE = "numpy"
"""Explanations re-run xbn's float64 reference with other switches (``explain_diffs``), so
they exist only when the reference is that model."""


def reference_notes(reference: str) -> list[str]:
    """What a reader must know about the reference before reading the tables."""
    if reference == EXPLAINED_REFERENCE:
        return []
    return [f"no explanations: the reference is {reference}, and explanations re-run xbn's "
            f"float64 model, so they exist only with --reference {EXPLAINED_REFERENCE} "
            "(the default)"]


def analyze(result: RunResult, reference: str = "numpy", k: float = DEFAULT_K,
            cache=None) -> Report:
    """Diff every framework's observations against the reference's, explain each diff, and
    measure every framework's distance to the reference at every step (for the plots);
    ``cache``: where explanations are kept between runs (``explain.explain_diffs``)."""
    obs = observations_frame(result.observations)
    diffs = diff_table(obs, reference, k)
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
    ``cache``: a ``xbn.cache.ResultCache`` to read and fill (None: run everything)."""
    result = run_scenarios(scenarios, frameworks, timeout=timeout, jobs=jobs, progress=progress,
                           cache=cache)
    return analyze(result, reference, k, cache)
