"""Writers: one module per output format; they only format, never compute."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FORMATS = ("table", "markdown", "csv", "json", "html")


def render(report, fmt: str, *, full: bool = False, matrix: dict | None = None) -> str:
    """Text of a ``Report`` in one format. ``full``: whole arrays and messages in the table
    and Markdown (the HTML always has them a click away); ``matrix``: the semantics matrix,
    shown by the HTML page."""
    if fmt == "json":
        from .json_out import render as r
    elif fmt == "csv":
        from .csv_out import render as r
    elif fmt == "html":
        from .html_out import render as html

        return html(report, matrix)
    elif fmt == "markdown":
        from .text import render_markdown

        return render_markdown(report, full=full)
    elif fmt == "table":
        from .text import render_table

        return render_table(report, full=full)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return r(report)


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
