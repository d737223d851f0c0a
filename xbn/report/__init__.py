"""Writers: a finished ``xbn.analysis.model.Report`` in every output format.

The flow is one way: ``Report -> view -> one renderer per format``. ``view.build_view`` turns
the report, once, into its format-neutral view (``view.py``; the value cells and footnotes in
``cells.py``, the cross-replica section in ``replicas.py``), and each format renders that
view in a module of its own: ``table_out`` (terminal), ``markdown_out``, ``csv_out``,
``json_out`` and ``html_out`` (with ``html_parts``, ``html_style``, ``plots`` and
``figures``). Renderers only lay the view out; nothing here runs a framework or computes a
verdict. ``subset.only_diffs`` restricts a report before it is viewed (``--only-diffs``),
``files.write_report`` writes ``xbn report``'s files, ``matrix_out`` prints the semantics
matrix and ``check_out`` writes ``xbn check``'s result (a ``CheckResult``, not a report).

This module stays light (the command line imports it for ``write_atomic``): the renderers,
pandas and matplotlib are imported only when a report is rendered.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..analysis.model import Report

__all__ = ["FORMATS", "render", "write_atomic"]

FORMATS = ("table", "markdown", "csv", "json", "html")


def render(report: Report, fmt: str, *, full: bool = False, matrix: dict | None = None) -> str:
    """Text of a ``Report`` in one format. ``full``: whole arrays and messages in the table
    and Markdown (the HTML always has them a click away); ``matrix``: the semantics matrix,
    shown by the HTML page."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    from .view import build_view

    view = build_view(report, full=full)
    if fmt == "html":
        from .html_out import render as html

        return html(view, matrix)
    if fmt == "json":
        from .json_out import render as r
    elif fmt == "csv":
        from .csv_out import render as r
    elif fmt == "markdown":
        from .markdown_out import render as r
    else:
        from .table_out import render as r
    return r(view)


def write_atomic(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a failure never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a report is an ordinary file
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
