"""The diff table as CSV (one row per scenario, step, quantity and framework)."""

from __future__ import annotations


def render(report) -> str:
    return report.diffs.to_csv(index=False, lineterminator="\n")
