"""The drift figure: frameworks whose lines coincide stay visible, and the legend has room."""

from __future__ import annotations

import numpy as np
import pandas as pd

from xbn.report.plots import drift_figure

FRAMEWORKS = ["numpy", "torch", "keras", "keras-jax", "keras-torch", "tf-keras", "flax"]


def _drift(values: dict[str, float]) -> pd.DataFrame:
    rows = [dict(scenario="s", x=x, step=x, rep=np.nan, op="call", framework=f, quantity=q,
                 dtype="float32", status="ok", max_abs=v, max_ulp=v * 1e4)
            for f, v in values.items() for x in range(4)
            for q in ("moving_mean", "moving_variance", "output")]
    return pd.DataFrame(rows)


def test_coinciding_lines_are_drawn_as_nested_bands():
    same = {"torch": 1.0, "keras": 1e-4, "keras-jax": 1e-4, "keras-torch": 1e-4, "flax": 1e-6}
    fig = drift_figure(_drift(same), "s", FRAMEWORKS, "numpy")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")}
    widths = [lines[f].get_linewidth() for f in ("keras", "keras-jax", "keras-torch")]
    assert widths[0] > widths[1] > widths[2], widths  # each visible around the one above it
    assert lines["torch"].get_linewidth() == lines["flax"].get_linewidth() == widths[2]
    assert {ln.get_linewidth() for ln in fig.legends[0].get_lines()} == {widths[2]}


def test_the_legend_leaves_room_for_a_wider_font():
    """The page keeps SVG text as text, drawn in the browser's font: the longest label must
    end well inside the figure in matplotlib's own measure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    values = {f: 10.0 ** -i for i, f in enumerate(FRAMEWORKS[1:])}
    fig = drift_figure(_drift(values), "s", FRAMEWORKS, "numpy")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    legend = fig.legends[0].get_window_extent(canvas.get_renderer())
    assert fig.bbox.x1 - legend.x1 > 0.08 * fig.bbox.width


def test_terminal_details_are_cut_at_a_word():
    from xbn.report.table_out import DETAIL_WIDTH, cut_at_word

    text = "frozen_means_inference=false, ema=debiased, initial_variance=0.0, " \
           "precision=native, inference_form=centered (bit-exact)"
    cut = cut_at_word(text, DETAIL_WIDTH)
    assert len(cut) <= DETAIL_WIDTH and cut.endswith("…")
    assert text.startswith(cut[:-1]) and text[len(cut) - 1] in " ,"  # the cut is between words
    assert cut_at_word("short", DETAIL_WIDTH) == "short" and cut_at_word(None, 5) is None
