"""Terminal tables and Markdown: per scenario, values side by side, then what differs and why,
then the numbered messages of error and n/a cells (cut in the terminal unless ``full``)."""

from __future__ import annotations

import pandas as pd

from .replicas import markdown_lines, replica_section, text_lines
from .views import (
    Footnotes,
    column_order,
    differences,
    framework_lines,
    measure_text,
    published_explanation,
    side_by_side,
    summarize,
    verdict_counts,
)

MESSAGE_WIDTH = 120
"""Terminal footnotes are cut here (one line each); ``--full`` prints them whole."""


def _detail(r, notes: Footnotes) -> str:
    """The detail column: the explanation, and for error and n/a the message's number."""
    if r.framework == "expected":
        return published_explanation(r)
    if r.verdict in ("error", "n/a") and r.message:
        key = f"[{notes.key(r.framework, r.message)}]"
        return f"{r.explanation} {key}" if r.explanation else key
    return r.explanation or r.message


def _noteworthy(rows: pd.DataFrame, notes: Footnotes) -> pd.DataFrame:
    rows = rows.copy()
    rows["detail"] = [_detail(r, notes) for r in rows.itertuples(index=False)]
    rows["max_abs"] = rows["max_abs"].map(measure_text)
    rows["max_ulp"] = rows["max_ulp"].map(measure_text)
    return rows[["step", *(["rep"] if "rep" in rows.columns else []), "quantity", "framework",
                 "verdict", "max_abs", "max_ulp", "detail"]]


def scenario_tables(report, name: str, full: bool = False):
    """The side-by-side table, the differences and the footnotes of one scenario."""
    notes = Footnotes()
    table = side_by_side(report.obs, report.diffs, name, column_order(report), notes, full)
    rows = _noteworthy(differences(report, name), notes)
    return table, rows, notes


def render_table(report, full: bool = False) -> str:
    out = [f"reference: {report.reference}; same = within {report.k:g} eps of the dtype "
           "at the reference array's scale"]
    out += [f"note: {n}" for n in report.notes]
    out += ["frameworks: " + ", ".join(framework_lines(report))]
    width = None if full else MESSAGE_WIDTH
    cut = False
    section = replica_section(report)
    if section is not None:
        out += ["", *text_lines(section)]
    for s in report.scenarios:
        out.append("")
        out.append(f"== {s.name}: {s.title}" if s.title else f"== {s.name}")
        table, rows, notes = scenario_tables(report, s.name, full)
        out.append(table.to_string())
        if not rows.empty:
            out.append("")
            out.append(rows.to_string(index=False, max_colwidth=None if full else 90))
        if notes:
            out += ["", *notes.lines(width)]
            cut = cut or notes.cut(width)
    out.append("")
    out.append("verdicts per framework:")
    out.append(verdict_counts(report).to_string())
    if not full:
        out.append("")
        out.append("values: the first elements of longer arrays (… (16): 16 elements)"
                   + ("; messages cut at the line's end" if cut else "")
                   + "; --full prints them whole")
    return "\n".join(out) + "\n"


def _md_table(frame: pd.DataFrame, index: bool = True) -> str:
    if index:
        frame = frame.reset_index()
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = [str(v).replace("|", "\\|").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(report, intro: str = "", profile: str = "", full: bool = False) -> str:
    out = ["# xbn report", ""]
    if intro:
        out += [intro, ""]
    values = ("every element" if full else "first elements (`… (16)`: 16 elements; "
              "`--full` or the HTML report shows them whole)")
    out += [f"Reference: `{report.reference}`. A value is **same** when every element is within "
            f"{report.k:g} × eps(dtype) × scale (the larger of the reference array's largest "
            f"magnitude and that of the terms that produced it); ✗ marks "
            f"**differs**; `error [n]` and `n/a [n]` point to message n below the table. "
            f"Values: {values}, 8 significant digits.", ""]
    out += [f"> **Note:** {n}" for n in report.notes] + ([""] if report.notes else [])
    out += ["## Frameworks", ""] + [f"- {line}" for line in framework_lines(report)] + [""]
    out += ["## Verdicts per framework", "", _md_table(verdict_counts(report)), ""]
    if profile:
        out += [profile, ""]
    section = replica_section(report)
    if section is not None:
        out += markdown_lines(section, _md_table)
    for s in report.scenarios:
        out += [f"## {s.name}", ""]
        if s.title:
            out += [f"**{s.title}**", ""]
        if s.description:
            out += [s.description.strip(), ""]
        table, rows, notes = scenario_tables(report, s.name, full)
        out += [_md_table(table), ""]
        if not rows.empty:
            out += ["Differences, errors and n/a:", "", _md_table(rows, index=False), ""]
        if notes:
            out += ["Messages:", ""] + ["- " + line.replace("|", "\\|")
                                        for line in notes.lines()] + [""]
    return "\n".join(out)


def matrix_text(matrix: dict, markdown: bool = False) -> str:
    """The profile matrix (switches x frameworks) as a terminal or Markdown table."""
    def cell(v) -> str:
        if v is None:
            return "—"
        return str(v).lower() if isinstance(v, bool) else str(v)

    frame = pd.DataFrame({sw: {fid: cell(v) for fid, v in row.items()}
                          for sw, row in matrix.items()}).T
    frame.index.name = "switch"
    return _md_table(frame) if markdown else frame.to_string()


__all__ = ["matrix_text", "render_markdown", "render_table", "scenario_tables", "summarize"]
