"""Workers: a framework that raises, crashes or hangs costs only its own rows."""

from __future__ import annotations

import pytest

from xbn.registry import FRAMEWORKS, FrameworkInfo
from xbn.runner import run
from xbn.scenario import load

from .conftest import MINIMAL


@pytest.fixture
def misbehaving():
    added = {fid: FrameworkInfo(fid, "tests.plugins.misbehaving", "(test)", ("numpy",), ("numpy",))
             for fid in ("crash", "hang", "raise")}
    FRAMEWORKS.update(added)
    yield list(added)
    for fid in added:
        FRAMEWORKS.pop(fid)


def test_bad_workers_become_error_rows_while_others_finish(write_scenario, misbehaving):
    scenario = load(write_scenario(MINIMAL))
    result = run([scenario], ["numpy", *misbehaving], timeout=10)
    by_fw = {}
    for o in result.observations:
        by_fw.setdefault(o["framework"], []).append(o)
    assert all(o["status"] == "ok" for o in by_fw["numpy"])
    out = {fw: next(o for o in rows if o["quantity"] == "output") for fw, rows in by_fw.items()}
    assert out["raise"]["status"] == "error"
    assert out["raise"]["message"] == "RuntimeError: boom from the framework"
    assert out["crash"]["status"] == "error" and "exit status 3" in out["crash"]["message"]
    assert out["hang"]["status"] == "error" and "TimeoutError" in out["hang"]["message"]
    assert "error" in result.frameworks["hang"] and "error" not in result.frameworks["numpy"]


def test_unavailable_framework_is_reported_not_run(write_scenario):
    FRAMEWORKS["ghost"] = FrameworkInfo("ghost", "ghost", "ghost", ("no-such-dist-xbn",),
                                        ("no-such-dist-xbn",))
    try:
        result = run([load(write_scenario(MINIMAL))], ["numpy", "ghost"])
    finally:
        FRAMEWORKS.pop("ghost")
    assert result.frameworks["ghost"] == {"available": False, "version": None, "extra": "ghost",
                                          "missing": ["no-such-dist-xbn"]}
    assert {o["framework"] for o in result.observations} == {"numpy"}


def test_timings_are_kept_apart_from_the_metadata(write_scenario):
    result = run([load(write_scenario(MINIMAL))], ["numpy"])
    assert set(result.seconds) == {"numpy"} and result.seconds["numpy"] >= 0
    assert "seconds" not in result.frameworks["numpy"]
