"""Explanations name the switch that reproduces a difference, and say so when none does."""

from __future__ import annotations

import numpy as np

from xbn.adapters.base import run_scenario
from xbn.adapters.numpy.adapter import NumpyAdapter
from xbn.comparison.diffs import DEFAULT_K, diff_table, observations_frame
from xbn.explain.search import UNEXPLAINED, explain_diffs
from xbn.reference.batchnorm import Semantics
from xbn.scenario.loader import load

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
    with np.errstate(invalid="ignore"):  # a pretend one-pass framework takes sqrt(var < 0)
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


BATCH_OF_ONE = """
schema = 1
name = "b1"
[layer]
features = 3
layout = "NCL"
momentum = 0.9
epsilon = 1e-5
[inputs]
x = { uniform = { low = 0.0, high = 1.0 }, shape = [1, 3, 1], seed = 51 }
[[steps]]
op = "call"
input = "x"
[[steps]]
op = "set"
mode = "eval"
[[steps]]
op = "call"
input = "x"
"""


def test_an_explanation_keeps_the_rows_that_agree(write_scenario):
    """torch refuses a bare (train-mode) call on a batch of one, then answers the eval-mode
    bare call like the reference. ``bare_call=error`` reproduces the refusal but not the
    second call, which agrees: only torch's own pair reproduces every row."""
    scenario = load(write_scenario(BATCH_OF_ONE))
    d = explain(scenario, "someframework", Semantics(bare_call="module_mode", batch_of_one="error"))
    assert list(d["verdict"]) == ["error"]
    assert list(d["explanation"]) == ["bare_call=module_mode, batch_of_one=error"]


def test_the_declared_profile_is_preferred(write_scenario):
    """tf-keras' 4-D running variance is Bessel-corrected: ``variance_update=unbiased`` and its
    declared ``fused`` both reproduce every row; the declared one is named."""
    from xbn.profiles.facts import semantics_of

    scenario = load(write_scenario(SPATIAL))
    d = explain(scenario, "tf-keras", semantics_of("tf-keras").with_(precision="float64"))
    assert not d.empty
    assert set(d["explanation"]) == {"variance_update=fused (bit-exact)"}


def test_a_partial_explanation_names_the_rows_it_misses(write_scenario):
    scenario = load(write_scenario(SPATIAL))

    def off_at_step_2(o):
        if o["quantity"] == "output" and o["step"] == 2:
            o["value"] = (np.asarray(o["value"]) * 1.01).tolist()
        return o

    d = explain(scenario, "someframework", Semantics(variance_update="unbiased"), off_at_step_2)
    by_row = dict(zip(zip(d["step"], d["quantity"], strict=True), d["explanation"], strict=True))
    assert by_row.pop((2, "output")) == UNEXPLAINED
    # three steps, each one value (an output, or the set step's acceptance) and four statistics
    assert set(by_row.values()) == {"variance_update=unbiased (bit-exact); partial: reproduces "
                                    "14 of 15 rows, not step 2 output"}


LARGE_MEAN = """
schema = 1
name = "lm"
[layer]
features = 2
momentum = 0.9
epsilon = 1e-5
[inputs]
x = { normal = { mean = 10000.0, std = 1.0 }, shape = [64, 2], seed = 113 }
[[steps]]
op = "call"
input = "x"
training = true
"""


def _tree_float32(x: np.ndarray, algorithm: str, eps: float = 1e-5) -> dict:
    """One training step of a float32 BatchNorm that sums in a binary tree (the reference's
    numpy reduction over the batch axis adds one row at a time): output, and the running
    statistics from 0 and 1 with momentum 0.9."""
    f = np.float32

    def total(terms):
        if len(terms) == 1:
            return terms[0]
        half = len(terms) // 2
        return (total(terms[:half]) + total(terms[half:])).astype(f)

    x = x.astype(f)
    n = f(len(x))
    mean = (total(x) / n).astype(f)
    if algorithm == "two_pass":
        dev = (x - mean).astype(f)
        var = (total((dev * dev).astype(f)) / n).astype(f)
    else:
        var = ((total((x * x).astype(f)) / n).astype(f) - (mean * mean).astype(f)).astype(f)
    with np.errstate(invalid="ignore"):
        inv = (f(1) / np.sqrt((var + f(eps)).astype(f))).astype(f)
    out = ((x - mean).astype(f) * inv).astype(f)
    keep, take = f(0.9), f(0.1)
    return {"output": out, "moving_mean": (mean * take).astype(f),
            "moving_variance": (keep + (var * take).astype(f)).astype(f)}


def _computed_as(values: dict):
    def tamper(o):
        if o["step"] == 0 and o["quantity"] in values:
            o["value"] = values[o["quantity"]].astype(np.float64).tolist()
            o["dtype"] = "float32"
        return o

    return tamper


def test_one_pass_cancellation_is_explained_by_its_bound(write_scenario):
    """E[x^2] - E[x]^2 summed in another order than the rerun's: no rerun reproduces it, the
    one-pass formula's float32 bound holds it and the two-pass bound does not."""
    scenario = load(write_scenario(LARGE_MEAN))
    x = scenario.inputs["x"]
    fast = _tree_float32(x, "fast")
    sem = Semantics(precision="native", variance_algorithm="fast", inference_form="centered")
    d = explain(scenario, "keras-torch", sem, _computed_as(fast))
    assert set(d["quantity"]) >= {"output", "moving_variance"}
    for text in d["explanation"]:
        assert text.startswith("precision=native, variance_algorithm=fast: within the float32 "
                               "cancellation bound (observed "), text
    # a framework that declares the two-pass formula is not excused by the one-pass bound
    d = explain(scenario, "keras", sem, _computed_as(fast))
    assert not any("cancellation" in text for text in d["explanation"])


def test_two_pass_rounding_is_explained_by_its_bound(write_scenario):
    """Two-pass moments of a mean of 1e4 in another summation order: the mean's rounding moves
    the output beyond 16 eps of any rerun, within the two-pass bound."""
    from xbn.comparison.diffs import agreement

    scenario = load(write_scenario(LARGE_MEAN))
    values = _tree_float32(scenario.inputs["x"], "two_pass")
    for form in ("folded", "centered"):  # no rerun reproduces it: the mean rounds differently
        sem = Semantics(precision="native", inference_form=form)
        native = {o["quantity"]: o for o in run_scenario(NumpyAdapter("numpy", sem), scenario)
                  if o["step"] == 0}
        mine = {**native["output"], "value": values["output"].astype(np.float64).tolist()}
        assert not agreement(mine, native["output"]).agree
    d = explain(scenario, "keras", Semantics(precision="native"), _computed_as(values))
    texts = dict(zip(d["quantity"], d["explanation"], strict=True))
    assert texts["output"].startswith("precision=native: within the float32 rounding bound of "
                                      "the two-pass variance (observed ")
