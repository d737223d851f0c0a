"""Explanations name the switch that reproduces a difference, and say so when none does."""

from __future__ import annotations

import numpy as np
import pytest

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
    """Both switches are needed; each row names those that have acted by its step: the
    running variance differs from step 0, the frozen layer's training call at step 2."""
    scenario = load(write_scenario(SPATIAL))
    d = explain(scenario, "someframework",
                Semantics(variance_update="unbiased", frozen_means_inference=False))
    by_step = {s: set(d[d["step"] == s]["explanation"]) for s in set(d["step"])}
    assert by_step == {0: {"variance_update=unbiased (bit-exact)"},
                       1: {"variance_update=unbiased (bit-exact)"},
                       2: {"variance_update=unbiased, frozen_means_inference=false (bit-exact)"}}


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


def test_a_partial_explanation_names_the_switches_that_have_acted_by_its_step(write_scenario):
    """The pair of switches, the output of step 2 off by a percent: each other row's best
    setting is the pair, which misses that one row; rows before the freeze name only the
    variance, those of step 2 both."""
    scenario = load(write_scenario(SPATIAL))

    def off_at_step_2(o):
        if o["quantity"] == "output" and o["step"] == 2:
            o["value"] = (np.asarray(o["value"]) * 1.01).tolist()
        return o

    d = explain(scenario, "someframework",
                Semantics(variance_update="unbiased", frozen_means_inference=False), off_at_step_2)
    by_step = {s: set(d[d["step"] == s]["explanation"]) for s in set(d["step"])}
    partial = "; partial: reproduces 14 of 15 rows, not step 2 output"
    assert by_step == {0: {"variance_update=unbiased (bit-exact)" + partial},
                       1: {"variance_update=unbiased (bit-exact)" + partial},
                       2: {UNEXPLAINED, "variance_update=unbiased, frozen_means_inference=false "
                                        "(bit-exact)" + partial}}


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
            "moving_variance": (keep + (var * take).astype(f)).astype(f),
            "batch_mean": mean, "batch_variance": var}


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


GHOSTS = """
schema = 1
name = "ghost-indivisible"
[layer]
features = 2
momentum = 0.5
virtual_batch_size = 2
[inputs]
x = { normal = { mean = 1.0, std = 2.0 }, shape = [5, 2], seed = 211 }
y = { normal = { mean = 0.0, std = 1.0 }, shape = [4, 2], seed = 212 }
t = { normal = { mean = 0.0, std = 1.0 }, shape = [5, 2], seed = 213 }
[[steps]]
op = "call"
input = "x"
training = true
[[steps]]
op = "call"
input = "y"
training = true
[[steps]]
op = "grad"
input = "x"
training = true
weights = "t"
[[steps]]
op = "predict"
input = "x"
[[steps]]
op = "fit"
input = "x"
target = "t"
optimizer = { name = "sgd", lr = 0.1 }
batch_size = 4
"""


@pytest.mark.slow  # runs torch and tf-keras workers
def test_ghost_batches_that_do_not_divide_are_tf_keras_refusal(write_scenario):
    """virtual_batch_size 2 on batches of 5 (a call, a gradient, and a fit whose batches of 4
    and 1 fail on the second after the first moved the statistics), on tf-keras itself
    (measured by hand: tests/test_reference_edges.py). The reference answers with uneven
    ghost batches, not an error of its own; tf-keras' refusals are its declared
    ``ghost_batch_remainder=error``, which explains every tf-keras row, and the conformance
    suite's rule accepts tf-keras' rows against its profile."""
    from types import SimpleNamespace

    from tests import test_conformance
    from xbn.execution.runner import run

    scenario = load(write_scenario(GHOSTS))
    result = run([scenario], ["numpy", "tf-keras"], timeout=600)
    mine = [o for o in result.observations if o["framework"] == "numpy"]
    assert not [o for o in mine if o["status"] == "error"]
    theirs = [o for o in result.observations if o["framework"] == "tf-keras"]
    errors = {(o["step"], o["quantity"]) for o in theirs if o["status"] == "error"}
    assert {(0, "output"), (2, "grad_input"), (4, "loss")} <= errors
    assert all(o["origin"] in ("tensorflow", "tf_keras") for o in theirs if o["status"] == "error")
    obs = observations_frame(result.observations)
    diffs = diff_table(obs, "numpy", DEFAULT_K)
    out = explain_diffs(diffs, obs, [scenario], "numpy", DEFAULT_K)
    out = out[(out["framework"] == "tf-keras") & (out["verdict"] != "same")]
    assert set(out["verdict"]) == {"error", "differs"}
    assert {t.removesuffix(" (bit-exact)") for t in out["explanation"]} == \
        {"ghost_batch_remainder=error"}
    from xbn.profiles.facts import semantics_of

    profiled = list(run_scenario(NumpyAdapter("numpy", semantics_of("tf-keras")), scenario))
    refused = {(o["step"], o["quantity"]) for o in profiled if o["status"] == "error"}
    assert refused == errors
    assert {(o["origin"], o["message"]) for o in profiled if o["status"] == "error"} == {
        ("reference", f"ValueError: virtual_batch_size 2 does not divide the batch size {n}: "
                      "ghost batches refused") for n in (5, 1)}  # fit: batches of 4 and 1
    rows = {("tf-keras", scenario.name): theirs}
    test_conformance.test_framework_matches_its_profile(
        ([scenario], SimpleNamespace(frameworks={"tf-keras": {}}), rows), "tf-keras")


FREEZE_AND_MASK = """
schema = 1
name = "freeze-and-mask"
[layer]
features = 2
layout = "NLC"
momentum = 0.5
epsilon = 0.001
[inputs]
x = { normal = { mean = 1.0, std = 2.0 }, shape = [3, 4, 2], seed = 31 }
m = [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
[[steps]]
op = "call"
input = "x"
training = true
[[steps]]
op = "call"
input = "x"
training = true
mask = "m"
[[steps]]
op = "set"
trainable = false
[[steps]]
op = "call"
input = "x"
training = true
"""


def _switches(text: str) -> dict:
    return dict(part.split("=") for part in text.removesuffix(" (bit-exact)").split(", "))


@pytest.mark.slow  # runs torch and tf-keras workers
def test_each_row_names_the_switches_that_have_acted_by_its_step(write_scenario):
    """torch itself: a training call (its running variance is fed n/(n-1)), a masked training
    call (torch's BatchNorm takes no mask: n/a, its statistics stay where they were),
    trainable=False (torch has no such flag), a training call (torch still uses and moves
    the batch statistics). One setting reproduces every row; each row names only the part of
    it that has acted by its step, and that part alone reproduces every row up to it."""
    from xbn.comparison.diffs import agreement
    from xbn.execution.runner import run
    from xbn.explain.reruns import rerun_rows

    scenario = load(write_scenario(FREEZE_AND_MASK))
    result = run([scenario], ["numpy", "torch"], timeout=600)
    obs = observations_frame(result.observations)
    diffs = diff_table(obs, "numpy", DEFAULT_K)
    out = explain_diffs(diffs, obs, [scenario], "numpy", DEFAULT_K)
    out = out[(out["framework"] == "torch") & out["verdict"].isin(["differs", "error"])]
    named = {s: {tuple(sorted(_switches(t))) for t in out[out["step"] == s]["explanation"]}
             for s in set(out["step"])}
    assert named == {0: {("variance_update",)},  # before any mask or freeze
                     1: {("mask", "variance_update")},
                     2: {("mask", "variance_update")},  # the freeze itself moves nothing
                     3: {("frozen_means_inference", "mask", "variance_update")}}
    torch_rows = [o for o in result.observations if o["framework"] == "torch"
                  and o["status"] != "n/a" and o["quantity"] != "step"]
    for r in out.itertuples():
        setting = {k: {"false": False}.get(v, v) for k, v in _switches(r.explanation).items()}
        mine = rerun_rows(scenario, setting)
        for o in (o for o in torch_rows if o["step"] <= r.step):
            key = (o["step"], o["quantity"])
            assert agreement(o, mine[key], DEFAULT_K).agree, (r.explanation, key)


def test_an_error_raised_by_xbn_itself_is_never_explained(write_scenario):
    """torch's refusal of a batch of one, as if raised by xbn's adapter (origin xbn): a
    defect, which no setting reproduces, and no rounding bound either (a bound compared
    errors by status alone, and called any error within any other's interval)."""
    from xbn.profiles.facts import semantics_of

    def from_xbn(o):
        if o["status"] == "error":
            o["origin"] = "xbn"
        return o

    scenario = load(write_scenario(BATCH_OF_ONE))
    semantics = semantics_of("torch").with_(precision="float64")
    assert list(explain(scenario, "torch", semantics)["explanation"]) == [
        "bare_call=module_mode, batch_of_one=error"]
    d = explain(scenario, "torch", semantics, from_xbn)
    assert list(d["verdict"]) == ["error"]
    assert list(d["explanation"]) == [UNEXPLAINED]


def test_a_bound_explanation_names_the_switches_that_have_acted_by_its_step(write_scenario):
    """LARGE_MEAN's two-pass float32 rounding at a training call, then trainable=False and
    the same call again, from a framework that keeps training a frozen layer (flax's
    frozen_means_inference=false: batch statistics, the running ones moved again, in
    float32). The bound keeps the switch, which changes the reference's values at step 2;
    the rows of step 0 do not name it."""
    from xbn.profiles.facts import semantics_of

    text = LARGE_MEAN + '[[steps]]\nop = "set"\ntrainable = false\n' + \
        '[[steps]]\nop = "call"\ninput = "x"\ntraining = true\n'
    scenario = load(write_scenario(text))
    first = _tree_float32(scenario.inputs["x"], "two_pass")
    f = np.float32
    mean, var = first["batch_mean"], first["batch_variance"]
    second = {"output": first["output"],
              "moving_mean": (first["moving_mean"] * f(0.9) + (mean * f(0.1)).astype(f)).astype(f),
              "moving_variance": (first["moving_variance"] * f(0.9)
                                  + (var * f(0.1)).astype(f)).astype(f)}

    def tamper(o):
        values = {0: first, 1: first, 2: second}[o["step"]]
        if o["quantity"] in ("output", "moving_mean", "moving_variance"):
            o["value"] = values[o["quantity"]].astype(np.float64).tolist()
            o["dtype"] = "float32"
        return o

    d = explain(scenario, "flax", semantics_of("flax").with_(precision="float64"), tamper)
    texts = {(r.step, r.quantity): r.explanation for r in d.itertuples()}
    assert {q for s, q in texts if s == 2} >= {"output", "moving_mean"}
    for (step, _), t in texts.items():
        prefix = "frozen_means_inference=false, " if step == 2 else ""
        assert t.startswith(f"{prefix}precision=native: within the float32 rounding bound of "
                            "the two-pass variance (observed "), (step, t)
