"""The semantics matrix (``profile_matrix()``: switches x frameworks) as a terminal or
Markdown table: ``xbn explain`` prints it, ``xbn report`` puts it in index.md. It is no
report's view, so it has this module of its own; the HTML page draws it with
``html_parts.matrix_table``."""

from __future__ import annotations

import pandas as pd

from .markdown_out import md_table


def _cell(v) -> str:
    if v is None:
        return "—"
    return str(v).lower() if isinstance(v, bool) else str(v)


def matrix_text(matrix: dict, markdown: bool = False) -> str:
    """The matrix as text: a terminal table, or with ``markdown`` a Markdown one."""
    frame = pd.DataFrame({sw: {fid: _cell(v) for fid, v in row.items()}
                          for sw, row in matrix.items()}).T
    frame.index.name = "switch"
    return md_table(frame) if markdown else frame.to_string()
