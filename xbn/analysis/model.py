"""The data every writer formats: observations, diffs and run metadata, already computed.

A ``Report`` is built by ``xbn.analysis.pipeline.analyze``; the writers only format it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from ..scenario.loader import Scenario


@dataclass
class Report:
    obs: pd.DataFrame
    """Every observation (``xbn.comparison.diffs.COLUMNS``), in report order."""
    diffs: pd.DataFrame
    """One row per observation other than the reference's, with verdict and explanation."""
    reference: str
    k: float
    frameworks: dict[str, dict] = field(default_factory=dict)
    """Each framework's metadata (availability, versions, notes, error), in run order."""
    scenarios: list[Scenario] = field(default_factory=list)
    drift: pd.DataFrame | None = None
    """Each framework's distance to the reference per step or repetition (``xbn.comparison.drift``);
    None when not measured: the writers then draw no plots."""
    notes: list[str] = field(default_factory=list)
    """Lines every writer shows before the tables (e.g. why there are no explanations)."""
