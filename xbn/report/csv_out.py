"""The diff table as CSV (one row per scenario, step, quantity and framework): the view's raw
diffs, every column, for a spreadsheet or a script."""

from __future__ import annotations

from .view import ReportView


def render(view: ReportView) -> str:
    """The CSV text of a report's view."""
    return view.diffs.to_csv(index=False, lineterminator="\n")
