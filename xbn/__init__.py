"""xbn: cross-framework BatchNorm semantics, compared step by step.

The public API imports no framework: frameworks are imported only inside worker processes.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__", "compare", "load_scenario", "run"]


def load_scenario(path):
    """Load and validate a scenario file (see ``xbn.scenario.loader``)."""
    from .scenario.loader import load

    return load(path)


def run(scenarios, frameworks=None, **kwargs):
    """Run scenarios (objects or paths) through frameworks; returns a ``RunResult``."""
    from .execution.runner import run as _run
    from .scenario.loader import Scenario, load

    loaded = [s if isinstance(s, Scenario) else load(s) for s in scenarios]
    return _run(loaded, frameworks, **kwargs)


def compare(result, reference: str = "numpy", k: float | None = None, *, explain: bool = True):
    """Diff table (pandas DataFrame) of a ``RunResult`` against a reference framework, with
    verdicts and (``explain=True``, the numpy reference only) the explanation column.

    The machinery lives in ``xbn.comparison.diffs`` (tolerances, agreement) and ``xbn.explain.search``;
    this is their public face, as ``pandas.testing`` is over ``pandas._testing``.
    """
    from .comparison.diffs import DEFAULT_K, diff_table, observations_frame

    k = DEFAULT_K if k is None else k
    obs = observations_frame(result.observations)
    diffs = diff_table(obs, reference, k)
    if not explain:
        return diffs
    from .explain.search import explain_diffs

    return explain_diffs(diffs, obs, result.scenarios, reference, k)
