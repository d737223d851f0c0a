"""The HTML report: one self-contained page (inline CSS and SVG plots, no script, nothing
fetched when it is viewed) that can be mailed, attached to a CI run or opened from disk.

Top to bottom: the reference and notes, the frameworks, the verdict counts, a verdict heatmap
(scenario × framework, each cell a link to that framework's column in the scenario's section),
the semantics matrix, then per scenario its drift plot, the side-by-side values (whole arrays
and messages on click) and what differs with its explanation. ``xbn run --format html`` and
``xbn report`` (index.html) both write this page, from the report's view (``view.py``) like
every other format.
"""

from __future__ import annotations

from html import escape

from .figures import drawn
from .html_parts import (
    anchor,
    differences_table,
    heatmap,
    legend,
    matrix_table,
    replica_table,
    summary_table,
    values_table,
)
from .html_style import CSS
from .replicas import TITLE as REPLICAS_TITLE
from .view import ReportView, ScenarioView

PLOT_CAPTION = (
    "Distance of each framework's running mean and running variance to the {ref} value after "
    "every {unit}, and the largest distance in ULPs (units in the last place of the dtype) of "
    "any quantity. Log scale: float32 rounding creeps up by orders of magnitude, a semantic "
    "difference jumps at one step. The dotted line is a distance of 0 (bit-identical to the "
    "reference); a gap is an error or n/a.")


STATS_CAPTION = ("The running mean and running variance of channel 0 as each framework holds "
                 "them after every recorded repetition (trace = true).")


def _plot(view: ReportView, scenario: ScenarioView) -> str:
    return _drift_plot(view, scenario) + _stats_plot(view, scenario)


def _stats_plot(view: ReportView, scenario: ScenarioView) -> str:
    """The running statistics themselves over a traced scenario's repetitions."""
    from .plots import stats_figure, to_svg

    fig = stats_figure(view.observations, scenario.name, view.columns)
    if fig is None:
        return ""
    return (f"<figure class='plot'>{to_svg(fig, anchor(scenario.name) + '-stats-')}"
            f"<figcaption>{STATS_CAPTION}</figcaption></figure>")


def _drift_plot(view: ReportView, scenario: ScenarioView) -> str:
    from .plots import drift_figure, has_drift, to_svg

    drift, reference = view.drift, view.header.reference
    if not has_drift(drift, scenario.name):
        return ""
    fig = drift_figure(drift, scenario.name, view.columns, reference, scenario.steps)
    traced = drift.loc[drift["scenario"] == scenario.name, "rep"].notna().any()
    caption = PLOT_CAPTION.format(ref=escape(reference),
                                  unit="recorded repetition" if traced else "step")
    return (f"<figure class='plot'>{to_svg(fig, anchor(scenario.name) + '-')}<figcaption>{caption}</figcaption></figure>")


def _scenario(s: ScenarioView, figures: dict[str, str]) -> str:
    parts = [f"<section id='{anchor(s.name)}' class='scenario'>",
             f"<h2>{escape(s.name)} <a class='up' href='#heatmap' title='back to the heatmap'>"
             "↑</a></h2>"]
    if s.title:
        parts.append(f"<p class='title'>{escape(s.title)}</p>")
    if s.description:
        parts.append(f"<p class='desc'>{escape(s.description.strip())}</p>")
    parts.append(figures[s.name])
    parts.append("<h3>Values</h3>")
    parts.append(values_table(s))
    parts.append("<h3>Differences and explanations</h3>")
    parts.append(differences_table(s))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def render(view: ReportView, matrix: dict | None = None, intro: str = "") -> str:
    """The page for a report's view; ``matrix`` (``profile_matrix()``) adds the semantics
    matrix, limited to the report's frameworks; ``intro``: a paragraph under the title."""
    header = view.header
    toc = "".join(f"<li><a href='#{anchor(s.name)}'>{escape(s.name)}</a></li>"
                  for s in view.scenarios)
    notes = "".join(f"<p class='note'><strong>Note:</strong> {escape(n)}</p>"
                    for n in header.notes)
    frameworks = "".join(f"<li>{escape(line)}</li>" for line in header.frameworks)
    section = view.replicas
    parts = [
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>xbn report</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>xbn report</h1>",
        f"<p>{escape(intro)}</p>" if intro else "",
        f"<p>Reference: <code>{escape(header.reference)}</code>. A value is <b>same</b> when "
        f"every element is within {header.k:g} × eps(dtype) × scale, the scale being the "
        "larger of the reference array's largest magnitude and that of the terms that produced "
        "it (so a cancellation to zero is not a difference); ✗ marks <b>differs</b>. Values show their first elements: click one "
        "to see the whole array, or an <b>error</b>/<b>n/a</b> to read the message.</p>",
        notes,
        "<nav><b>Contents:</b> <a href='#heatmap'>verdict heatmap</a> · "
        "<a href='#verdicts'>verdicts per framework</a> · <a href='#frameworks'>frameworks</a>"
        + (" · <a href='#matrix'>semantics matrix</a>" if matrix else "")
        + (f" · <a href='#replicas'>{REPLICAS_TITLE[0].lower() + REPLICAS_TITLE[1:]}</a>" if section else "")
        + f"<details><summary>scenarios ({len(view.scenarios)})</summary><ol>{toc}</ol>"
        "</details></nav></header><main>",
        "<section id='heatmap'><h2>Verdict heatmap</h2>",
        "<p>One cell per scenario and framework: its colour is the worst verdict among that "
        "framework's values in the scenario, its number how many are not <b>same</b> "
        "(✓: all same). Click a cell to open the scenario at that framework's column.</p>",
        legend(), f"<div class='scroll'>{heatmap(view)}</div></section>",
        "<section id='verdicts'><h2>Verdicts per framework</h2>",
        summary_table(view), "</section>",
        f"<section id='frameworks'><h2>Frameworks</h2><ul>{frameworks}</ul></section>",
    ]
    if matrix:
        parts += ["<section id='matrix'><h2>The semantics matrix</h2>",
                  "<p>Each framework's value for every switch of the reference model "
                  "(<code>xbn explain</code>; <code>xbn explain ID</code> gives the source of "
                  "each value). Highlighted: a value other than the reference model's "
                  "(<code>numpy</code>). The explanations search these switches.</p>",
                  matrix_table(matrix, ["numpy", *view.frameworks]), "</section>"]
    if section is not None:
        parts.append(replica_table(section))
    figures = drawn(view, _plot)
    parts += [_scenario(s, figures) for s in view.scenarios]
    parts += ["</main></body></html>"]
    return "\n".join(p for p in parts if p) + "\n"
