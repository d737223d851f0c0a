"""Non-finite input values: NaN and infinities in a scenario's literal inputs.

The loader reads TOML's ``nan``/``inf`` and strict JSON's "NaN"/"Infinity"/"-Infinity"; the
reference models what a masked NaN does with the switch ``masked_nonfinite`` (derived here in
plain numpy); the comparison calls NaN at the same places ``same``. What each framework does is
measured by hand in tests/adapters/test_nonfinite_masks.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from xbn.scenario.loader import Scenario, ScenarioError, load

from .conftest import MINIMAL

NAN_X = "x = [[1.0, nan], [3.0, 5.0], [-inf, inf]]"
PADDED = """
schema = 1
name = "p"
[layer]
features = 2
layout = "NLC"
momentum = 0.5
[inputs]
x = [[[1.0, 5.0], [2.0, 5.5], [nan, nan]], [[3.0, 4.0], [-inf, inf], [7.0, 3.5]]]
m = [[1, 1, 0], [1, 0, 1]]
w = [[[0.5, -1.0], [1.5, 0.25], [2.0, -0.5]], [[-0.75, 1.0], [0.5, 0.5], [1.0, -2.0]]]
[[steps]]
op = "grad"
input = "x"
training = true
weights = "w"
mask = "m"
"""


def _minimal(text: str) -> str:
    return MINIMAL.replace("x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]", text)


# ------------------------------------------------------------------------------ loading


def test_toml_nan_and_infinities_load(write_scenario):
    x = load(write_scenario(_minimal(NAN_X))).inputs["x"]
    assert np.isnan(x[0, 1]) and x[2, 0] == -np.inf and x[2, 1] == np.inf
    assert x[1].tolist() == [3.0, 5.0]


def test_json_strict_spellings_load(tmp_path):
    doc = {"schema": 1, "name": "j", "layer": {"features": 2},
           "inputs": {"x": [[1.0, "NaN"], ["-Infinity", "Infinity"]]},
           "steps": [{"op": "call", "input": "x", "training": True}]}
    path = tmp_path / "j.json"
    path.write_text(json.dumps(doc))
    x = load(path).inputs["x"]
    assert np.isnan(x[0, 1]) and x[1, 0] == -np.inf and x[1, 1] == np.inf


@pytest.mark.parametrize(("old", "new", "fragment"), [
    # a mask holds 0s and 1s: NaN is neither
    ("op = \"call\"\ninput = \"x\"", "op = \"call\"\nmask = \"m\"\ninput = \"x\"", None),
    # a generated input is drawn finite
    ("x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]", "x = { constant = nan, shape = [3, 2] }",
     "inputs.x.constant: must be finite, got nan"),
    # strings other than the strict JSON spellings are still refused
    ("x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]", 'x = [[1.0, "nan"], [3.0, 5.0]]',
     "inputs.x: expected numbers, got 'nan'"),
])
def test_what_stays_refused(write_scenario, old, new, fragment):
    text = MINIMAL.replace(old, new)
    if fragment is None:  # the mask case: an input m holding a NaN
        text = text.replace("[[steps]]", "m = [1.0, nan, 0.0]\n[[steps]]", 1)
        fragment = "inputs.m: non-finite value"
    with pytest.raises(ScenarioError) as info:
        load(write_scenario(text))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_float16_keeps_infinities_but_refuses_overflow(write_scenario):
    text = _minimal("x = [[1.0, inf], [3.0, 5.0], [0.5, -1.0]]").replace(
        "features = 2", 'features = 2\ndtype = "float16"')
    assert load(write_scenario(text)).inputs["x"][0, 1] == np.inf
    with pytest.raises(ScenarioError, match="70000 is not representable in float16"):
        load(write_scenario(text.replace("inf]", "70000.0]")))


def test_definition_round_trips_as_strict_json_with_the_same_digest(write_scenario):
    """Workers and snapshots get the definition as strict JSON: the spellings "NaN",
    "Infinity", "-Infinity" (never the bare constants), read back as the same floats, and the
    digest of the stored text is the scenario's own."""
    from xbn.common.jsonio import strict_dumps, strict_loads
    from xbn.guard.snapshot import definition_digest

    s = load(write_scenario(_minimal(NAN_X)))
    data = s.to_dict()
    assert data["inputs"]["x"][0] == [1.0, "NaN"] and data["inputs"]["x"][2] == ["-Infinity", "Infinity"]
    stored = strict_loads(strict_dumps(data))
    back = Scenario.from_dict(stored)
    np.testing.assert_array_equal(back.inputs["x"], s.inputs["x"])
    assert back.digest == s.digest == definition_digest(stored)


def test_finite_inputs_and_optimizers_keep_their_digest():
    """Scenarios without non-finite values or RMSprop hash as before this change (digests of
    two built-ins, pinned from the earlier release): snapshots and caches stay valid."""
    from xbn.scenario.loader import resolve

    pinned = {"mask-statistics": "421eba6678c111339993e6fedf3b84d03bf15b0bde5d19079213e3dd9137de6e",
              "fit-sgd-adam": "50e72e2e5347cf0c48f9d0646453f06e1484be4ab05093fd81f8df6abeb9e4b6"}
    for name, digest in pinned.items():
        assert load(resolve(name)).digest == digest, name


# ------------------------------------------------------------------ the reference's model


def _reference(write_scenario, **switches):
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.reference.batchnorm import Semantics

    s = load(write_scenario(PADDED))
    ad = NumpyAdapter("numpy", Semantics(**switches))
    ad.build(s.layer)
    return s, ad.grad_masked(s.inputs["x"], True, s.inputs["w"], s.inputs["m"]), ad.state()


def _derived(x, m, w, eps=1e-3, momentum=0.5):
    """Masked BatchNorm on the valid positions, in numpy (gamma 1, beta 0): the statistics
    and the input gradient of sum(y * w). A masked position's gradient is its own output's
    term w * inv (its value enters no statistic); a valid one's sums over every output,
    masked ones included, so NaN outputs make it NaN."""
    valid = m.astype(bool)
    v = x[valid]
    mu, var = v.mean(axis=0), ((v - v.mean(axis=0)) ** 2).mean(axis=0)
    inv = 1 / np.sqrt(var + eps)
    y = (x - mu) * inv
    with np.errstate(invalid="ignore"):
        n = valid.sum()
        dvar = (w * (x - mu)).sum(axis=(0, 1)) * -0.5 * inv**3
        dmu = -(w * inv).sum(axis=(0, 1))
        gx = w * inv + np.where(valid[..., None], dmu / n + dvar * 2 * (x - mu) / n, 0.0)
    return {"output": y, "grad_input": gx, "moving_mean": (1 - momentum) * mu,
            "moving_variance": momentum + (1 - momentum) * var}


def test_select_leaves_masked_nonfinite_values_out(write_scenario):
    s, got, state = _reference(write_scenario)  # the default: Keras 3.15+
    want = _derived(s.inputs["x"], s.inputs["m"], s.inputs["w"])
    np.testing.assert_allclose(state["moving_mean"], want["moving_mean"], rtol=1e-6)
    np.testing.assert_allclose(state["moving_variance"], want["moving_variance"], rtol=1e-6)
    np.testing.assert_allclose(got["output"], want["output"], rtol=1e-6)  # NaN where x is
    gx = got["grad_input"]
    valid = s.inputs["m"].astype(bool)
    assert np.isnan(gx[valid]).all()  # the variance's gradient sums over NaN outputs
    np.testing.assert_allclose(gx[~valid], want["grad_input"][~valid], rtol=1e-6)
    assert np.isfinite(gx[~valid]).all()  # w * inv, finite at the NaN and inf positions


def test_where_mean_gives_masked_nonfinite_values_a_nan_gradient(write_scenario):
    s, got, state = _reference(write_scenario, mask="weighted_nan", masked_nonfinite="where_mean")
    want = _derived(s.inputs["x"], s.inputs["m"], s.inputs["w"])
    np.testing.assert_allclose(state["moving_mean"], want["moving_mean"], rtol=1e-6)
    x, gx = s.inputs["x"], got["grad_input"]
    masked = ~s.inputs["m"].astype(bool)[..., None] & np.ones_like(x, bool)
    nonfinite = masked & ~np.isfinite(x)
    assert np.isnan(gx[nonfinite]).all()
    np.testing.assert_allclose(gx[masked & np.isfinite(x)], want["grad_input"][masked & np.isfinite(x)],
                               rtol=1e-6)


def test_multiply_makes_the_statistics_nan(write_scenario):
    """tf-keras: 0 * NaN and 0 * inf in the weighted sums: every channel that has a masked
    NaN or infinity gets NaN statistics, outputs and running statistics."""
    s, got, state = _reference(write_scenario, mask="weighted_unfused", masked_nonfinite="multiply")
    assert np.isnan(state["moving_mean"]).all() and np.isnan(state["moving_variance"]).all()
    assert np.isnan(got["output"]).all() and np.isnan(got["grad_input"]).all()


def test_multiply_keeps_channels_without_masked_nonfinite_values(write_scenario):
    text = PADDED.replace("[nan, nan]]", "[nan, 2.0]]").replace("[-inf, inf]", "[-inf, 1.0]")
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.reference.batchnorm import Semantics

    s = load(write_scenario(text))
    ad = NumpyAdapter("numpy", Semantics(masked_nonfinite="multiply"))
    ad.build(s.layer)
    ad.call_masked(s.inputs["x"], True, s.inputs["m"])
    want = _derived(s.inputs["x"], s.inputs["m"], s.inputs["w"])
    assert np.isnan(ad.state()["moving_mean"][0])
    np.testing.assert_allclose(ad.state()["moving_mean"][1], want["moving_mean"][1], rtol=1e-6)


def test_fully_masked_batch_still_gives_zero_under_multiply(write_scenario):
    """div_no_nan(NaN, 0) is 0: a fully masked batch is 0 and 0 whatever it holds."""
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.reference.batchnorm import Semantics

    s = load(write_scenario(PADDED))
    ad = NumpyAdapter("numpy", Semantics(masked_nonfinite="multiply"))
    ad.build(s.layer)
    ad.call_masked(s.inputs["x"], True, np.zeros_like(s.inputs["m"]))
    np.testing.assert_array_equal(ad.state()["moving_mean"], [0.0, 0.0])


def test_the_switch_is_searched_only_where_a_mask_covers_a_nonfinite_value(write_scenario):
    from xbn.explain.candidates import relevant_switches

    assert "masked_nonfinite" in relevant_switches(load(write_scenario(PADDED)))
    finite = PADDED.replace("nan", "9.0").replace("-inf", "9.0").replace("inf", "9.0")
    assert "masked_nonfinite" not in relevant_switches(load(write_scenario(finite)))
    unmasked = write_scenario(_minimal(NAN_X))  # a NaN, but no mask over it
    assert "masked_nonfinite" not in relevant_switches(load(unmasked))


# ------------------------------------------------------------------------- the verdicts


def test_nan_at_the_same_places_is_same_elsewhere_differs():
    from xbn.comparison.diffs import agreement

    def obs(value):
        return {"status": "ok", "value": value, "dtype": "float32", "message": None}

    ref = obs([[1.0, float("nan")], [float("inf"), 2.0]])
    assert agreement(obs([[1.0, float("nan")], [float("inf"), 2.0]]), ref).agree
    assert agreement(obs([[1.0, float("nan")], [float("inf"), 2.0]]), ref).exact
    assert not agreement(obs([[1.0, 3.0], [float("inf"), 2.0]]), ref).agree
    assert not agreement(obs([[float("nan"), float("nan")], [float("inf"), 2.0]]), ref).agree
    assert not agreement(obs([[1.0, float("nan")], [-float("inf"), 2.0]]), ref).agree
