"""Terminal tables and Markdown: per scenario, values side by side, then what differs and why."""

from __future__ import annotations

import pandas as pd

from .views import side_by_side, summarize


def _fmt_num(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.3g}"


def _noteworthy(diffs: pd.DataFrame) -> pd.DataFrame:
    rows = diffs[diffs["verdict"].isin(["differs", "error", "n/a"])]
    rows = rows.copy()
    rows["detail"] = [
        f"published ({r.message}); {r.explanation}" if r.framework == "expected"
        else (r.explanation or r.message or "") for r in rows.itertuples(index=False)]
    rows["max_abs"] = rows["max_abs"].map(_fmt_num)
    rows["max_ulp"] = rows["max_ulp"].map(_fmt_num)
    return rows[["step", "quantity", "framework", "verdict", "max_abs", "max_ulp", "detail"]]


def _collapse_na(rows: pd.DataFrame) -> pd.DataFrame:
    """n/a rows repeat the same reason for every step: keep the first of each."""
    na = rows[rows["verdict"] == "n/a"].drop_duplicates(["framework", "detail"])
    return pd.concat([rows[rows["verdict"] != "n/a"], na]).sort_values(["step", "quantity"],
                                                                       kind="stable")


def _summary(report) -> pd.DataFrame:
    d = report.diffs[report.diffs["framework"] != "expected"]
    counts = d.groupby(["framework", "verdict"]).size().unstack(fill_value=0)
    return counts.reindex(columns=["same", "differs", "error", "n/a"], fill_value=0)


def _header_lines(report) -> list[str]:
    lines = []
    for fid, meta in report.frameworks.items():
        if meta.get("available"):
            extra = f" ({'; '.join(meta['notes'])})" if meta.get("notes") else ""
            err = f" — {meta['error']}" if meta.get("error") else ""
            lines.append(f"{fid} {meta.get('version') or ''}{extra}{err}")
        else:
            lines.append(f"{fid}: unavailable (pip install \"xbn[{meta.get('extra')}]\")")
    return lines


def render_table(report) -> str:
    out = [f"reference: {report.reference}; same = within {report.k:g} eps of the dtype "
           "at the reference array's scale"]
    out += ["frameworks: " + ", ".join(_header_lines(report))]
    for s in report.scenarios:
        out.append("")
        out.append(f"== {s.name}: {s.title}" if s.title else f"== {s.name}")
        table = side_by_side(report.obs, report.diffs, s.name,
                             [report.reference, *[f for f in report.frameworks
                                                  if f != report.reference], "expected"])
        out.append(table.to_string())
        rows = _collapse_na(_noteworthy(report.diffs[report.diffs["scenario"] == s.name]))
        if not rows.empty:
            out.append("")
            out.append(rows.to_string(index=False, max_colwidth=90))
    out.append("")
    out.append("verdicts per framework:")
    out.append(_summary(report).to_string())
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


def render_markdown(report, intro: str = "", profile: str = "") -> str:
    out = ["# xbn report", ""]
    if intro:
        out += [intro, ""]
    out += [f"Reference: `{report.reference}`. A value is **same** when every element is within "
            f"{report.k:g} × eps(dtype) × (largest magnitude of the reference array); ✗ marks "
            "**differs**. Values: first elements, 8 significant digits.", ""]
    out += ["## Frameworks", ""] + [f"- {line}" for line in _header_lines(report)] + [""]
    out += ["## Verdicts per framework", "", _md_table(_summary(report)), ""]
    if profile:
        out += [profile, ""]
    for s in report.scenarios:
        out += [f"## {s.name}", ""]
        if s.title:
            out += [f"**{s.title}**", ""]
        if s.description:
            out += [s.description.strip(), ""]
        table = side_by_side(report.obs, report.diffs, s.name,
                             [report.reference, *[f for f in report.frameworks
                                                  if f != report.reference], "expected"])
        out += [_md_table(table), ""]
        rows = _collapse_na(_noteworthy(report.diffs[report.diffs["scenario"] == s.name]))
        if not rows.empty:
            out += ["Differences, errors and n/a:", "", _md_table(rows, index=False), ""]
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


__all__ = ["matrix_text", "render_markdown", "render_table", "summarize"]
