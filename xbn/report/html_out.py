"""A single self-contained HTML page with the same content as the Markdown report."""

from __future__ import annotations

import html

from .text import _summary
from .views import side_by_side


def render(report) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>xbn report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-family:monospace}</style>",
             "<h1>xbn report</h1>",
             f"<p>Reference: <code>{html.escape(report.reference)}</code>; ✗ marks differs.</p>",
             _summary(report).to_html()]
    for s in report.scenarios:
        parts.append(f"<h2>{html.escape(s.name)}</h2><p>{html.escape(s.title)}</p>")
        parts.append(side_by_side(report.obs, report.diffs, s.name).to_html())
        d = report.diffs[(report.diffs["scenario"] == s.name) & (report.diffs["verdict"] != "same")]
        if not d.empty:
            parts.append(d[["step", "quantity", "framework", "verdict", "max_abs", "max_ulp",
                            "explanation", "message"]].to_html(index=False, na_rep=""))
    return "\n".join(parts) + "\n"
