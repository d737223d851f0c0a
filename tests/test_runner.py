"""Workers: a framework that raises, crashes or hangs costs only its own rows."""

from __future__ import annotations

import pytest

from xbn.execution.runner import run
from xbn.frameworks.registry import FRAMEWORKS, FrameworkInfo
from xbn.scenario.loader import load

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


def test_pool_runs_longest_first_with_one_worker_per_core(write_scenario, tmp_path, monkeypatch):
    """Workers are CPU-bound: one per core, the slowest framework first (by the last run's
    time kept in the cache, else by a prior), so it is not the one that starts last."""
    import os

    from xbn.execution import runner
    from xbn.execution.cache import ResultCache

    assert runner.default_jobs(10) == min(10, os.cpu_count() or 1)
    assert runner.default_jobs(0) == 1
    store = ResultCache(tmp_path)
    store.note_seconds("numpy", 5.0)  # numpy was the slowest last time
    order = []
    real = runner.run_worker

    def spy(fid, scenarios, *args, **kwargs):
        order.append(fid)
        return real(fid, scenarios, *args, **kwargs)

    monkeypatch.setattr(runner, "run_worker", spy)
    monkeypatch.setitem(FRAMEWORKS, "slow", FrameworkInfo(
        "slow", "tests.plugins.misbehaving", "(test)", ("numpy",), ("numpy",)))
    assert runner._estimate(None, "slow", 2) == 2.0  # the prior: 1 s per scenario
    run([load(write_scenario(MINIMAL))], ["slow", "numpy"], jobs=1, cache=store)
    assert order == ["numpy", "slow"]
    assert store.seconds("numpy") is not None and store.seconds("numpy") < 5.0  # updated
