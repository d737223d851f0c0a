"""``xbn verify --per-layer --format html``: one self-contained page with a per-layer drift plot.

The plot shows, for every BN pair in execution order, each quantity's largest difference in
units of its tolerance (1 = the edge of agreement, log scale): a correct port stays below the
line everywhere; a planted mistake jumps above it at the first diverging BN, and every layer
after it inherits the jump. That shape is why the first BN whose *input* still agrees is the
one to look at. The image is an inline PNG (matplotlib, Agg): nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..port.per_layer_model import PerLayerReport

SERIES = (("eval", "output", "eval output"), ("train", "output", "train output"),
          ("train", "running_mean", "running mean"), ("train", "running_var", "running var (raw: torch's n/(n-1) included)"))
FLOOR = 1e-3  # ratios below this (and exact agreement) are drawn at the floor


def drift_png(report: PerLayerReport) -> bytes:
    """The per-layer drift plot as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    xs = [p.index for p in report.layers]
    for mode, quantity, label in SERIES:
        ys = []
        for p in report.layers:
            c = p.check(mode, quantity)
            ratio = (c.max_abs / c.tolerance) if c and c.max_abs is not None and c.tolerance else 0
            ys.append(max(ratio, FLOOR))
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    if report.first is not None:
        ax.axvline(report.first, color="red", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("BatchNorm (execution order)")
    ax.set_ylabel("max |A - B| / tolerance")
    ax.set_xticks(xs)
    ax.set_xticklabels([p.a for p in report.layers], rotation=60, ha="right", fontsize=7)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def report_html(report: PerLayerReport) -> str:
    from ..port.per_layer_text import HEAD, cause_lines, rows

    img = base64.b64encode(drift_png(report)).decode()
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEAD)
    body = "".join("<tr" + (' class="first"' if report.first == i else "") + ">"
                   + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for i, r in enumerate(rows(report)))
    cause = html.escape("\n".join(cause_lines(report)))
    title = html.escape(f"Per-layer verification: {report.a} vs {report.b}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}tr.first td{{background:#fde2e2}}
pre{{background:#f6f6f6;padding:.6em}}</style></head><body>
<h1>{title}</h1>
<p>Tolerance: k = {report.k:g} eps(float32) x max|A|. ~: expected difference; ✗: differs.</p>
<img alt="per-layer drift: max |A - B| / tolerance per BatchNorm" src="data:image/png;base64,{img}">
<pre>{cause}</pre>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
</body></html>
"""
