"""One conformance suite for every adapter: each framework must behave as its profile says.

The built-in scenarios run once through every framework (real workers, in parallel); for each
framework, the reference configured with that framework's declared profile
(``xbn.profiles``) must reproduce every observation within the verdict tolerance, and fail
where the framework fails. When a release changes behaviour, this names the scenario, step
and quantity, and the switch setting that would reproduce the new behaviour. Known
divergences that no switch models are data in ``tests/known_divergences.toml``.
"""

from __future__ import annotations

import pytest

from xbn.adapters.base import run_scenario
from xbn.adapters.numpy.adapter import NumpyAdapter
from xbn.comparison import less_precise as _less_precise
from xbn.comparison import measure
from xbn.profiles import known_divergence, known_divergences, semantics_of
from xbn.registry import FRAMEWORK_IDS
from xbn.runner import run
from xbn.scenario import builtin_paths, load

K = 16.0
LONG = 200  # scenarios with more steps than this run in the report, not in the suite


def _scenarios():
    out = []
    for path in builtin_paths():
        s = load(path)
        if sum(step.repeat * (step.epochs if step.op == "fit" else 1) for step in s.steps) <= LONG:
            out.append(s)
    return out


@pytest.fixture(scope="session")
def observed():
    scenarios = _scenarios()
    result = run(scenarios, list(FRAMEWORK_IDS), timeout=1500)
    return scenarios, result


@pytest.mark.parametrize("framework", FRAMEWORK_IDS)
def test_framework_matches_its_profile(observed, framework):
    scenarios, result = observed
    assert "error" not in result.frameworks[framework], result.frameworks[framework]
    mine = {(o["scenario"], o["step"], o["quantity"]): o for o in result.observations
            if o["framework"] == framework}
    semantics = semantics_of(framework)
    problems = []
    for scenario in scenarios:
        expected = {(scenario.name, o["step"], o["quantity"]): o
                    for o in run_scenario(NumpyAdapter("numpy", semantics), scenario)}
        for key, got in mine.items():
            if key[0] != scenario.name or got["status"] == "n/a" or key[2] == "step":
                continue
            if framework in scenario.layer.native:  # verbatim kwargs: outside the profile
                continue
            if known_divergence(framework, key[0], scenario.layer.dtype, key[2]):
                continue
            want = expected.get(key)
            if want is None:
                problems.append(f"{key}: {got['status']} but the profile has no such value")
            elif got["status"] != want["status"]:
                problems.append(f"{key}: {got['status']} ({got['message']}) but the profile "
                                f"says {want['status']} ({want['message']})")
            elif got["status"] == "ok":
                m = measure(got["value"], want["value"], _less_precise(got["dtype"], want["dtype"]), K)
                if not m["within"]:
                    problems.append(f"{key}: max_abs {m['max_abs']:.3g} ({m['max_ulp']:.0f} ulp) "
                                    f"from the profile's value")
    if problems:
        problems.append(_which_switch(framework, scenarios, mine))
    assert not problems, f"{framework} departs from its declared profile:\n" + "\n".join(problems)


def _which_switch(framework: str, scenarios, mine: dict) -> str:
    """Name the single switch change to the profile that reproduces the framework again."""
    from xbn.reference import NUMERIC_SWITCH_VALUES, SWITCH_VALUES

    profile = semantics_of(framework)
    options = {**SWITCH_VALUES, **NUMERIC_SWITCH_VALUES}
    for name, values in options.items():
        for value in values:
            if getattr(profile, name) == value:
                continue
            trial = profile.with_(**{name: value})
            if all(_reproduces(trial, s, framework, mine) for s in scenarios):
                return f"=> the framework now behaves as {name}={value} (update xbn/profiles.py)"
    return "=> no single switch change to the profile reproduces it (a new switch or a bug)"


def _reproduces(semantics, scenario, framework: str, mine: dict) -> bool:
    if framework in scenario.layer.native:
        return True
    want = {(scenario.name, o["step"], o["quantity"]): o
            for o in run_scenario(NumpyAdapter("numpy", semantics), scenario)}
    for key, got in mine.items():
        if key[0] != scenario.name or got["status"] == "n/a" or key[2] == "step":
            continue
        if known_divergence(framework, key[0], scenario.layer.dtype, key[2]):
            continue
        w = want.get(key)
        if w is None or w["status"] != got["status"]:
            return False
        if got["status"] == "ok" and not measure(
                got["value"], w["value"], _less_precise(got["dtype"], w["dtype"]), K)["within"]:
            return False
    return True


def test_known_divergences_are_still_real(observed):
    """Every known divergence must still depart from the profile somewhere in the suite."""
    scenarios, result = observed
    for d in known_divergences():
        assert d["reason"] and d["link"], d
        fw = d["framework"]
        departures = 0
        for scenario in scenarios:
            want = {(o["step"], o["quantity"]): o
                    for o in run_scenario(NumpyAdapter("numpy", semantics_of(fw)), scenario)}
            for o in result.observations:
                if o["framework"] != fw or o["scenario"] != scenario.name or \
                        known_divergence(fw, scenario.name, scenario.layer.dtype, o["quantity"]) != d:
                    continue
                w = want.get((o["step"], o["quantity"]))
                if w is None or w["status"] != o["status"] or o["status"] == "ok" and not measure(
                        o["value"], w["value"], _less_precise(o["dtype"], w["dtype"]), K)["within"]:
                    departures += 1
        assert departures, f"known divergence no longer occurs, remove it: {d}"
