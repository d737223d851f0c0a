"""Explanations name the switch that reproduces a difference, and say so when none does."""

from __future__ import annotations

import numpy as np

from xbn.adapters.base import run_scenario
from xbn.adapters.numpy.adapter import NumpyAdapter
from xbn.comparison import DEFAULT_K, diff_table, observations_frame
from xbn.explain import UNEXPLAINED, explain_diffs
from xbn.reference import Semantics
from xbn.scenario import load

from .conftest import MINIMAL

SPATIAL = """
schema = 1
name = "e"
[layer]
features = 2
layout = "NHWC"
momentum = 0.5
[inputs]
x = { normal = { mean = 1.0, std = 2.0 }, shape = [2, 3, 3, 2], seed = 5 }
[[steps]]
op = "call"
input = "x"
training = true
[[steps]]
op = "set"
trainable = false
[[steps]]
op = "call"
input = "x"
training = true
"""


def explain(scenario, framework: str, semantics: Semantics, tamper=None):
    """Observations of a pretend framework produced by the reference with other switches."""
    rows = list(run_scenario(NumpyAdapter("numpy"), scenario))
    theirs = list(run_scenario(NumpyAdapter(framework, semantics), scenario))
    if tamper:
        theirs = [tamper(o) for o in theirs]
    obs = observations_frame(rows + theirs)
    diffs = diff_table(obs, "numpy", DEFAULT_K)
    out = explain_diffs(diffs, obs, [scenario], "numpy", DEFAULT_K)
    return out[out["verdict"] != "same"]


def test_single_switch_is_named(write_scenario):
    scenario = load(write_scenario(SPATIAL))
    d = explain(scenario, "someframework", Semantics(variance_update="unbiased"))
    assert not d.empty
    assert set(d["explanation"]) == {"variance_update=unbiased (bit-exact)"}


def test_pair_of_switches_is_named(write_scenario):
    scenario = load(write_scenario(SPATIAL))
    d = explain(scenario, "someframework",
                Semantics(variance_update="unbiased", frozen_means_inference=False))
    assert set(d["explanation"]) == {
        "variance_update=unbiased, frozen_means_inference=false (bit-exact)"}


def test_native_rounding_is_bit_exact(write_scenario):
    seedlike = """
schema = 1
name = "n"
[layer]
features = 1
[inputs]
a = [[100.0], [100.5]]
[[steps]]
op = "call"
input = "a"
training = true
repeat = 1000
[[steps]]
op = "call"
input = "a"
training = false
"""
    scenario = load(write_scenario(seedlike))

    def as_float32(o):
        if o["value"] is not None:
            o["dtype"] = "float32"
        return o

    d = explain(scenario, "someframework", Semantics(precision="native", update_form="decrement"),
                tamper=as_float32)
    assert not d.empty  # 1000 float32 updates drift beyond 16 eps
    assert set(d["explanation"]) == {"precision=native, update_form=decrement (bit-exact)"}


def test_unexplained_difference_says_so(write_scenario):
    scenario = load(write_scenario(MINIMAL))

    def off_by_a_percent(o):
        if o["quantity"] == "output":
            o["value"] = (np.asarray(o["value"]) * 1.01).tolist()
        return o

    d = explain(scenario, "someframework", Semantics(), tamper=off_by_a_percent)
    assert list(d["explanation"]) == [UNEXPLAINED]
