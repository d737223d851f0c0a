"""The terminal table (``xbn run``'s default): the reference and notes, the frameworks, the
cross-replica section as a block per framework, per scenario its values side by side, what
differs and why, and its numbered messages (cut at the line's end unless ``--full``); then the
verdict counts and a closing note on what was shortened.
"""

from __future__ import annotations

from .replicas import TITLE as REPLICAS_TITLE
from .replicas import ReplicaSection
from .view import ReportView, ScenarioView

MESSAGE_WIDTH = 120
"""Terminal footnotes are cut here (one line each); ``--full`` prints them whole."""
DETAIL_WIDTH = 90
"""The differences table's columns are cut here unless ``--full``."""


def cut_at_word(text, width: int):
    """``text`` cut to ``width`` characters at the last space (a "…" marks the cut), so an
    explanation never ends in half a switch name; other values pass unchanged."""
    if not isinstance(text, str) or len(text) <= width:
        return text
    head = text[: width - 1]
    space = head.rfind(" ")
    return (head[:space] if space > width // 2 else head).rstrip(" ,;") + "…"


def replica_lines(section: ReplicaSection) -> list[str]:
    """The cross-replica section: a block per framework, one line per column (the table would
    be far wider than a terminal)."""
    out = [f"== {REPLICAS_TITLE}"]
    for row in section.rows:
        out.append(row["framework"])
        out += [f"  {c}: {row[c]}" for c in section.columns[1:]]
    return out


def _scenario(s: ScenarioView, full: bool, width: int | None) -> list[str]:
    tables = s.tables
    out = ["", f"== {s.name}: {s.title}" if s.title else f"== {s.name}", tables.values.to_string()]
    if not tables.differences.empty:
        rows = tables.differences_with("detail")
        if not full:  # cut at a word, where pandas would cut mid-word
            rows = rows.assign(detail=[cut_at_word(v, DETAIL_WIDTH) for v in rows["detail"]])
        out += ["", rows.to_string(index=False, max_colwidth=None if full else DETAIL_WIDTH)]
    if tables.footnotes:
        out += ["", *(note.line(width) for note in tables.footnotes)]
    return out


def render(view: ReportView) -> str:
    """The table for a report's view; ``view.full``: every element and whole messages."""
    header = view.header
    out = [f"reference: {header.reference}; same = within {header.k:g} eps of the dtype "
           "at the reference array's scale"]
    out += [f"note: {n}" for n in header.notes]
    out += ["frameworks: " + ", ".join(header.frameworks)]
    width = None if view.full else MESSAGE_WIDTH
    if view.replicas is not None:
        out += ["", *replica_lines(view.replicas)]
    for s in view.scenarios:
        out += _scenario(s, view.full, width)
    cut = width is not None and any(len(note.line()) > width
                                    for s in view.scenarios for note in s.tables.footnotes)
    out += ["", "verdicts per framework:", view.verdicts.to_string()]
    if not view.full:
        out.append("")
        out.append("values: the first elements of longer arrays (… (16): 16 elements)"
                   + ("; messages cut at the line's end" if cut else "")
                   + "; --full prints them whole")
    return "\n".join(out) + "\n"
