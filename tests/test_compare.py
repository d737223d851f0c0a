"""Tolerances, ULP distances and verdicts, on hand-made observations."""

from __future__ import annotations

import numpy as np
import pytest

from xbn.common.dtypes import round_to, ulp_distance
from xbn.comparison.diffs import (
    agreement,
    diff_table,
    exception_type,
    less_precise,
    measure,
    observations_frame,
)


def test_ulp_distance_counts_representable_steps():
    one = np.float32(1.0)
    after = np.nextafter(one, np.float32(2))
    assert ulp_distance([1.0], [float(after)], "float32")[0] == 1
    assert ulp_distance([-0.0], [0.0], "float32")[0] == 0
    tiny = float(np.nextafter(np.float32(0), np.float32(1)))
    assert ulp_distance([-tiny], [tiny], "float32")[0] == 2  # across zero
    assert ulp_distance([1.0], [1.0 + 2**-7], "bfloat16")[0] == 1
    assert ulp_distance([1.0], [1.0 + 2**-10], "float16")[0] == 1
    assert ulp_distance([1.0], [1.0 + 2**-52], "float64")[0] == 1


def test_bfloat16_rounds_to_nearest_even():
    assert round_to([1 + 2**-8], "bfloat16")[0] == 1.0  # tie goes to the even neighbour
    assert round_to([1 + 3 * 2**-8], "bfloat16")[0] == 1 + 2**-6


def test_tolerance_scales_with_the_reference_array():
    eps = np.finfo(np.float32).eps
    ref = np.array([100.0, 1e-3])
    within = measure(ref + [16 * eps * 100 * 0.99, 0.0], ref, "float32")
    beyond = measure(ref + [16 * eps * 100 * 1.01, 0.0], ref, "float32")
    assert within["within"] and not beyond["within"]
    zero = measure([1e-7], [0.0], "float32")  # all-zero reference: scale 1
    assert zero["within"] and zero["max_rel"] == np.inf


def test_nan_equal_positions_are_same_and_shape_mismatch_differs():
    assert measure([np.nan, 1.0], [np.nan, 1.0], "float32")["within"]
    assert not measure([np.nan, 1.0], [0.0, 1.0], "float32")["within"]
    assert not measure([1.0, 2.0], [1.0], "float32")["within"]


def obs(framework, quantity, status="ok", value=None, dtype="float32", message=None, step=0):
    return {"scenario": "s", "step": step, "op": "call", "framework": framework,
            "quantity": quantity, "status": status, "value": value, "dtype": dtype,
            "message": message}


@pytest.mark.parametrize(
    ("row", "verdict"),
    [
        (obs("torch", "output", value=[1.0 + 1e-7]), "same"),
        (obs("torch", "output", value=[1.01]), "differs"),
        (obs("torch", "output", status="error", message="ValueError: x"), "error"),
        (obs("torch", "output", status="n/a", message="cannot"), "n/a"),
    ],
)
def test_verdicts(row, verdict):
    frame = observations_frame([obs("numpy", "output", value=[1.0], dtype="float64"), row])
    diffs = diff_table(frame)
    assert list(diffs["verdict"]) == [verdict]


def test_dtype_of_comparison_is_the_less_precise():
    frame = observations_frame([obs("numpy", "output", value=[1.0], dtype="float64"),
                                obs("keras", "output", value=[1.0 + 2**-9], dtype="float16")])
    d = diff_table(frame).iloc[0]
    assert d["dtype"] == "float16" and d["max_ulp"] == 2  # 2**-9 is two float16 steps above 1
    assert d["verdict"] == "same"


def test_agreement_is_the_one_rule_for_two_observations():
    ref = obs("numpy", "output", value=[1.0, 2.0], dtype="float64")
    same = agreement(obs("torch", "output", value=[1.0, 2.0 + 5e-7]), ref)
    assert same.agree and not same.exact and same.dtype == "float32" and same.max_ulp >= 1
    assert agreement(obs("torch", "output", value=[1.0, 2.0], dtype="float64"), ref).exact
    assert agreement(obs("torch", "output", value=[1.01, 2.0]), ref).kind == "value"
    assert agreement(obs("torch", "output", value=[1.0]), ref).kind == "shape"
    # exact (k=0) and dtypes that must match (the guard's rule)
    assert agreement(obs("torch", "output", value=[1.0, 2.0 + 1e-7]), ref, 0).kind == "value"
    assert agreement(obs("torch", "output", value=[1.0, 2.0]), ref, 0,
                     same_dtype=True).kind == "dtype"
    # NaN agrees with NaN at the same place
    nan = obs("torch", "output", value=[np.nan, np.inf], dtype="float64")
    assert agreement(nan, nan, 0).exact
    # statuses and errors
    err = obs("torch", "output", status="error", message="ValueError: x")
    assert agreement(err, ref).kind == "status"
    assert agreement(err, {**err, "message": "ValueError: y"}).agree
    assert agreement(err, {**err, "message": "TypeError: x"}).kind == "status"
    assert agreement(err, {**err, "message": "TypeError: x"}, same_exception=False).agree
    assert agreement(None, ref).kind == "missing"
    # a set step records no value: both accepted it
    step = obs("torch", "step", value=None, dtype=None)
    assert agreement(step, step).agree and not agreement(step, step).compared


def test_less_precise_and_exception_type():
    assert less_precise("float64", "bfloat16") == "bfloat16"
    assert less_precise(None, None) == "float64"
    assert exception_type("ValueError: Expected more than 1 value") == "ValueError"
    assert exception_type(None) == ""


def test_terms_set_the_floor_of_the_tolerance():
    """A value whose terms cancel (the float64 reference holds rounding noise ~1e-16) is
    compared at the magnitude of its terms, not at the noise's."""
    eps = np.finfo(np.float32).eps
    noise = [8.9e-16, -4.4e-16]
    assert not measure([2.4e-7, 0.0], noise, "float32")["within"]
    floor = measure([2.4e-7, 0.0], noise, "float32", terms=2.0)
    assert floor["within"] and floor["tolerance"] == 16 * eps * 2.0
    assert not measure([16 * eps * 2.0 * 1.01, 0.0], noise, "float32", terms=2.0)["within"]
    # the terms never lower the tolerance below the value's own magnitude
    assert measure([100.0], [100.0], "float32", terms=1e-3)["tolerance"] == 16 * eps * 100.0


def test_the_reference_rows_scale_is_used_and_another_reference_borrows_numpys():
    ref = {**obs("numpy", "grad_input", value=[8.9e-16], dtype="float64"), "scale": 2.0}
    framework = obs("torch", "grad_input", value=[2.4e-7])
    assert agreement(framework, ref).agree  # the reference row carries its scale
    assert not agreement(framework, {**ref, "scale": None}).agree
    frame = observations_frame([ref, framework, obs("keras", "grad_input", value=[0.0])])
    assert dict(zip(frame["framework"], frame["scale"], strict=True)) == {
        "numpy": 2.0, "torch": None, "keras": None}
    against_torch = diff_table(frame, reference="torch")
    keras = against_torch[against_torch["framework"] == "keras"].iloc[0]
    assert keras["verdict"] == "same" and keras["tolerance"] == 16 * np.finfo(np.float32).eps * 2.0


def test_reference_rows_record_their_scale(write_scenario):
    from xbn.adapters.base import run_scenario
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.scenario.loader import load

    from .conftest import MINIMAL

    rows = list(run_scenario(NumpyAdapter("numpy"), load(write_scenario(MINIMAL))))
    scales = {o["quantity"]: o.get("scale") for o in rows}
    assert scales["output"] > 0 and scales["moving_mean"] > 0
    assert "moving_variance" not in scales or scales["moving_variance"] is None


def test_driver_rows_are_observations_in_the_tables_columns(write_scenario):
    """Every row the driver yields has the keys ``Observation`` declares (the optional ones only
    where set) and one of its statuses; tables list those fields in one order."""
    from xbn.adapters.base import run_scenario
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.comparison.diffs import COLUMNS
    from xbn.scenario.loader import load
    from xbn.scenario.observation import STATUSES, Observation

    from .conftest import MINIMAL

    required, optional = Observation.__required_keys__, Observation.__optional_keys__
    rows = list(run_scenario(NumpyAdapter("numpy"), load(write_scenario(MINIMAL))))
    assert rows and all(required <= set(o) <= required | optional for o in rows)
    assert {o["status"] for o in rows} <= set(STATUSES)
    assert COLUMNS == ["scenario", "step", "op", "framework", "quantity", "status", "value",
                       "dtype", "message", "origin", "scale"]
    assert set(COLUMNS) == (required | optional) - {"rep"}  # rep: only where traced
