"""Markdown (``xbn run --format markdown``, and ``xbn report``'s index.md for reading on a
forge): what a value's verdict means, the frameworks, the verdict counts, the semantics matrix
when given, the cross-replica section, then per scenario its values side by side, what differs
and why, and its numbered messages, always whole.
"""

from __future__ import annotations

import pandas as pd

from .replicas import INTRO as REPLICAS_INTRO
from .replicas import TITLE as REPLICAS_TITLE
from .view import ReportView, ScenarioView


def md_table(frame: pd.DataFrame, index: bool = True) -> str:
    """A frame as a Markdown table (its index as the first columns unless ``index`` is
    False); a '|' in a cell is escaped and a line break becomes a space."""
    if index:
        frame = frame.reset_index()
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = [str(v).replace("|", "\\|").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _scenario(s: ScenarioView) -> list[str]:
    out = [f"## {s.name}", ""]
    if s.title:
        out += [f"**{s.title}**", ""]
    if s.description:
        out += [s.description.strip(), ""]
    tables = s.tables
    out += [md_table(tables.values), ""]
    if not tables.differences.empty:
        out += ["Differences, errors and n/a:", "",
                md_table(tables.differences_with("detail"), index=False), ""]
    if tables.footnotes:
        out += ["Messages:", ""] + ["- " + note.line().replace("|", "\\|")
                                    for note in tables.footnotes] + [""]
    return out


def render(view: ReportView, intro: str = "", profile: str = "") -> str:
    """The Markdown of a report's view; ``intro``: a paragraph after the title; ``profile``:
    Markdown placed after the verdict counts (``xbn report`` gives the semantics matrix)."""
    header = view.header
    out = ["# xbn report", ""]
    if intro:
        out += [intro, ""]
    values = ("every element" if view.full else "first elements (`… (16)`: 16 elements; "
              "`--full` or the HTML report shows them whole)")
    out += [f"Reference: `{header.reference}`. A value is **same** when every element is within "
            f"{header.k:g} × eps(dtype) × scale (the larger of the reference array's largest "
            f"magnitude and that of the terms that produced it); ✗ marks "
            f"**differs**; `error [n]` and `n/a [n]` point to message n below the table. "
            f"Values: {values}, 8 significant digits.", ""]
    out += [f"> **Note:** {n}" for n in header.notes] + ([""] if header.notes else [])
    out += ["## Frameworks", ""] + [f"- {line}" for line in header.frameworks] + [""]
    out += ["## Verdicts per framework", "", md_table(view.verdicts), ""]
    if profile:
        out += [profile, ""]
    if view.replicas is not None:
        out += [f"## {REPLICAS_TITLE}", "", REPLICAS_INTRO, "",
                md_table(view.replicas.frame(), index=False), ""]
    for s in view.scenarios:
        out += _scenario(s)
    return "\n".join(out)

