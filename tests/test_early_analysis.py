"""What makes a cold report shorter without changing it: explanations searched while slower
workers still run (``analysis.EarlyExplanations`` fed by ``runner.run(on_framework=...)``),
and the HTML figures drawn by forked processes (``report.figures``). Each must give exactly
what the plain path gives. Fast: numpy against plugin frameworks made of the reference with
other switches (tests/plugins/drifting.py), no framework imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xbn.analysis.pipeline import EarlyExplanations, analyze
from xbn.comparison.diffs import DEFAULT_K
from xbn.execution.cache import ResultCache
from xbn.execution.runner import run
from xbn.report import figures
from xbn.scenario.loader import load, resolve

from .plugins.drifting import register

SCENARIOS = ("seed-keras", "batch-of-one", "variance-update-n5")


def _run(monkeypatch, **kwargs):
    ids = register(monkeypatch)
    scenarios = [load(resolve(name)) for name in SCENARIOS]
    return run(scenarios, ["numpy", *ids], **kwargs), scenarios


def test_each_framework_is_heard_once_with_the_rows_the_result_holds(monkeypatch, tmp_path):
    store = ResultCache(tmp_path / "cache")
    for attempt in ("cold", "from the cache"):
        heard: dict[str, list[dict]] = {}
        result, _ = _run(monkeypatch, cache=store,
                         on_framework=lambda fid, rows, heard=heard: heard.setdefault(fid, rows))
        assert sorted(heard) == sorted(result.frameworks), attempt
        for fid, rows in heard.items():
            assert rows == [o for o in result.observations if o["framework"] == fid], attempt


def test_early_explanations_are_the_ones_found_after_the_run(monkeypatch):
    plain, scenarios = _run(monkeypatch)
    early = EarlyExplanations(scenarios, "numpy", DEFAULT_K)
    result, _ = _run(monkeypatch, on_framework=early.framework_done)
    assert early._found, "no search started before the run ended"
    ahead = analyze(result, "numpy", DEFAULT_K, early=early).diffs
    after = analyze(plain, "numpy", DEFAULT_K).diffs
    assert ahead.equals(after)
    differing = after[after["verdict"] == "differs"]
    assert len(differing) and differing["explanation"].notna().all()


def test_no_early_search_without_the_explained_reference(monkeypatch):
    early = EarlyExplanations([], "f32", DEFAULT_K)
    _run(monkeypatch, on_framework=early.framework_done)
    assert early.found() == {}


FORKED = """
import os, pytest
from tests.plugins.drifting import small_report
from xbn.report import figures, render
with pytest.MonkeyPatch.context() as mp:
    report = small_report(mp)
    report.scenarios = report.scenarios * 3  # enough figures to fork for
    mp.setattr(os, "cpu_count", lambda: 2)
    pids = figures.drawn(report, lambda r, s: str(os.getpid()))
    assert str(os.getpid()) not in pids.values(), "drawn here, not in forked processes"
    forked = render(report, "html")
    mp.setattr(figures, "MIN_FIGURES", 10**6)
    assert render(report, "html") == forked
"""


@pytest.mark.slow  # draws every figure twice
def test_figures_drawn_in_forked_processes_equal_drawn_here():
    """In a fresh process, as the command line draws them: this one may hold a framework's
    threads (imported by other tests), which rule forking out."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", FORKED], cwd=root,
                   check=True)


def test_no_fork_once_a_threaded_framework_is_imported(monkeypatch):
    result, _ = _run(monkeypatch)
    report = analyze(result, "numpy", DEFAULT_K)
    report.scenarios = report.scenarios * 3
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    pids = figures.drawn(report, lambda r, s: str(os.getpid()))
    assert set(pids.values()) == {str(os.getpid())}


def test_a_failing_listener_fails_the_run_after_the_workers_end(monkeypatch):
    def broken(framework, rows):
        raise ValueError(f"listener bug at {framework}")

    with pytest.raises(ValueError, match="listener bug"):
        _run(monkeypatch, on_framework=broken, timeout=60)
