"""Observations to diffs: the observations DataFrame, tolerances, ULP distances, the one
agreement rule and verdicts (``diffs``), and each framework's distance to the reference per
step (``drift``).
"""

from __future__ import annotations

from .diffs import (
           COLUMNS,
           DEFAULT_K,
           VERDICTS,
           Agreement,
           agreement,
           diff_table,
           measure,
           observations_frame,
)
from .drift import drift_table

__all__ = ["Agreement", "agreement", "COLUMNS", "DEFAULT_K", "diff_table", "drift_table",
           "measure", "observations_frame", "VERDICTS"]
