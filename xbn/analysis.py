"""From a run to a finished ``Report``: observations, diffs against the reference, and the
explanation of every difference. The writers in ``xbn.report`` only format what this returns.
"""

from __future__ import annotations

from collections.abc import Callable

from .comparison import DEFAULT_K, diff_table, observations_frame
from .explain import explain_diffs
from .report.model import Report
from .runner import DEFAULT_TIMEOUT, RunResult
from .runner import run as run_scenarios
from .scenario import Scenario


def analyze(result: RunResult, reference: str = "numpy", k: float = DEFAULT_K) -> Report:
    """Diff every framework's observations against the reference's and explain each diff."""
    obs = observations_frame(result.observations)
    diffs = diff_table(obs, reference, k)
    diffs = explain_diffs(diffs, obs, result.scenarios, reference, k)
    return Report(obs=obs, diffs=diffs, reference=reference, k=k,
                  frameworks={fid: dict(meta) for fid, meta in result.frameworks.items()},
                  scenarios=list(result.scenarios))


def run_and_analyze(scenarios: list[Scenario], frameworks: list[str] | None, reference: str,
                    k: float = DEFAULT_K, *, timeout: float = DEFAULT_TIMEOUT,
                    jobs: int | None = None,
                    progress: Callable[[str], None] | None = None) -> Report:
    """Run scenarios through frameworks (default: every installed one), then ``analyze``."""
    result = run_scenarios(scenarios, frameworks, timeout=timeout, jobs=jobs, progress=progress)
    return analyze(result, reference, k)
