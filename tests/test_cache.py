"""The result cache: what its key depends on, what invalidates an entry, and who never reads it.

A stale entry read as fresh would report bits no framework produced now, so every input of
the key is tested to change it, and `xbn check`/`snapshot` are tested to ignore even a
poisoned cache."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from xbn.cli import cli
from xbn.execution import cache as cache_mod
from xbn.execution import runner
from xbn.execution.cache import ResultCache, entry_key
from xbn.scenario.loader import load

from .conftest import MINIMAL

OTHER = MINIMAL.replace('name = "t"', 'name = "u"')


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("XBN_CACHE_DIR", str(tmp_path / "cache"))
    return ResultCache()


@pytest.fixture
def spy(monkeypatch):
    """Records the scenario names each worker is asked to run."""
    calls = []
    real = runner.run_worker

    def run_worker(fid, scenarios, *args, **kwargs):
        calls.append((fid, [s.name for s in scenarios]))
        return real(fid, scenarios, *args, **kwargs)

    monkeypatch.setattr(runner, "run_worker", run_worker)
    return calls


def test_key_is_stable_and_depends_on_content_not_path(write_scenario):
    a = load(write_scenario(MINIMAL, "a.toml"))
    b = load(write_scenario(MINIMAL, "b.toml"))
    assert entry_key(a, "numpy") == entry_key(b, "numpy")  # same content, other file
    changed = load(write_scenario(MINIMAL.replace("5.0", "6.0"), "c.toml"))
    assert entry_key(changed, "numpy") != entry_key(a, "numpy")
    assert entry_key(a, "torch") != entry_key(a, "numpy")


@pytest.mark.parametrize("what", ["versions", "xbn", "source", "device", "env", "determinism"])
def test_key_changes_with_every_input(write_scenario, monkeypatch, what):
    s = load(write_scenario(MINIMAL))
    before = entry_key(s, "numpy")
    if what == "versions":
        monkeypatch.setattr(cache_mod, "_versions", lambda *a: {"numpy": "0.0.1"})
    elif what == "xbn":
        monkeypatch.setattr(cache_mod, "__version__", "9.9.9")
    elif what == "source":
        monkeypatch.setattr(cache_mod, "source_digest", lambda: "edited")
    elif what == "device":
        monkeypatch.setattr(cache_mod, "device", lambda: {"machine": "arm64"})
    elif what == "env":
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    else:
        from xbn.execution import environment
        monkeypatch.setitem(environment.DETERMINISM_ENV, "OMP_NUM_THREADS", "2")
    assert entry_key(s, "numpy") != before


def test_rerun_reads_the_cache_and_a_changed_scenario_reruns_alone(write_scenario, store, spy):
    t = load(write_scenario(MINIMAL, "t.toml"))
    u = load(write_scenario(OTHER, "u.toml"))
    first = runner.run([t, u], ["numpy"], cache=store)
    assert spy == [("numpy", ["t", "u"])]
    again = runner.run([t, u], ["numpy"], cache=store)
    assert spy == [("numpy", ["t", "u"])]  # no worker started
    assert again.observations == first.observations
    assert again.frameworks == first.frameworks
    u2 = load(write_scenario(OTHER.replace("5.0", "7.0"), "u.toml"))
    mixed = runner.run([t, u2], ["numpy"], cache=store)
    assert spy[-1] == ("numpy", ["u"])
    assert [o["scenario"] for o in mixed.observations] == \
        [o["scenario"] for o in first.observations]  # the same order as one worker gives
    fresh = runner.run([t, u2], ["numpy"])  # no cache: runs everything
    assert spy[-1] == ("numpy", ["t", "u"]) and fresh.observations == mixed.observations


def test_unreadable_entry_is_a_miss_and_removed(write_scenario, store):
    s = load(write_scenario(MINIMAL))
    runner.run([s], ["numpy"], cache=store)
    [path] = store.entries()
    path.write_text("{not json")
    assert store.get(s, "numpy") is None and not path.exists()


def test_a_failed_worker_stores_nothing(write_scenario, store, monkeypatch):
    s = load(write_scenario(MINIMAL))
    monkeypatch.setattr(runner, "run_worker", lambda fid, sc, *a, **k: runner.WorkerResult(
        fid, completed=[x.name for x in sc], error="TimeoutError: worker exceeded 1 s"))
    runner.run([s], ["numpy"], cache=store)
    assert store.entries() == []


def test_clear_and_no_cache_and_check_never_read_it(write_scenario, store, tmp_path):
    path = str(write_scenario(MINIMAL))
    cli_runner = CliRunner()
    out = cli_runner.invoke(cli, ["run", path, "-f", "numpy", "--format", "json", "-q"])
    assert out.exit_code == 0, out.output
    [entry] = store.entries()
    data = json.loads(entry.read_text())
    for o in data["observations"]:
        o["value"] = [[1234.5, 1234.5]] * 3 if o["quantity"] == "output" else o["value"]
    entry.write_text(json.dumps(data))  # poisoned: only a reader of the cache sees 1234.5

    def outputs(args):
        res = cli_runner.invoke(cli, args)
        assert res.exit_code == 0, res.output
        return res.stdout

    assert "1234.5" in outputs(["run", path, "-f", "numpy", "--format", "json", "-q"])
    assert "1234.5" not in outputs(["run", path, "-f", "numpy", "--format", "json", "-q",
                                    "--no-cache"])
    snap = tmp_path / "snap.json"
    outputs(["snapshot", path, "-f", "numpy", "-o", str(snap)])
    assert "1234.5" not in snap.read_text()
    assert cli_runner.invoke(cli, ["check", str(snap)]).exit_code == 0
    outputs(["cache", "clear"])
    assert store.entries() == []


def _analysed(write_scenario, factor: float):
    """A run of numpy and a fake "torch" whose outputs are numpy's times ``factor``."""
    from xbn.adapters.base import run_scenario
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.reference.batchnorm import Semantics

    s = load(write_scenario(MINIMAL))
    ref = list(run_scenario(NumpyAdapter("numpy", Semantics()), s))
    fake = [dict(o, framework="torch", dtype="float32", value=(
        [[v * factor for v in row] for row in o["value"]] if o["quantity"] == "output"
        else o["value"])) for o in ref]
    meta = {f: {"available": True, "version": "0"} for f in ("numpy", "torch")}
    return runner.RunResult(ref + fake, meta, [s])


def test_explanations_are_cached_by_what_the_search_reads(write_scenario, store, monkeypatch):
    from xbn.analysis.pipeline import analyze
    from xbn.explain import search as explain

    first = analyze(_analysed(write_scenario, 2.0), cache=store)
    texts = list(first.diffs["explanation"].dropna())
    assert texts

    class Refused(explain.Search):
        def explain(self, *args):
            raise AssertionError("searched although cached")

    monkeypatch.setattr(explain, "Search", Refused)
    again = analyze(_analysed(write_scenario, 2.0), cache=store)
    assert list(again.diffs["explanation"].dropna()) == texts
    with pytest.raises(AssertionError, match="searched"):  # another value: another search
        analyze(_analysed(write_scenario, 3.0), cache=store)
    with pytest.raises(AssertionError, match="searched"):  # an edit of xbn: another search
        monkeypatch.setattr(cache_mod, "source_digest", lambda: "edited")
        analyze(_analysed(write_scenario, 2.0), cache=store)


def test_report_key_and_kept_files(write_scenario, store, tmp_path, monkeypatch):
    t = load(write_scenario(MINIMAL, "t.toml"))
    u = load(write_scenario(OTHER, "u.toml"))
    runner.run([t, u], ["numpy"], cache=store)  # its worker reports what it loads
    key = cache_mod.report_key([t, u], ["numpy"], "numpy")
    assert not key.startswith(cache_mod.UNRECORDED)
    assert key == cache_mod.report_key([t, u], ["numpy"], "numpy")
    u2 = load(write_scenario(OTHER.replace("5.0", "7.0"), "u.toml"))
    assert cache_mod.report_key([t, u2], ["numpy"], "numpy") != key
    assert cache_mod.report_key([t, u], ["numpy", "torch"], "numpy") != key
    monkeypatch.setattr(cache_mod, "_versions", lambda *a: {"numpy": "0.0.1"})
    assert cache_mod.report_key([t, u], ["numpy"], "numpy") != key
    (tmp_path / "a.md").write_text("report")
    assert store.restore_files(key, tmp_path / "out") is None
    store.keep_files(key, [tmp_path / "a.md"])
    [restored] = store.restore_files(key, tmp_path / "out")
    assert restored.read_text() == "report"


def test_a_report_keyed_before_its_workers_reported_is_not_kept(write_scenario, store,
                                                               tmp_path):
    """Before a framework's worker has reported what it loads, keys count only the declared
    distributions; a report kept under one would be found again after an upgrade of another
    (another virtual environment's first run into the same cache directory)."""
    t = load(write_scenario(MINIMAL))
    key = cache_mod.report_key([t], ["numpy"], "numpy")
    assert key.startswith(cache_mod.UNRECORDED)
    (tmp_path / "a.md").write_text("report")
    store.keep_files(key, [tmp_path / "a.md"])
    assert store.restore_files(key, tmp_path / "out") is None
    runner.run([t], ["numpy"], cache=store)
    assert cache_mod.report_key([t], ["numpy"], "numpy") != key


def test_the_record_of_what_a_worker_loads(write_scenario, store, tmp_path, monkeypatch):
    """Kept per framework, counted by the key its entries are stored under, and dropped when
    the framework's own distributions change (an upgrade may load other things)."""
    s = load(write_scenario(MINIMAL))
    runner.run([s], ["numpy"], cache=store)
    loaded = cache_mod.recorded_distributions("numpy", store.root)
    assert {"numpy", "xbn"} <= loaded  # the framework, and xbn's own code
    assert set(cache_mod.key_fields(s, "numpy", store.root)["versions"]) >= loaded
    assert store.get(s, "numpy") is not None  # stored under the key that counts them
    site = tmp_path / "site"
    (site / "numpy-9.9.9.dist-info").mkdir(parents=True)
    (site / "numpy-9.9.9.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: numpy\nVersion: 9.9.9\n")
    monkeypatch.syspath_prepend(str(site))
    assert cache_mod.recorded_distributions("numpy", store.root) == set()
    assert store.get(s, "numpy") is None
