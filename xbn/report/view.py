"""The report's view: a finished ``Report`` turned, once, into what every format shows.

``build_view`` makes every part a format lays out, as plain data (strings, pandas frames,
small dataclasses) with no Markdown, HTML or terminal layout in it: the header (reference,
tolerance, notes, one line per framework), the verdict counts, the cross-replica section,
and per scenario its side-by-side values (cells, and their texts with footnote numbers), what
differs with its explanation and the numbered messages; the raw tables stay in it for the
data formats (CSV, JSON) and the HTML page's plots. Each format (``table_out``,
``markdown_out``, ``csv_out``, ``json_out``, ``html_out``) renders this view in a module of
its own and in its own order of sections, and never goes back to the ``Report``.

The formats differ in the order of their sections (the terminal puts the verdict counts last,
Markdown and HTML near the top), so the view names its parts rather than fixing one order.
Footnote numbers are given here, once: a scenario's cells in grid order first, then its
differences, so the terminal and the Markdown number every message alike. A scenario's
tables are built when a format first reads them, and kept: CSV and JSON never do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..comparison.diffs import QUANTITY_ORDER, REP
from ..frameworks.modes import runs_of, runs_text
from .cells import Footnote, Footnotes, Grid, cell_grid, grid_texts, measure_text, present, traced
from .replicas import ReplicaSection, replica_section

if TYPE_CHECKING:
    from ..analysis.model import Report
    from ..scenario.model import Scenario

DIFFERENCE_VERDICTS = ("differs", "error", "n/a")
"""The rows of a scenario's differences table: every verdict but 'same'."""


def column_order(report: Report) -> list[str]:
    """The columns of every side-by-side table, in every format: the reference, the other
    frameworks in run order (the order of ``--frameworks``, or the registry's), 'expected'."""
    return [report.reference, *[f for f in report.frameworks if f != report.reference],
            "expected"]


def framework_order(report: Report) -> list[str]:
    """``column_order`` without 'expected': the frameworks a report has results for."""
    return [f for f in column_order(report) if f != "expected"]


def framework_lines(report: Report) -> list[str]:
    """One line per framework: version and notes, its worker's error, or how to install it."""
    lines = []
    for fid, meta in report.frameworks.items():
        if meta.get("available"):
            extra = f" ({'; '.join(meta['notes'])})" if meta.get("notes") else ""
            err = f" — {meta['error']}" if meta.get("error") else ""
            runs = runs_of(fid)  # what each op ran as (xbn.frameworks.modes)
            ran = f"; runs {runs_text(runs)}" if runs else ""
            lines.append(f"{fid} {meta.get('version') or ''}{extra}{err}{ran}")
        elif meta.get("reason"):  # an absent device (ID@DEVICE)
            lines.append(f"{fid}: unavailable ({meta['reason']})")
        else:
            lines.append(f"{fid}: unavailable (pip install \"xbn[{meta.get('extra')}]\")")
    return lines


def verdict_counts(report: Report) -> pd.DataFrame:
    """Verdict counts per framework (rows in ``framework_order``)."""
    d = report.diffs[report.diffs["framework"] != "expected"]
    counts = d.groupby(["framework", "verdict"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["same", "differs", "error", "n/a"], fill_value=0)
    order = [f for f in framework_order(report) if f in counts.index]
    return counts.reindex(order + [f for f in counts.index if f not in order])


def published_explanation(r: Any) -> str:
    """The explanation of a published value ("expected" row), led by its source."""
    return f"published ({r.message}); {r.explanation}"


def _text(v) -> str:
    return v if isinstance(v, str) and v != "NaN" else ""


def differences(report: Report, scenario: str) -> pd.DataFrame:
    """The rows of one scenario that differ, err or are n/a (an n/a that repeats one reason
    for every step is kept once), sorted by step, rep, quantity and ``column_order``;
    explanation and message as text ('' when missing); a ``rep`` column where it is traced."""
    d = report.diffs[(report.diffs["scenario"] == scenario)
                     & report.diffs["verdict"].isin(list(DIFFERENCE_VERDICTS))]
    d = d.assign(explanation=d["explanation"].map(_text), message=d["message"].map(_text))
    na = d[d["verdict"] == "n/a"].drop_duplicates(["framework", "explanation", "message"])
    d = pd.concat([d[d["verdict"] != "n/a"], na])
    order = {f: i for i, f in enumerate(column_order(report))}
    quantities = {q: i for i, q in enumerate(QUANTITY_ORDER)}
    reps = traced(d)
    d = d.assign(_order=d["framework"].map(lambda f: order.get(f, len(order))),
                 _q=d["quantity"].map(lambda q: quantities.get(q, len(quantities))),
                 _r=[-1 if r is None or pd.isna(r) else r for r in d[REP]] if reps else 0)
    d = d.sort_values(["step", "_r", "_q", "_order"], kind="stable")
    if reps:
        d[REP] = ["" if r is None or pd.isna(r) else int(r) for r in d[REP]]
    return d[["step", *([REP] if reps else []), "quantity", "framework", "verdict", "max_abs",
              "max_ulp", "explanation", "message"]].reset_index(drop=True)


def _detail(r, notes: Footnotes) -> str:
    """The one column the terminal and Markdown give a row's reason: the explanation, and for
    error and n/a the number of its message (printed once below the table)."""
    if r.framework == "expected":
        return published_explanation(r)
    if r.verdict in ("error", "n/a") and r.message:
        key = f"[{notes.key(r.framework, r.message)}]"
        return f"{r.explanation} {key}" if r.explanation else key
    return r.explanation or r.message


def difference_rows(d: pd.DataFrame, notes: Footnotes) -> pd.DataFrame:
    """``differences`` as shown: max_abs and max_ulp as text, a published value's explanation
    led by its source (and no message: its source is no framework's message), and ``detail``,
    the explanation with the footnote number of an error's or n/a's message."""
    rows = d.copy()
    raw = list(d.itertuples(index=False))
    rows["detail"] = [_detail(r, notes) for r in raw]
    rows["explanation"] = [published_explanation(r) if r.framework == "expected"
                           else r.explanation for r in raw]
    rows["message"] = ["" if r.framework == "expected" else r.message for r in raw]
    rows["max_abs"] = rows["max_abs"].map(measure_text)
    rows["max_ulp"] = rows["max_ulp"].map(measure_text)
    return rows


@dataclass(frozen=True)
class Header:
    """What every format says before the tables."""

    reference: str
    k: float
    notes: tuple[str, ...]
    frameworks: tuple[str, ...]
    """One line per framework (``framework_lines``)."""


@dataclass(frozen=True, eq=False)
class ScenarioTables:
    """One scenario's tables, built together: the footnote numbers run through the values
    first, then the differences, whichever a format reads first."""

    columns: list[str]
    """The frameworks (and 'expected') with a value here, in ``column_order``."""
    cells: Grid
    """The side-by-side values as data (the HTML page shows short and whole texts)."""
    values: pd.DataFrame
    """The same cells as text, short or whole (``ReportView.full``), with footnote numbers."""
    differences: pd.DataFrame
    """Rows that differ, err or are n/a (``difference_rows``); empty when all agree."""
    footnotes: tuple[Footnote, ...]
    """The numbered messages the values and differences point to."""

    def differences_with(self, *reason: str) -> pd.DataFrame:
        """The differences' key and measure columns, then the ``reason`` columns: ``detail``
        in the terminal and Markdown, ``explanation`` and ``message`` in the HTML page."""
        rep = [REP] if REP in self.differences.columns else []
        return self.differences[["step", *rep, "quantity", "framework", "verdict", "max_abs",
                                 "max_ulp", *reason]]


@dataclass(frozen=True, eq=False)
class ScenarioView:
    """One scenario's section: what it is, and its tables."""

    name: str
    title: str
    description: str
    path: str
    digest: str
    steps: list
    """The scenario's ``Step`` list (the plots label their x axis with it)."""
    build: Callable[[], ScenarioTables] = field(repr=False)

    @cached_property
    def tables(self) -> ScenarioTables:
        """The tables, built on first use and kept: the data formats (CSV, JSON) never use
        them, and on the whole suite they are most of the cost of a view."""
        return self.build()


@dataclass(frozen=True, eq=False)
class ReportView:
    """Everything a format shows of one ``Report``; its parts are in the order most formats
    show them, each renderer keeping its own order of sections."""

    header: Header
    full: bool
    """Values whole (True) or their first elements; messages never shortened here."""
    frameworks: list[str]
    """``framework_order``: the reference first, then the others in run order."""
    columns: list[str]
    """``column_order``: ``frameworks``, then 'expected' (the published values)."""
    verdicts: pd.DataFrame
    """``verdict_counts``: frameworks x (same, differs, error, n/a)."""
    replicas: ReplicaSection | None
    """The cross-replica section; None when no scenario has replicas."""
    scenarios: list[ScenarioView]
    observations: pd.DataFrame
    """The raw tables and metadata, for the data formats and the plots."""
    diffs: pd.DataFrame
    drift: pd.DataFrame | None
    metadata: dict[str, dict]


def _tables(report: Report, scenario: str, full: bool) -> ScenarioTables:
    notes = Footnotes()
    grid = cell_grid(report.obs, report.diffs, scenario)
    columns = present(grid, column_order(report))
    values = grid_texts(grid, columns, notes, full)  # the cells take the first numbers
    rows = difference_rows(differences(report, scenario), notes)
    return ScenarioTables(columns, grid, values, rows, notes.entries())


def _scenario(report: Report, s: Scenario, full: bool) -> ScenarioView:
    return ScenarioView(s.name, s.title, s.description, s.path, s.digest, s.steps,
                        partial(_tables, report, s.name, full))


def build_view(report: Report, full: bool = False) -> ReportView:
    """The view of a finished report; ``full``: values whole instead of their first elements
    in the value texts (the cells keep the values themselves either way)."""
    header = Header(report.reference, report.k, tuple(report.notes),
                    tuple(framework_lines(report)))
    return ReportView(
        header=header, full=full, frameworks=framework_order(report),
        columns=column_order(report),
        verdicts=verdict_counts(report), replicas=replica_section(report),
        scenarios=[_scenario(report, s, full) for s in report.scenarios],
        observations=report.obs, diffs=report.diffs, drift=report.drift,
        metadata={fid: {**meta, "runs": runs_of(fid)}  # what each op ran as
                  for fid, meta in report.frameworks.items()})
