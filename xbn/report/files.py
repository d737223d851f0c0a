"""`xbn report`: the whole built-in suite written as index.md, diffs.csv and results.json."""

from __future__ import annotations

from pathlib import Path

from ..runner import run
from . import render, write_atomic
from .model import Report

INTRO = ("Every built-in scenario run through every installed framework, compared with xbn's "
         "float64 reference. Regenerate with `xbn report`; the numbers below come from that run.")


def write_report(scenarios, frameworks, reference: str, out_dir: Path, *, timeout: float,
                 jobs: int | None = None, progress=None) -> list[Path]:
    result = run(scenarios, frameworks, timeout=timeout, jobs=jobs, progress=progress)
    report = Report.build(result, reference)
    from ..profiles import profile_matrix
    from .text import matrix_text, render_markdown

    matrix = ("## The semantics matrix\n\nEach framework's value for every switch of the "
              "reference (`xbn explain`; `xbn explain ID` gives the source of each value).\n\n"
              + matrix_text(profile_matrix(), markdown=True))
    texts = {
        "index.md": render_markdown(report, INTRO, profile=matrix),
        "diffs.csv": render(report, "csv"),
        "results.json": render(report, "json"),
    }
    written = []
    for name, text in texts.items():  # every text is rendered before the first file is replaced
        write_atomic(out_dir / name, text)
        written.append(out_dir / name)
    return written
