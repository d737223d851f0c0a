"""xbn: cross-framework BatchNorm semantics, compared step by step.

The public API imports no framework: frameworks are imported only inside worker processes.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "compare", "load_scenario", "run"]


def load_scenario(path):
    """Load and validate a scenario file (see ``xbn.scenario``)."""
    from .scenario import load

    return load(path)


def run(scenarios, frameworks=None, **kwargs):
    """Run scenarios (objects or paths) through frameworks; returns a ``RunResult``."""
    from .runner import run as _run
    from .scenario import Scenario, load

    loaded = [s if isinstance(s, Scenario) else load(s) for s in scenarios]
    return _run(loaded, frameworks, **kwargs)


def compare(result, reference: str = "numpy", **kwargs):
    """Diff table (pandas DataFrame) of a ``RunResult`` against a reference framework."""
    from .compare import diff_table, observations_frame

    return diff_table(observations_frame(result.observations), reference, **kwargs)
