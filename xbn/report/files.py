"""`xbn report`: a finished ``Report`` written as index.html (plots, heatmap, whole values on
click), index.md (the same tables for reading on a forge), diffs.csv and results.json, all
four rendered from one view of the report."""

from __future__ import annotations

from pathlib import Path

from ..analysis.model import Report
from . import write_atomic

INTRO = ("Every built-in scenario run through every installed framework, compared with xbn's "
         "float64 reference. Regenerate with `xbn report`; the numbers below come from that run.")


def write_report(report: Report, out_dir: Path, matrix: dict) -> list[Path]:
    """Write the report's files; ``matrix`` is the semantics matrix (``profile_matrix()``)."""
    from . import csv_out, html_out, json_out, markdown_out
    from .matrix_out import matrix_text
    from .view import build_view

    view = build_view(report)
    profile = ("## The semantics matrix\n\nEach framework's value for every switch of the "
               "reference (`xbn explain`; `xbn explain ID` gives the source of each value).\n\n"
               + matrix_text(matrix, markdown=True))
    texts = {
        "index.html": html_out.render(view, matrix, intro=INTRO.replace("`", "")),
        "index.md": markdown_out.render(view, INTRO, profile=profile),
        "diffs.csv": csv_out.render(view),
        "results.json": json_out.render(view),
    }
    written = []
    for name, text in texts.items():  # every text is rendered before the first file is replaced
        write_atomic(out_dir / name, text)
        written.append(out_dir / name)
    return written
