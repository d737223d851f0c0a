"""From a run to a finished ``Report`` (``model``): observations, diffs against the
reference and their explanations, searched early as each framework finishes (``pipeline``).
The writers in ``xbn.report`` format what this returns.
"""

from __future__ import annotations

from .model import Report
from .pipeline import analyze, run_and_analyze

__all__ = ["analyze", "Report", "run_and_analyze"]
