"""``--only-diffs``: a report restricted to what differs, before it is viewed and rendered.

A restriction of the ``Report`` itself (not of one format's view), so every format, the plots
included, shows the same subset; it filters the finished tables and computes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pandas as pd

from ..comparison.diffs import row_at

if TYPE_CHECKING:
    from ..analysis.model import Report

ONLY_DIFFS_NOTE = ("only what differs (--only-diffs): rows where some framework differs, "
                   "errs or is n/a, and the scenarios that have one")


def only_diffs(report: Report) -> Report:
    """The report restricted to (scenario, step, quantity) rows where some verdict is not
    'same', and to the scenarios that have such a row."""
    d = report.diffs
    keys = {(r.scenario, *row_at(r)) for r in d[d["verdict"] != "same"].itertuples(index=False)}

    def keep(frame: pd.DataFrame) -> pd.Series:
        return pd.Series([(r.scenario, *row_at(r)) in keys
                          for r in frame.itertuples(index=False)],
                         index=frame.index, dtype=bool)

    names = {k[0] for k in keys}
    drift = report.drift
    if drift is not None:
        drift = drift[drift["scenario"].isin(names)]
    return dataclasses.replace(
        report, obs=report.obs[keep(report.obs)], diffs=d[keep(d)], drift=drift,
        scenarios=[s for s in report.scenarios if s.name in names],
        notes=[*report.notes, ONLY_DIFFS_NOTE])
