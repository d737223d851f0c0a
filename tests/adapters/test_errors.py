"""Errors are matched by where they were raised and by type, not by status alone.

An ``error`` observation records its ``origin``: the top-level package of the innermost
traceback frame ("torch", "flax", ...), "reference" for xbn/reference/batchnorm.py, "xbn" for xbn's own
code and for an adapter's own module (plugins included). An exception from xbn's code is a
defect that the conformance suite's error rule (``xbn.profiles.refusals.error_problems``) fails on;
an expected refusal matches on the exception type (and message fragment) the framework's
profile declares (``xbn.profiles.refusals.ERRORS``).
"""

from __future__ import annotations

import pytest

from xbn.adapters.base import exception_origin, run_scenario
from xbn.adapters.numpy.adapter import NumpyAdapter
from xbn.execution.runner import run
from xbn.frameworks.registry import FRAMEWORKS, FrameworkInfo
from xbn.profiles.facts import PROFILES, semantics_of
from xbn.profiles.refusals import (
    ERRORS,
    REFUSING,
    declared_error,
    error_mismatch,
    error_problems,
    refusing_switch,
)
from xbn.scenario.loader import load


def test_origin_is_the_package_of_the_innermost_frame():
    import json

    try:
        json.loads("{")
    except ValueError as exc:
        assert exception_origin(exc) == "json"
    try:
        load("no/such/file.toml")
    except ValueError as exc:  # raised in xbn/common/strict.py
        assert exception_origin(exc) == "xbn"

    def adapter_code():
        return {}["key"]

    try:
        adapter_code()
    except KeyError as exc:  # this test module is not xbn, unless named as the adapter's own
        assert exception_origin(exc) == __name__.split(".")[0]
        assert exception_origin(exc, own={__name__}) == "xbn"


def test_every_refusing_switch_value_declares_its_exception():
    """A framework whose profile refuses (batch_of_one/bare_call/frozen_fit = error) says
    with which exception; the reference's own refusals are recognised by their message."""
    for fid, profile in PROFILES.items():
        for switch, values in REFUSING.items():
            if profile[switch].value in values:
                assert declared_error(fid, switch) is not None, (fid, switch)
    for switch, raises in ERRORS["reference"].items():
        assert refusing_switch(f"{raises.type}: {raises.fragment} (more)") == switch
        assert refusing_switch(f"KeyError: {raises.fragment}") is None


@pytest.fixture
def keyerror_torch():
    """torch, with an adapter bug where torch refuses a batch of one (tests/plugins)."""
    FRAMEWORKS["torch-keyerror"] = FrameworkInfo(
        "torch-keyerror", "tests.plugins.misbehaving", "(test)", ("torch",), ("torch",))
    yield "torch-keyerror"
    FRAMEWORKS.pop("torch-keyerror")


def test_an_adapter_bug_is_not_the_framework_refusing(keyerror_torch):
    scenario = load("builtin:batch-of-one")
    result = run([scenario], ["torch", keyerror_torch], timeout=600)
    rows = {(o["framework"], o["step"], o["quantity"]): o for o in result.observations}
    torch_out, bug_out = rows["torch", 0, "output"], rows[keyerror_torch, 0, "output"]
    # torch itself: ValueError from torch/nn/functional.py
    assert torch_out["status"] == "error" and torch_out["origin"] == "torch"
    assert torch_out["message"].startswith("ValueError: Expected more than 1 value per channel")
    # the bug: the same status, but raised in the adapter's module with another type
    assert bug_out["status"] == "error" and bug_out["origin"] == "xbn"
    assert bug_out["message"].startswith("KeyError")
    # the reference under torch's profile refuses too (origin: xbn/reference/batchnorm.py)
    expected = {(o["step"], o["quantity"]): o
                for o in run_scenario(NumpyAdapter("numpy", semantics_of("torch")), scenario)}
    ref_out = expected[0, "output"]
    assert ref_out["status"] == "error" and ref_out["origin"] == "reference"

    def observed(fid):
        return {(o["step"], o["quantity"]): o for o in result.observations
                if o["framework"] == fid}

    # the conformance rule: torch passes, the bug fails, naming xbn as the origin
    assert error_problems("torch", observed("torch"), expected) == []
    problems = error_problems("torch", observed(keyerror_torch), expected)
    assert problems and all("origin xbn" in p for p in problems)
    assert {p.split(":")[0] for p in problems} >= {"(0, 'output')"}
    # and by type alone: a KeyError is not the ValueError torch declares, whoever raised it
    claimed = {**bug_out, "origin": "torch"}
    why = error_mismatch("torch", claimed, ref_out)
    assert why is not None and "KeyError where torch's profile declares ValueError" in why
    assert error_mismatch("torch", torch_out, ref_out) is None
    # the conformance test itself, fed these runs as torch's: torch passes, the bug fails
    from types import SimpleNamespace

    from tests import test_conformance

    def suite(fid):
        rows = {("torch", scenario.name): [{**o, "framework": "torch"}
                                           for o in result.observations if o["framework"] == fid]}
        observed = ([scenario], SimpleNamespace(frameworks={"torch": {}}), rows)
        test_conformance.test_framework_matches_its_profile(observed, "torch")

    suite("torch")
    with pytest.raises(AssertionError, match="origin xbn"):
        suite(keyerror_torch)


def test_type_and_fragment_of_declared_refusals():
    ref = {"status": "error", "message": "TypeError: a call without the training flag is refused"}

    def obs(message, origin="x"):
        return {"status": "error", "message": message, "origin": origin}

    flax = 'ValueError: Parameter "use_running_average" must be passed to the constructor or at call time.'
    haiku = "TypeError: BatchNorm.__call__() missing 1 required positional argument: 'is_training'"
    assert error_mismatch("flax", obs(flax, "flax"), ref) is None
    assert error_mismatch("haiku", obs(haiku, "haiku"), ref) is None
    # flax's refusal is ValueError: haiku's TypeError would not be flax refusing
    assert "TypeError where flax's profile declares ValueError" in error_mismatch(
        "flax", obs(haiku, "flax"), ref)
    # the right type with another message is not the declared refusal either
    assert "without" in error_mismatch("flax", obs("ValueError: something else", "flax"), ref)
    # a framework that declares no such refusal
    assert "declares no exception" in error_mismatch("keras", obs(haiku, "keras"), ref)
    # driver prefixes are not part of the type
    assert error_mismatch("flax", obs("layer not built: " + flax, "flax"), ref) is None
