"""Pieces of the HTML report: the verdict heatmap, a scenario's side-by-side values (whole
arrays and messages one click away, in ``<details>``), its differences with explanations, the
cross-replica section and the semantics matrix. Every table is drawn from the same report's
view as the terminal and Markdown, in the same column order; no script is needed to read any
of it.
"""

from __future__ import annotations

import re
from html import escape

import pandas as pd

from .cells import Cell, is_cut, summarize
from .replicas import INTRO as REPLICAS_INTRO
from .replicas import TITLE as REPLICAS_TITLE
from .replicas import ReplicaSection
from .view import ReportView, ScenarioView

VERDICTS = ("same", "differs", "error", "n/a")
WORST_FIRST = ("error", "differs", "n/a", "same")
LEGEND = {"same": "same as the reference", "differs": "differs (beyond the tolerance)",
          "error": "error (the framework raised)", "n/a": "n/a (not expressible)"}


def anchor(scenario: str, framework: str | None = None) -> str:
    """The id of a scenario's section, or of a framework's column in its table."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", scenario)
    return f"s-{slug}" + (f"--{re.sub(r'[^A-Za-z0-9_-]+', '-', framework)}" if framework else "")


def _vclass(verdict: str) -> str:
    return "v-" + {"n/a": "na"}.get(verdict, verdict)


def table(frame: pd.DataFrame, cls: str = "") -> str:
    """A plain table of text (escaped), first row as header."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_table(view: ReportView) -> str:
    """The verdict counts per framework, each verdict's header in its colour."""
    counts = view.verdicts.reset_index()
    head = "".join(f"<th class='{_vclass(v) if v in VERDICTS else ''}'>{escape(v)}</th>"
                   for v in counts.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in counts.itertuples(index=False))
    return f"<table class='counts'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def legend() -> str:
    items = "".join(f"<li><span class='swatch {_vclass(v)}'></span>{escape(LEGEND[v])}</li>"
                    for v in WORST_FIRST)
    return f"<ul class='legend'>{items}</ul>"


def heatmap(view: ReportView) -> str:
    """Scenario × framework: a cell's colour is its worst verdict (error, differs, n/a, same),
    its text the number of rows that are not 'same', and it links to that framework's column
    in the scenario's section."""
    frameworks = [f for f in view.frameworks if f != view.header.reference]
    d = view.diffs
    counts = d.groupby(["scenario", "framework", "verdict"]).size()
    head = "".join(f"<th class='fw'>{escape(f)}</th>" for f in frameworks)
    rows = []
    for s in view.scenarios:
        cells = [f"<th class='sc'><a href='#{anchor(s.name)}'>{escape(s.name)}</a></th>"]
        for f in frameworks:
            n = {v: int(counts.get((s.name, f, v), 0)) for v in VERDICTS}
            total = sum(n.values())
            if not total:
                cells.append("<td class='v-none'>—</td>")
                continue
            worst = next(v for v in WORST_FIRST if n[v])
            title = f"{f} on {s.name}: " + ", ".join(f"{n[v]} {v}" for v in VERDICTS if n[v])
            text = "✓" if worst == "same" else str(total - n["same"])
            cells.append(f"<td class='{_vclass(worst)}'><a href='#{anchor(s.name, f)}' "
                         f"title='{escape(title)}'>{text}</a></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class='heatmap'><thead><tr><th>scenario</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _cell(cell: Cell | None) -> str:
    if cell is None:
        return "<td></td>"
    cls = _vclass(cell.verdict) if cell.verdict and cell.verdict != "same" else ""
    if cell.status == "ok":
        mark = " ✗" if cell.verdict == "differs" else ""
        short = escape(summarize(cell.value)) + mark
        if is_cut(cell.value):
            whole = escape(summarize(cell.value, full=True))
            return (f"<td class='{cls}'><details><summary>{short}</summary>"
                    f"<code class='whole'>{whole}</code></details></td>")
        return f"<td class='{cls}'>{short}</td>"
    cls = _vclass(cell.status)
    if cell.message:
        return (f"<td class='{cls}'><details><summary>{escape(cell.status)}</summary>"
                f"<div class='msg'>{escape(cell.message)}</div></details></td>")
    return f"<td class='{cls}'>{escape(cell.status)}</td>"


def values_table(s: ScenarioView) -> str:
    """The side-by-side values of one scenario; each framework's header cell carries the
    anchor the heatmap links to."""
    scenario, grid, cols = s.name, s.tables.cells, s.tables.columns
    head = "".join(f"<th id='{anchor(scenario, c)}' class='fw'>{escape(c)}</th>" for c in cols)
    body = []
    reps = any(len(key) == 4 for key in grid)  # a traced step: the step cell says "step·rep"
    for key, cells in grid.items():
        step, *rep, op, quantity = key
        if rep and rep[0] != "":
            step = f"{step}·{rep[0]}"
        body.append(f"<tr><td class='k0'>{step}</td><td class='k1'>{escape(op)}</td>"
                    f"<td class='k2'>{escape(quantity)}</td>"
                    + "".join(_cell(cells.get(c)) for c in cols) + "</tr>")
    return ("<div class='scroll'><table class='values'><thead><tr><th class='k0'>"
            f"{'step·rep' if reps else 'step'}</th>"
            f"<th class='k1'>op</th><th class='k2'>quantity</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def differences_table(s: ScenarioView) -> str:
    """What differs, errs or is n/a in one scenario, with the explanation and the framework's
    whole message."""
    d = s.tables.differences_with("explanation", "message")
    if d.empty:
        return "<p class='agree'>Every framework agrees with the reference at every step.</p>"
    rows = []
    reps = "rep" in d.columns
    for r in d.itertuples(index=False):
        rows.append(f"<tr><td>{r.step}</td>" + (f"<td>{r.rep}</td>" if reps else "") +
                    f"<td>{escape(r.quantity)}</td><td>{escape(r.framework)}</td>"
                    f"<td class='{_vclass(r.verdict)}'>{escape(r.verdict)}</td>"
                    f"<td class='num'>{r.max_abs}</td><td class='num'>{r.max_ulp}</td>"
                    f"<td>{escape(r.explanation)}</td><td class='msg'>{escape(r.message)}</td>"
                    "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("step", *(["rep"] if reps else []), "quantity",
                                             "framework", "verdict", "max_abs", "max_ulp",
                                             "explanation", "message"))
    return (f"<div class='scroll'><table class='diffs'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def replica_table(section: ReplicaSection) -> str:
    """The cross-replica section: text escaped, `code` spans as <code>."""
    def cell(text: str) -> str:
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))

    head = "".join(f"<th>{escape(c)}</th>" for c in section.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r[c])}</td>" for c in section.columns)
                   + "</tr>" for r in section.rows)
    return (f"<section id='replicas'><h2>{REPLICAS_TITLE}</h2><p>{cell(REPLICAS_INTRO)}</p>"
            f"<div class='scroll'><table class='replicas'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div></section>")


def matrix_table(matrix: dict, frameworks: list[str] | None = None) -> str:
    """The semantics matrix (switches × frameworks), limited to ``frameworks`` when given;
    a value other than the reference's (the first column) is highlighted."""
    def cell(v) -> str:
        if v is None:
            return "—"
        return str(v).lower() if isinstance(v, bool) else str(v)

    cols = list(next(iter(matrix.values()))) if matrix else []
    if frameworks:
        cols = [c for c in dict.fromkeys(frameworks) if c in cols] or cols
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    rows = []
    for switch, row in matrix.items():
        first = cell(row.get(cols[0])) if cols else ""
        tds = "".join(f"<td class='{'other' if cell(row.get(c)) != first else ''}'>"
                      f"{escape(cell(row.get(c)))}</td>" for c in cols)
        rows.append(f"<tr><th>{escape(switch)}</th>{tds}</tr>")
    return (f"<div class='scroll'><table class='matrix'><thead><tr><th>switch</th>{head}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table></div>")
