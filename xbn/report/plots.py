"""Drift plots (matplotlib): per framework, the distance of the running mean and variance to
the reference at every step, and the largest ULP distance of any quantity.

A distance on a log scale shows what a verdict cannot: float32 rounding creeps up by orders of
magnitude over a long run, while a semantic difference jumps at one step and stays. A distance
of 0 (the reference's value to the last bit) has no logarithm: it is drawn on the dotted line
at the bottom of each panel. When observations carry ``rep`` (a traced step records every
repetition), the x axis counts repetitions instead of steps.

Plots format a finished ``drift`` table (``xbn.comparison.drift``); matplotlib is imported only when a
figure is drawn, and never through pyplot, so no GUI backend or global state is touched.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pandas as pd

PANELS = (("moving_mean", "running mean: |framework − {ref}|"),
          ("moving_variance", "running variance: |framework − {ref}|"),
          (None, "largest ULP distance, any quantity"))
MARKERS = "osD^vPX*<>ph"
LINES = ("-", "--", "-.", ":")
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "xbn", "font.size": 9,
         "axes.titlesize": 9, "axes.spines.top": False, "axes.spines.right": False,
         "path.simplify": True}


def has_drift(drift: pd.DataFrame | None, scenario: str) -> bool:
    """Whether a scenario has a trajectory to draw: running statistics measured at two or more
    positions for some framework."""
    if drift is None or drift.empty:
        return False
    d = drift[(drift["scenario"] == scenario)
              & drift["quantity"].isin(["moving_mean", "moving_variance"])
              & drift["max_abs"].notna()]
    return bool((d.groupby("framework")["x"].nunique() >= 2).any())


def _floor(values: np.ndarray) -> float:
    positive = values[np.isfinite(values) & (values > 0)]
    if not positive.size:
        return 0.1
    return 10.0 ** (math.floor(math.log10(float(positive.min()))) - 1)


def _zero_label(floor: float):
    """Tick labels of a log axis whose lowest line stands for a distance of 0, in plain text
    ("1e-5"): matplotlib's default log labels are mathtext ("$10^{-5}$"), whose parser took
    about half of the time of writing the report's 49 plots."""
    def label(value: float, pos=None) -> str:
        if math.isclose(value, floor, rel_tol=1e-9):
            return "0"
        exponent = math.log10(value) if value > 0 else math.nan
        if math.isfinite(exponent) and math.isclose(exponent, round(exponent), abs_tol=1e-9):
            return "1" if round(exponent) == 0 else f"1e{round(exponent)}"
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return label


def _series(d: pd.DataFrame, quantity: str | None, column: str) -> pd.Series:
    """One value per x: the quantity's distance, or the largest over all quantities."""
    rows = d if quantity is None else d[d["quantity"] == quantity]
    return rows.groupby("x")[column].max(min_count=1)


def _underlays(series: dict[str, pd.Series]) -> dict[str, int]:
    """How many later frameworks lie exactly on each framework's line (the same values at the
    same positions): that many bands of its colour are drawn under theirs."""
    keys = {f: tuple(s.dropna().items()) for f, s in series.items()}
    names = list(series)
    return {f: sum(1 for g in names[i + 1:] if keys[g] == keys[f] and keys[f])
            for i, f in enumerate(names)}


def drift_figure(drift: pd.DataFrame, scenario: str, frameworks: list[str], reference: str,
                 steps: list | None = None):
    """A figure of three panels for one scenario, or None when it has no trajectory.
    ``frameworks`` fixes each framework's colour and marker (pass the same list for every
    scenario); ``steps`` (the scenario's ``Step`` list) labels the x axis with the ops."""
    if not has_drift(drift, scenario):
        return None
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import (
        FuncFormatter,
        LogLocator,
        MaxNLocator,
        NullLocator,
    )

    d = drift[drift["scenario"] == scenario]
    traced = d["rep"].notna().any()
    others = [f for f in frameworks if f != reference and f != "expected"]
    shown = [f for f in others if f in set(d["framework"])]
    if "expected" in set(d["framework"]):
        shown.append("expected")
    palette = matplotlib.colormaps["tab10"].colors
    with matplotlib.rc_context(STYLE):
        # fixed margins, the legend in the right one: a layout engine ("constrained") would
        # measure every label of every figure first, a third of the time of writing them
        fig = Figure(figsize=(11, 3.1))
        labelled = bool(steps) and not traced and len(steps) <= 12  # "3\ncall\n×1000" ticks
        # the legend's column is wide enough for "expected (published)" in a browser's own
        # font (the page's SVG keeps text as text), not only in matplotlib's
        fig.subplots_adjust(left=0.065, right=0.775, bottom=0.26 if labelled else 0.16,
                            top=0.9, wspace=0.3)
        axes = fig.subplots(1, 3)
        for ax, (quantity, title) in zip(axes, PANELS, strict=True):
            column = "max_abs" if quantity else "max_ulp"
            series = {f: _series(d[d["framework"] == f], quantity, column) for f in shown}
            values = np.concatenate([s.to_numpy(dtype=float) for s in series.values()] or [[]])
            floor = _floor(values)
            under = _underlays(series)
            for f, s in series.items():
                if s.dropna().empty:
                    continue
                y = s.to_numpy(dtype=float)
                y = np.where(y == 0, floor, y)
                if f == "expected":
                    ax.plot(s.index, y, linestyle="none", marker="x", color="black",
                            markersize=7, label="expected (published)")
                    continue
                # hollow markers of shrinking size and varied dashes: lines that coincide
                # (frameworks that agree with each other) stay visible as nested shapes
                # a line that others lie exactly on is drawn wider, under them, so each
                # framework's colour still shows as a band around the one above it
                i = others.index(f) if f in others else len(others)
                ax.plot(s.index, y, marker=MARKERS[i % len(MARKERS)], markersize=8 - 0.5 * (i % 8),
                        markerfacecolor="none", markeredgewidth=1.2,
                        linestyle=LINES[i % len(LINES)], linewidth=1.3 + 1.6 * under[f],
                        alpha=0.9, zorder=2 - 0.01 * under[f],
                        color=palette[i % len(palette)], label=f)
            ax.set_yscale("log")
            ax.set_ylim(bottom=floor / 2)
            ax.yaxis.set_major_locator(LogLocator(base=10, numticks=7))
            ax.yaxis.set_minor_locator(NullLocator())  # fewer labels to lay out: much faster
            ax.axhline(floor, color="0.6", linestyle=":", linewidth=1)
            ax.yaxis.set_major_formatter(FuncFormatter(_zero_label(floor)))
            ax.set_title(title.format(ref=reference), loc="left")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
            ax.set_xlabel("repetition (traced steps)" if traced else "step")
            ax.grid(True, which="major", axis="y", color="0.92")
            if labelled:
                ax.set_xticks([s.index for s in steps],
                              [f"{s.index}\n{s.op}" + (f"\n×{s.repeat}" if s.repeat > 1 else "")
                               for s in steps], fontsize=7)
        axes[0].set_ylabel("distance (log scale)")
        axes[2].set_ylabel("ULP (log scale)")
        handles, labels = axes[0].get_legend_handles_labels()
        for ax in axes[1:]:
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(h)
                    labels.append(label)
        legend = fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.785, 0.95),
                            frameon=False)
        for line in legend.get_lines():  # one width in the legend: the bands are the plot's
            line.set_linewidth(1.3)
    return fig


def stats_figure(obs: pd.DataFrame, scenario: str, frameworks: list[str]):
    """The running mean and variance of channel 0 as each framework holds them after every
    recorded repetition of the scenario's traced steps (their values, not distances: a
    debiased or seeded average sits at the batch statistics from the first repetition while a
    plain one climbs towards them); None when the scenario has no traced step."""
    if "rep" not in obs.columns:
        return None
    d = obs[(obs["scenario"] == scenario) & obs["rep"].notna() & (obs["status"] == "ok")
            & obs["quantity"].isin(["moving_mean", "moving_variance"])]
    if d.empty:
        return None
    from matplotlib.figure import Figure

    def at(rows: pd.DataFrame) -> list[tuple[int, int]]:
        return [(int(s), int(r)) for s, r in zip(rows["step"], rows["rep"], strict=True)]

    x = {k: i for i, k in enumerate(sorted(set(at(d))))}
    with _matplotlib().rc_context(STYLE):
        fig = Figure(figsize=(8, 2.6), layout="constrained")
        for ax, quantity in zip(fig.subplots(1, 2), ("moving_mean", "moving_variance"),
                                strict=True):
            for i, f in enumerate(f for f in frameworks if f in set(d["framework"])):
                rows = d[(d["framework"] == f) & (d["quantity"] == quantity)]
                ax.plot([x[k] for k in at(rows)],
                        [float(np.ravel(v)[0]) for v in rows["value"]],
                        marker=MARKERS[i % len(MARKERS)], markerfacecolor="none",
                        linestyle=LINES[i % len(LINES)], linewidth=1.2, label=f)
            ax.set_title(f"{quantity.replace('_', ' ')}, channel 0", loc="left")
            ax.set_xlabel("repetition (traced steps)")
        fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside right upper",
                   frameon=False)
    return fig


def _matplotlib():
    import matplotlib

    return matplotlib


def to_svg(fig, prefix: str = "") -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog, no date: reproducible).
    matplotlib names clip paths and markers by a hash of their content, so two figures of one
    page would share ids: ``prefix`` makes them unique to this figure."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    if prefix:
        text = re.sub(r'(\bid="|url\(#|href="#)', lambda m: m.group(1) + prefix, text)
    return text


def save(fig, path, dpi: int = 110) -> None:
    """Write the figure to ``path`` (.png or .svg, from the extension), reproducibly."""
    import matplotlib

    suffix = str(path).rsplit(".", 1)[-1].lower()
    metadata = {"Date": None} if suffix == "svg" else {"Software": None} if suffix == "png" \
        else None
    with matplotlib.rc_context(STYLE):
        fig.savefig(path, dpi=dpi, metadata=metadata)
