"""The HTML report and its drift plots, from a real (fast) run: numpy against plugin frameworks
made of the reference with other switches (tests/plugins/drifting.py)."""

from __future__ import annotations

import math
import re

import pytest

from xbn.comparison.drift import drift_table, positions
from xbn.profiles.facts import profile_matrix
from xbn.report import render
from xbn.report.html_parts import anchor
from xbn.report.plots import drift_figure, has_drift
from xbn.report.view import column_order

from .plugins.drifting import small_report


@pytest.fixture(scope="module")
def report():
    with pytest.MonkeyPatch.context() as mp:
        yield small_report(mp, ("seed-keras", "batch-of-one", "variance-update-n5", "bare-call"))


@pytest.fixture(scope="module")
def page(report):
    return render(report, "html", matrix=profile_matrix())


def test_page_fetches_nothing(page):
    """Self-contained: no script, stylesheet or image is loaded from anywhere."""
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"\bsrc\s*=", page)
    assert not re.search(r"url\((?!#)", page)  # only the plots' own clip paths: url(#id)
    hrefs = re.findall(r"href=['\"]([^'\"]*)['\"]", page)
    assert hrefs and all(h.startswith("#") for h in hrefs), [h for h in hrefs if h[:1] != "#"]


def test_every_link_lands_on_an_element_and_ids_are_unique(page):
    ids = re.findall(r"\bid=['\"]([^'\"]+)['\"]", page)
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})[:5]
    targets = {h[1:] for h in re.findall(r"href=['\"](#[^'\"]*)['\"]", page)}
    targets |= set(re.findall(r"url\(#([^)]+)\)", page))
    assert not targets - set(ids)


def test_heatmap_has_a_cell_per_scenario_and_framework(report, page):
    heat = page[page.index("class='heatmap'"):page.index("</table>", page.index("class='heatmap'"))]
    for s in ("seed-keras", "batch-of-one", "variance-update-n5", "bare-call"):
        for f in ("f32", "bessel", "strict"):
            assert f"href='#{anchor(s, f)}'" in heat
    # strict raises on a batch of one: that cell is red; f32 agrees on variance-update-n5
    assert f"<td class='v-error'><a href='#{anchor('batch-of-one', 'strict')}'" in heat
    assert f"<td class='v-same'><a href='#{anchor('variance-update-n5', 'f32')}'" in heat
    fw_order = re.findall(r"<th class='fw'>([^<]+)</th>", heat)
    assert fw_order == [c for c in column_order(report) if c not in ("numpy", "expected")]


def test_values_are_whole_on_demand_and_errors_carry_their_message(page):
    section = page[page.index(f"id='{anchor('bare-call')}'"):]
    section = section[:section.index("</section>")]
    assert "<summary>[4.421809, 7.6417885, … (16)]</summary>" in section
    whole = re.search(r"<code class='whole'>([^<]+)</code>", section).group(1)
    assert whole.startswith("[[4.421809, 7.6417885], [") and whole.count(",") == 15
    one = page[page.index(f"id='{anchor('batch-of-one')}'"):]
    assert "<summary>error</summary><div class='msg'>ValueError: " in one


def test_each_scenario_has_its_plot_tables_and_explanations(report, page):
    for s in report.scenarios:
        start = page.index(f"<section id='{anchor(s.name)}'")
        section = page[start:page.index("</section>", start)]
        assert "class='values'" in section
        assert "class='diffs'" in section or "Every framework agrees" in section
        assert ("<svg" in section) == has_drift(report.drift, s.name)
    seed = page[page.index(f"<section id='{anchor('seed-keras')}'"):]
    assert "<svg" in seed[:seed.index("</section>")]
    assert "precision=native (bit-exact)" in page  # f32's explanation
    assert "The semantics matrix" in page


def test_page_is_reproducible(report, page):
    assert render(report, "html", matrix=profile_matrix()) == page


def test_drift_measures_every_framework_per_step(report):
    d = report.drift
    assert set(d["framework"]) == {"f32", "bessel", "strict", "expected"}
    seed = d[(d["scenario"] == "seed-keras") & (d["framework"] == "f32")
             & (d["quantity"] == "moving_variance")].set_index("x")
    # float32 rounding: far from 0 after a thousand updates, but within ~100 ULP
    assert seed.loc[1, "max_abs"] > 0 and 0 < seed.loc[1, "max_ulp"] < 1000
    err = d[(d["scenario"] == "batch-of-one") & (d["framework"] == "strict")
            & (d["quantity"] == "output") & (d["step"] == 0)]
    assert err["status"].tolist() == ["error"] and math.isnan(err["max_abs"].iloc[0])


def _obs(framework, step, rep, mean, op="call"):
    return {"scenario": "traced", "step": step, "rep": rep, "op": op, "framework": framework,
            "quantity": "moving_mean", "status": "ok", "value": [mean], "dtype": "float32",
            "message": None}


def test_repetitions_become_the_x_axis():
    """Observations that carry ``rep`` (a traced step) are one point each."""
    obs = []
    for rep in range(4):
        obs += [_obs("numpy", 1, rep, 1.0 - 0.1 ** rep), _obs("f32", 1, rep, 1.0 - 0.1 ** rep + 1e-7 * rep)]
    obs += [_obs("numpy", 0, None, 0.5), _obs("f32", 0, None, 0.5),
            _obs("numpy", 2, None, 1.0, "predict"), _obs("f32", 2, None, 1.0 + 1e-6, "predict")]
    where = positions(obs)
    assert [where[("traced", 1, r)] for r in range(4)] == [1, 2, 3, 4]
    assert where[("traced", 0, math.inf)] == 0 and where[("traced", 2, math.inf)] == 5
    d = drift_table(obs, "numpy")
    assert list(d.sort_values("x")["x"]) == [0, 1, 2, 3, 4, 5]
    assert d.set_index("x").loc[2, "rep"] == 1 and d.set_index("x").loc[3, "max_abs"] > 0
    fig = drift_figure(d, "traced", ["numpy", "f32"], "numpy")
    assert fig.axes[0].get_xlabel() == "repetition (traced steps)"
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "f32" in labels


def test_steps_are_the_x_axis_without_repetitions(report):
    seed = next(s for s in report.scenarios if s.name == "seed-keras")
    fig = drift_figure(report.drift, "seed-keras", column_order(report), "numpy", seed.steps)
    assert fig.axes[0].get_xlabel() == "step"
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[1] == "1\ncall\n×1000"
    assert drift_figure(report.drift, "no-such", column_order(report), "numpy") is None
