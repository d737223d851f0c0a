"""The result cache against real frameworks' workers: an upgrade of anything a worker loads
re-runs it, and a result read from the cache carries the notes a fresh run of it gives.

A stale entry reports bits that no installed framework produces now, and the registry names
only what installs a framework (flax and optax, not jaxlib; tf-keras, not TensorFlow), so
these tests upgrade what the registry does not name: a fake ``*.dist-info`` first on
``sys.path`` is what ``pip install`` leaves behind, and package metadata is all the cache
reads (the workers keep importing the real packages). Notes are per scenario in a worker that
runs several, so a result stored after others must not carry theirs."""

from __future__ import annotations

import pytest

from xbn.execution import runner
from xbn.execution.cache import ResultCache, report_key
from xbn.scenario.loader import load

from .conftest import MINIMAL
from .frameworks import require_framework

pytestmark = pytest.mark.slow  # runs flax and tf-keras for real, several times

FLOAT64 = MINIMAL.replace('name = "t"', 'name = "wide"').replace(
    "features = 2", 'features = 2\ndtype = "float64"')


@pytest.fixture
def spy(monkeypatch):
    """Records the frameworks each started worker runs (a group worker: each of them)."""
    calls: list[str] = []
    real_worker, real_group = runner.run_worker, runner.run_group

    def run_worker(fid, scenarios, *args, **kwargs):
        calls.append(fid)
        return real_worker(fid, scenarios, *args, **kwargs)

    def run_group(todo, *args, **kwargs):
        calls.extend(todo)
        return real_group(todo, *args, **kwargs)

    monkeypatch.setattr(runner, "run_worker", run_worker)
    monkeypatch.setattr(runner, "run_group", run_group)
    return calls


def _installed(folder, name: str, version: str) -> None:
    """What an upgrade of ``name`` leaves in site-packages, as package metadata sees it."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_an_upgrade_of_what_a_worker_loads_reruns_it(write_scenario, tmp_path, monkeypatch,
                                                     spy):
    require_framework("flax")
    require_framework("tf-keras")
    store = ResultCache()  # the one ``report_key`` reads too (conftest: empty, per test)
    s = load(write_scenario(MINIMAL))
    ids = ["flax", "tf-keras"]
    first = runner.run([s], ids, cache=store)
    assert sorted(spy) == ids and not any(m.get("error") for m in first.frameworks.values())
    again = runner.run([s], ids, cache=store)
    assert sorted(spy) == ids  # unchanged installs: both from the cache, no worker
    assert again.observations == first.observations
    report = report_key([s], ids, "numpy")

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    _installed(site, "jaxlib", "0.99.0")  # flax names flax and optax, never jaxlib
    runner.run([s], ["flax"], cache=store)
    assert spy[2:] == ["flax"]
    assert report_key([s], ids, "numpy") != report  # `xbn report` writes its files again
    runner.run([s], ["flax"], cache=store)
    assert spy[2:] == ["flax"]  # the re-run was stored under the new versions

    _installed(site, "tensorflow", "2.99.0")  # tf-keras names only tf-keras
    runner.run([s], ["tf-keras"], cache=store)
    assert spy[3:] == ["tf-keras"]


def test_cached_results_carry_only_their_own_notes(write_scenario, tmp_path, spy):
    """flax notes jax_enable_x64 for a float64 scenario; the float32 scenario run after it in
    the same worker must not carry that note into the cache."""
    require_framework("flax")
    from xbn.adapters._jax.common import X64_NOTE

    store = ResultCache(tmp_path / "cache")
    wide, narrow = load(write_scenario(FLOAT64, "wide.toml")), load(write_scenario(MINIMAL))
    both = runner.run([wide, narrow], ["flax"], cache=store)
    assert X64_NOTE in both.frameworks["flax"]["notes"]

    cached = runner.run([narrow], ["flax"], cache=store)
    assert spy == ["flax"]  # served from the cache
    fresh = runner.run([narrow], ["flax"])
    assert X64_NOTE not in fresh.frameworks["flax"]["notes"]
    assert cached.frameworks["flax"]["notes"] == fresh.frameworks["flax"]["notes"]
    # and both scenarios from the cache: the notes of the run that stored them, in its order
    assert runner.run([wide, narrow], ["flax"], cache=store).frameworks["flax"]["notes"] == \
        both.frameworks["flax"]["notes"]
