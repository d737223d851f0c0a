"""``trace = true``: observations after every repetition, each with ``rep``; untraced
observations are exactly what they were, and every consumer pairs rows by rep.

The expectations are a derivation (a plain EMA of one batch from (0, 1)), torch driven by
hand, or the same scenario run without the trace key.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from xbn.adapters.base import run_scenario
from xbn.cli import cli
from xbn.comparison.diffs import COLUMNS, DIFF_COLUMNS, diff_table, observations_frame
from xbn.frameworks.registry import load_adapter
from xbn.scenario.loader import parse

X = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0], [2.0, 0.25]]
DOC = {"schema": 1, "name": "traced", "layer": {"features": 2, "momentum": 0.9},
       "inputs": {"x": X, "t": [[0.5, -0.5]] * 4},
       "steps": [{"op": "call", "input": "x", "training": True, "repeat": 4, "trace": True},
                 {"op": "fit", "input": "x", "target": "t", "repeat": 2, "trace": True,
                  "optimizer": {"name": "sgd", "lr": 0.1}},
                 {"op": "predict", "input": "x"}]}


def scenario(trace: bool = True):
    doc = copy.deepcopy(DOC)
    if not trace:
        for step in doc["steps"]:
            step.pop("trace", None)
    return parse(doc)


def observe(framework: str, trace: bool = True) -> list[dict]:
    return list(run_scenario(load_adapter(framework), scenario(trace)))


def test_every_repetition_is_observed_with_its_rep():
    obs = observe("numpy")
    assert {(o["step"], o.get("rep")) for o in obs} == \
        {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, None)}
    assert all("rep" not in o for o in obs if o["step"] == 2)
    x = np.asarray(X)
    for k in range(4):  # derivation: a plain EMA of one batch from 0 is (1 - 0.9^(k+1)) mean
        (mm,) = [o for o in obs if o.get("rep") == k and o["step"] == 0
                 and o["quantity"] == "moving_mean"]
        np.testing.assert_allclose(mm["value"], (1 - 0.9 ** (k + 1)) * x.mean(0), rtol=1e-13)
        assert {o["quantity"] for o in obs if o.get("rep") == k and o["step"] == 0} == \
            {"output", "gamma", "beta", "moving_mean", "moving_variance"}
    losses = [o for o in obs if o["quantity"] == "loss"]
    assert [o["rep"] for o in losses] == [0, 1] and losses[0]["value"] != losses[1]["value"]


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_untraced_observations_are_exactly_as_before(framework):
    traced, plain = observe(framework), observe(framework, trace=False)
    assert all("rep" not in o for o in plain)
    last = {0: 3, 1: 1}  # a traced step's last repetition is the untraced step's observation
    kept = [{k: v for k, v in o.items() if k != "rep"} for o in traced
            if o.get("rep") is None or o["rep"] == last[o["step"]]]
    assert kept == plain


def test_torch_repetitions_match_torch_by_hand():
    obs = observe("torch")
    bn = torch.nn.BatchNorm1d(2, momentum=0.1, eps=1e-3)
    with torch.no_grad():
        for k in range(4):
            bn(torch.tensor(X, dtype=torch.float32))
            (o,) = [o for o in obs if o.get("rep") == k and o["quantity"] == "moving_variance"
                    and o["step"] == 0]
            np.testing.assert_array_equal(np.asarray(o["value"], np.float32),
                                          bn.running_var.numpy())


def test_frames_pair_rows_by_rep_and_add_the_column_only_when_traced():
    plain = observations_frame(observe("numpy", False) + observe("torch", False))
    assert list(plain.columns) == COLUMNS
    assert list(diff_table(plain).columns) == DIFF_COLUMNS
    frame = observations_frame(observe("numpy") + observe("torch"))
    assert "rep" in frame.columns and list(diff_table(frame).columns)[2] == "rep"
    d = diff_table(frame)
    means = d[(d["quantity"] == "moving_mean") & (d["step"] == 0)]
    # torch's running mean is the reference's at the same repetition (a plain EMA): a row
    # paired with another repetition would differ by 0.9^k
    assert list(means["rep"]) == [0, 1, 2, 3] and set(means["verdict"]) == {"same"}
    variances = d[(d["quantity"] == "moving_variance") & (d["step"] == 0)]
    assert set(variances["verdict"]) == {"differs"}  # torch feeds the unbiased variance
    assert d.loc[d["step"] == 2, "rep"].isna().all()


def test_snapshot_and_check_key_rows_by_rep(write_scenario, tmp_path):
    path = write_scenario(json.dumps(DOC), "traced.json")
    snap = tmp_path / "snap.json"
    runner = CliRunner()
    r = runner.invoke(cli, ["snapshot", str(path), "-f", "numpy", "--output", str(snap)])
    assert r.exit_code == 0, r.output
    doc = json.loads(snap.read_text())
    assert {o.get("rep") for o in doc["observations"] if o["step"] == 0} == {0, 1, 2, 3}
    assert all("rep" not in o for o in doc["observations"] if o["step"] == 2)
    r = runner.invoke(cli, ["check", str(snap)])
    assert r.exit_code == 0, r.output
    (o,) = [o for o in doc["observations"] if o.get("rep") == 2 and o["step"] == 0
            and o["quantity"] == "moving_mean"]
    o["value"][0] += 0.5
    snap.write_text(json.dumps(doc))
    r = runner.invoke(cli, ["check", str(snap), "--format", "json"])
    assert r.exit_code == 1, r.output
    (change,) = json.loads(r.stdout)["changes"]
    assert (change["step"], change["rep"], change["quantity"]) == (0, 2, "moving_mean")


# ------------------------------------------------------------------- edges: a zero-size batch

EMPTY = {"schema": 1, "name": "empty", "layer": {"features": 3, "momentum": 0.9},
         "inputs": {"e": {"normal": {}, "shape": [0, 3]}},
         "steps": [{"op": "call", "input": "e", "training": True}]}


def test_a_zero_size_batch_reaches_the_frameworks():
    from xbn.scenario.loader import ScenarioError

    s = parse(copy.deepcopy(EMPTY))
    assert s.inputs["e"].shape == (0, 3)
    bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-3)
    with torch.no_grad():  # torch's kernel returns early: statistics untouched, batch counted
        assert bn(torch.empty(0, 3)).shape == (0, 3)
    got = {o["quantity"]: o for o in run_scenario(load_adapter("torch"), s)}
    assert got["output"]["status"] == "ok" and got["output"]["value"] == []
    np.testing.assert_array_equal(got["moving_mean"]["value"], bn.running_mean.numpy())
    np.testing.assert_array_equal(got["moving_variance"]["value"], bn.running_var.numpy())
    with warnings.catch_warnings():  # the float64 mean of no rows: NaN, and no warning
        warnings.simplefilter("error", RuntimeWarning)
        ref = {o["quantity"]: o for o in run_scenario(load_adapter("numpy"), s)}
    assert np.isnan(ref["moving_mean"]["value"]).all()
    doc = copy.deepcopy(EMPTY)
    doc["inputs"]["t"] = {"constant": 0.0, "shape": [0, 3]}
    doc["steps"] = [{"op": "fit", "input": "e", "target": "t",
                     "optimizer": {"name": "sgd", "lr": 0.1}}]
    with pytest.raises(ScenarioError, match=r"steps\[0\]\.input: a zero-size batch"):
        parse(doc)
