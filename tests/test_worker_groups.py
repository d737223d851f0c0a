"""The JAX family in one worker process (``xbn.execution.spawn.run_group``): the same bits as a worker
per framework, a crash costs only the frameworks not yet finished, the cache fills per
framework and JAX's compilation cache changes no bit. Tiny scenarios; only flax and haiku (the two quickest JAX adapters) are imported."""

from __future__ import annotations

import json
import shutil

import pytest

from xbn.execution import runner
from xbn.execution.cache import ResultCache
from xbn.frameworks.registry import FRAMEWORKS, FrameworkInfo
from xbn.scenario.loader import load

from .conftest import MINIMAL

pytestmark = pytest.mark.slow  # the JAX group against separate workers, over many scenarios

# float64 first: its adapter switches jax_enable_x64 on, which must not reach the float32 one
# nor the next framework
FLOAT64 = MINIMAL.replace('name = "t"', 'name = "t64"').replace(
    "features = 2", 'features = 2\ndtype = "float64"')


def _same(a: list[dict], b: list[dict]) -> bool:
    # NaN != NaN: compare the exact JSON, as the workers wrote it
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_jax_ids_share_one_worker_unless_told_or_unable(monkeypatch):
    ids = ["numpy", "flax", "torch", "haiku", "keras-jax", "keras", "flax@gpu"]
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    # Keras on JAX keeps its own worker (the largest; see worker_groups)
    assert runner.worker_groups(ids) == [["flax", "haiku"], ["numpy"], ["torch"],
                                         ["keras-jax"], ["keras"], ["flax@gpu"]]
    monkeypatch.setenv(runner.SEPARATE_ENV, "1")
    assert runner.worker_groups(ids) == [[f] for f in ids]
    assert runner.worker_groups(["numpy", "flax"]) == [["numpy"], ["flax"]]  # a group of one


def test_group_rows_equal_separate_workers_and_fill_the_cache(write_scenario, tmp_path,
                                                              monkeypatch):
    scenarios = [load(write_scenario(FLOAT64, "a.toml")), load(write_scenario(MINIMAL))]
    store = ResultCache(tmp_path / "cache")
    groups = []
    real = runner.run_group
    monkeypatch.setattr(runner, "run_group",
                        lambda todo, *a, **k: groups.append(list(todo)) or real(todo, *a, **k))
    grouped = runner.run(scenarios, ["flax", "haiku"], cache=store)
    assert groups == [["flax", "haiku"]]  # one worker for both
    for fid in ("flax", "haiku"):
        alone = runner.run_worker(fid, scenarios, 600)
        rows = [o for o in grouped.observations if o["framework"] == fid]
        assert alone.error is None and all(o["status"] == "ok" for o in alone.observations)
        assert _same(rows, alone.observations), fid
        assert grouped.frameworks[fid]["versions"] == alone.versions
        assert grouped.frameworks[fid]["notes"] == alone.notes
        assert any("jax_enable_x64" in n for n in alone.notes)
        for s in scenarios:  # one entry per framework x scenario, its own rows
            entry = store.get(s, fid)
            assert entry is not None and _same(entry["observations"],
                                               [o for o in rows if o["scenario"] == s.name])
    again = runner.run(scenarios, ["flax", "haiku"], cache=store)
    assert groups == [["flax", "haiku"]]  # everything from the cache: no worker
    assert _same(again.observations, grouped.observations)
    # results gone, JAX's compilation cache kept (an edit of xbn): executables read back from
    # it give the same bits
    compiled = store.root / "jax"
    assert any(compiled.iterdir())
    shutil.rmtree(store.root / "results")
    warm = runner.run(scenarios, ["flax", "haiku"], cache=store)
    assert len(groups) == 2 and _same(warm.observations, grouped.observations)
    store.clear()
    assert not compiled.exists()


@pytest.fixture
def misbehaving():
    added = {fid: FrameworkInfo(fid, "tests.plugins.misbehaving", "(test)", ("numpy",), ("numpy",))
             for fid in ("crash", "hang", "raise")}
    FRAMEWORKS.update(added)
    yield
    for fid in added:
        FRAMEWORKS.pop(fid)


@pytest.mark.parametrize("bad, error", [("crash", "WorkerCrashed: exit status 3"),
                                        ("hang", "TimeoutError: worker exceeded 5 s")])
def test_a_dead_group_worker_costs_only_its_unfinished_frameworks(write_scenario, misbehaving,
                                                                  bad, error):
    """numpy finishes, then ``bad`` kills the worker: numpy keeps its rows, ``bad`` gets the
    error, and "raise" (never begun) gets error rows that say why it did not run."""
    scenario = load(write_scenario(MINIMAL))
    events = []
    res = runner.run_group({"numpy": [scenario], bad: [scenario], "raise": [scenario]}, 5,
                           events.append)
    alone = runner.run_worker("numpy", [scenario], 60)
    assert res["numpy"].error is None and _same(res["numpy"].observations, alone.observations)
    assert res["numpy"].completed == ["t"]
    assert res[bad].error.startswith(error) and res[bad].completed == []
    assert [o["status"] for o in res[bad].observations] == ["error"]
    assert res[bad].observations[0]["message"] == res[bad].error
    late = res["raise"]
    assert late.error.startswith(f"WorkerCrashed: not run: the worker of numpy, {bad}, raise "
                                 f"ended while {bad} ran ({error}")
    assert [(o["status"], o["message"]) for o in late.observations] == [("error", late.error)]
    last = {e.framework: e.kind for e in events}
    assert last == {"numpy": "done", bad: "error", "raise": "error"}


def test_global_jax_config_is_put_back_between_frameworks():
    """What the worker does after each framework of a group: a switch flipped by one
    framework's scenarios (x64, by enable_x64_if_needed) is back to a fresh process' value."""
    import jax

    from xbn.execution.worker import _GlobalConfig

    config = _GlobalConfig()
    fresh = bool(jax.config.jax_enable_x64)
    config.capture()
    try:
        jax.config.update("jax_enable_x64", not fresh)
        config.capture()  # taken once: a later capture does not overwrite the fresh values
        config.restore()
        assert bool(jax.config.jax_enable_x64) is fresh
    finally:
        jax.config.update("jax_enable_x64", fresh)


def test_compiled_executables_are_emptied_once_the_worker_has_grown(monkeypatch):
    """``_GlobalConfig.bound_memory``, called after each scenario: JAX's in-memory caches are
    emptied only when the process has grown more than XBN_WORKER_GROWTH_MB since last time."""
    import jax

    from xbn.execution.worker import GROWTH_ENV, _GlobalConfig

    add_one = jax.jit(lambda x: x + 1)
    add_one(1.0)
    config = _GlobalConfig()
    monkeypatch.setenv(GROWTH_ENV, "1e9")
    config.bound_memory()  # the first call marks where the worker starts
    config.bound_memory()
    assert add_one._cache_size() == 1
    monkeypatch.setenv(GROWTH_ENV, "-1")  # any size is growth
    config.bound_memory()
    assert add_one._cache_size() == 0


def test_emptying_after_every_scenario_changes_no_bit(write_scenario, monkeypatch):
    scenarios = [load(write_scenario(FLOAT64, "a.toml")), load(write_scenario(MINIMAL))]
    kept = runner.run_worker("flax", scenarios, 600)
    monkeypatch.setenv("XBN_WORKER_GROWTH_MB", "-1")  # the worker reads the caller's env
    emptied = runner.run_worker("flax", scenarios, 600)
    assert kept.error is None and emptied.error is None
    assert _same(kept.observations, emptied.observations)
