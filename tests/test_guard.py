"""The upgrade guard: snapshot -> check round trips, doctored and tampered snapshots, the
explanation of a change, JUnit output, and frameworks that are no longer installed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from xbn.adapters.base import run_scenario
from xbn.adapters.numpy.adapter import NumpyAdapter
from xbn.cli import cli
from xbn.frameworks.registry import FRAMEWORKS, FrameworkInfo
from xbn.guard.check import classify, compare_run
from xbn.guard.snapshot import (
    SnapshotError,
    definition_digest,
    dumps,
    load_snapshot,
    parse_snapshot,
)
from xbn.reference.batchnorm import Semantics
from xbn.scenario.loader import load

from .frameworks import require_framework

# Two features, a batch of three: the biased and unbiased variances differ, and the inference
# call afterwards shows the moving statistics in its output.
SCENARIO = """
schema = 1
name = "guard"
[layer]
features = 2
[inputs]
x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]
[[steps]]
op = "call"
input = "x"
training = true
[[steps]]
op = "call"
input = "x"
training = false
"""


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def scenario(write_scenario):
    return write_scenario(SCENARIO, "guard.toml")


@pytest.fixture
def snapshot(scenario, tmp_path):
    """A numpy-only snapshot of SCENARIO; returns its path."""
    path = tmp_path / "baseline.json"
    r = invoke("snapshot", str(scenario), "-f", "numpy", "--output", str(path))
    assert r.exit_code == 0, r.output
    return path


def edit(path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def observation(doc: dict, step: int, quantity: str, framework: str = "numpy") -> dict:
    return next(o for o in doc["observations"] if o["step"] == step
                and o["quantity"] == quantity and o["framework"] == framework)


def test_snapshot_records_versions_definitions_and_digests(snapshot, scenario):
    doc = json.loads(snapshot.read_text())
    assert doc["kind"] == "xbn-snapshot" and doc["snapshot_schema"] == 1
    assert doc["xbn_version"] and doc["frameworks"]["numpy"]["versions"]["numpy"]
    (entry,) = doc["scenarios"]
    assert entry["name"] == "guard" and entry["sha256"] == load(scenario).digest
    assert entry["definition"]["inputs"]["x"][1] == [3.0, 5.0]
    assert {o["quantity"] for o in doc["observations"]} >= {"output", "moving_variance"}
    assert "expected" not in {o["framework"] for o in doc["observations"]}


def test_round_trip_is_exactly_unchanged(snapshot, tmp_path):
    r = invoke("check", str(snapshot))
    assert r.exit_code == 0, r.output
    assert "unchanged" in r.stdout
    r = invoke("check", str(snapshot), "--format", "json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["verdict"] == "unchanged" and doc["changes"] == []
    assert doc["compared"] == 10


def test_check_survives_a_deleted_scenario_file(snapshot, scenario):
    scenario.unlink()
    assert invoke("check", str(snapshot)).exit_code == 0


def test_an_edited_scenario_file_is_a_warning_not_a_change(snapshot, scenario):
    scenario.write_text(SCENARIO.replace("0.5, -1.0", "0.5, -2.0"))
    r = invoke("check", str(snapshot))
    assert r.exit_code == 0, r.output
    assert "has changed since the snapshot" in r.stderr


def test_doctored_value_is_a_change_naming_the_row(snapshot):
    def doctor(doc):
        observation(doc, 0, "moving_mean")["value"][1] = 0.5

    edit(snapshot, doctor)
    r = invoke("check", str(snapshot))
    assert r.exit_code == 1, r.output
    row = next(line for line in r.stdout.splitlines() if "moving_mean" in line)
    assert row.split()[:5] == ["guard", "0", "call", "numpy", "moving_mean"]
    assert "[0.015, 0.5]" in row and "[0.015, 0.02]" in row
    doc = json.loads(invoke("check", str(snapshot), "--format", "json").stdout)
    (change,) = doc["changes"]
    assert (change["scenario"], change["step"], change["framework"], change["quantity"]) == \
        ("guard", 0, "numpy", "moving_mean")
    assert change["old"]["value"][1] == 0.5 and change["new"]["value"][1] == pytest.approx(0.02)
    assert change["old_versions"] == change["new_versions"]


def test_one_ulp_is_a_change_unless_a_tolerance_accepts_it(snapshot):
    def nudge(doc):
        o = observation(doc, 0, "moving_mean")
        o["value"][0] = math.nextafter(o["value"][0], 1.0)

    edit(snapshot, nudge)
    r = invoke("check", str(snapshot))
    assert r.exit_code == 1 and "float64 rounding only (max 1 ulp" in r.stdout
    assert invoke("check", str(snapshot), "--tolerance", "16").exit_code == 0


def test_a_switch_explains_a_change(snapshot, scenario):
    """Old values from the reference with unbiased variance updates: the check names the switch."""
    unbiased = NumpyAdapter(semantics=Semantics(variance_update="unbiased"))
    values = {(o["step"], o["quantity"]): o["value"]
              for o in run_scenario(unbiased, load(scenario))}

    def swap(doc):
        for o in doc["observations"]:
            o["value"] = values[(o["step"], o["quantity"])]

    edit(snapshot, swap)
    r = invoke("check", str(snapshot), "--format", "json")
    assert r.exit_code == 1
    changes = json.loads(r.stdout)["changes"]
    assert {(c["step"], c["quantity"]) for c in changes} == \
        {(0, "moving_variance"), (1, "moving_variance"), (1, "output")}
    assert all(c["explanation"] == "variance_update: unbiased -> biased" for c in changes)


def resign(entry: dict, change) -> None:
    """Edit a stored definition and update its sha256, as a deliberate forger would."""
    change(entry["definition"])
    entry["sha256"] = definition_digest(entry["definition"])


@pytest.mark.parametrize("damage, message", [
    (lambda doc: doc["scenarios"][0]["definition"]["inputs"]["x"][0].__setitem__(0, 9.0),
     "does not match its sha256"),
    (lambda doc: doc.update(kind="xbn-report"), "not an xbn snapshot"),
    (lambda doc: doc.update(snapshot_schema=2), "unsupported snapshot_schema 2"),
    (lambda doc: doc.pop("observations"), "observations: required field is missing"),
    (lambda doc: doc["observations"][0].update(status="fine"), "observations[0].status"),
    (lambda doc: doc["observations"][0].update(value=["x"]), "observations[0].value"),
    (lambda doc: doc["observations"].append(dict(doc["observations"][0])), "duplicate"),
    (lambda doc: resign(doc["scenarios"][0], lambda d: d.pop("layer")), "malformed scenario"),
    (lambda doc: resign(doc["scenarios"][0], lambda d: d.update(name="other")),
     "does not match the entry's name"),
])
def test_bad_snapshots_exit_2_with_one_line(snapshot, damage, message):
    edit(snapshot, damage)
    r = invoke("check", str(snapshot))
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"xbn: error: {snapshot}: ") and message in line


def test_the_snapshot_format_keeps_its_keys_and_statuses():
    """Schema 1's observation keys in the order they are written (a regenerated snapshot must be
    byte-identical), and its statuses in the order its error message lists them."""
    from xbn.guard.snapshot import OBSERVATION_KEYS, STATUSES

    assert OBSERVATION_KEYS == ("scenario", "step", "rep", "op", "framework", "quantity",
                                "status", "value", "dtype", "message", "origin")
    assert STATUSES == ("ok", "error", "n/a")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"kind": "xbn-snapshot", "x": NaN}', ""])
def test_malformed_json_exits_2(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    r = invoke("check", str(path))
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.startswith(f"xbn: error: {path}: ")


def test_missing_file_and_foreign_framework_exit_2(snapshot, tmp_path):
    assert invoke("check", str(tmp_path / "nope.json")).exit_code == 2
    r = invoke("check", str(snapshot), "-f", "torch")
    assert r.exit_code == 2 and "not in the snapshot" in r.stderr


def test_junit_is_valid_xml_with_a_failure_per_changed_case(snapshot, tmp_path):
    ok_xml = tmp_path / "ok.xml"
    assert invoke("check", str(snapshot), "--junit", str(ok_xml)).exit_code == 0
    root = ET.parse(ok_xml).getroot()
    assert root.get("tests") == "1" and root.get("failures") == "0"

    edit(snapshot, lambda doc: observation(doc, 1, "output")["value"][0].__setitem__(0, 7.0))
    bad_xml, md = tmp_path / "bad.xml", tmp_path / "out.md"
    r = invoke("check", str(snapshot), "--junit", str(bad_xml), "--format", "markdown",
               "--output", str(md))
    assert r.exit_code == 1
    (case,) = ET.parse(bad_xml).getroot().iter("testcase")
    assert case.get("classname") == "xbn.guard" and case.get("name") == "numpy"
    assert "step 1 call output" in case.find("failure").text
    assert "| guard | 1 call | numpy | output |" in md.read_text()


@pytest.fixture
def ghost():
    FRAMEWORKS["ghost"] = FrameworkInfo("ghost", "ghost", "ghost", ("no-such-dist-xbn",),
                                        ("no-such-dist-xbn",))
    yield "ghost"
    FRAMEWORKS.pop("ghost")


def test_framework_no_longer_installed_is_skipped_with_a_warning(snapshot, tmp_path, ghost):
    def add_ghost(doc):
        doc["frameworks"]["ghost"] = {"available": True, "version": "1.0",
                                      "versions": {"ghost": "1.0"}}
        doc["observations"] += [{**o, "framework": "ghost", "value": [[0.0]]}
                                for o in doc["observations"] if o["framework"] == "numpy"]

    edit(snapshot, add_ghost)
    xml_path = tmp_path / "j.xml"
    r = invoke("check", str(snapshot), "--junit", str(xml_path))
    assert r.exit_code == 0, r.output
    assert "ghost skipped: not installed now" in r.stderr
    assert "skipped" in next(line for line in r.stdout.splitlines() if "ghost" in line)
    cases = {c.get("name"): c for c in ET.parse(xml_path).getroot().iter("testcase")}
    assert cases["ghost"].find("skipped") is not None and cases["numpy"].find("failure") is None


def test_require_all_fails_when_a_recorded_framework_is_gone(snapshot, tmp_path, ghost):
    """CI that lost a framework must not go green: --require-all lists its rows as missing."""
    def add_ghosts(doc):
        doc["frameworks"]["ghost"] = {"available": True, "version": "1.0",
                                      "versions": {"ghost": "1.0"}}
        doc["observations"] += [{**o, "framework": "ghost"}
                                for o in doc["observations"] if o["framework"] == "numpy"]
        doc["frameworks"]["torch"] = {"available": False}  # not installed then either

    edit(snapshot, add_ghosts)
    recorded = sum(o["framework"] == "ghost" for o in json.loads(snapshot.read_text())["observations"])
    plain = invoke("check", str(snapshot))
    assert plain.exit_code == 0 and "(--require-all makes this a failure)" in plain.stderr

    xml_path = tmp_path / "j.xml"
    r = invoke("check", str(snapshot), "--require-all", "--format", "json", "--junit",
               str(xml_path))
    assert r.exit_code == 1, r.output
    assert "ghost: not installed now" in r.stderr and "--require-all requires it" in r.stderr
    doc = json.loads(r.stdout)
    assert doc["frameworks"]["ghost"]["status"] == "checked"
    assert doc["frameworks"]["torch"]["status"] == "skipped"  # nothing recorded, nothing required
    gone = [c for c in doc["changes"] if c["framework"] == "ghost"]
    assert len(gone) == recorded and {c["kind"] for c in gone} == {"missing"}
    assert all(c["explanation"].startswith("not measured: not installed now") for c in gone)
    assert not [c for c in doc["changes"] if c["framework"] != "ghost"]
    cases = {c.get("name"): c for c in ET.parse(xml_path).getroot().iter("testcase")}
    assert cases["ghost"].find("failure") is not None and cases["numpy"].find("failure") is None


def test_non_finite_values_round_trip_through_strict_json():
    doc = {"kind": "xbn-snapshot", "snapshot_schema": 1, "xbn_version": "0",
           "frameworks": {"numpy": {"available": True}}, "scenarios": [], "observations": []}
    text = dumps({**doc, "observations": [{"value": [math.nan, math.inf]}]})
    assert '["NaN", "Infinity"]' in text
    json.loads(text, parse_constant=lambda c: pytest.fail(c))
    with pytest.raises(SnapshotError, match="scenarios: empty"):
        parse_snapshot(doc, "f.json")
    old = {"scenario": "s", "step": 0, "op": "call", "framework": "numpy", "quantity": "output",
           "status": "ok", "value": [math.nan, -math.inf], "dtype": "float32", "message": None}
    assert classify(old, {**old, "value": [math.nan, -math.inf]}) is None
    assert classify(old, {**old, "value": [0.0, -math.inf]}).kind == "value"
    assert classify(old, {**old, "status": "error", "value": None}).kind == "status"


@pytest.mark.slow  # snapshot and check of the built-in suite
def test_numpy_and_torch_round_trip_exactly(scenario, tmp_path):
    require_framework("torch")
    path = tmp_path / "two.json"
    r = invoke("snapshot", str(scenario), "-f", "numpy,torch", "-o", str(path))
    assert r.exit_code == 0, r.output
    doc = json.loads(path.read_text())
    assert doc["frameworks"]["torch"]["versions"]["torch"]
    assert {o["framework"] for o in doc["observations"]} == {"numpy", "torch"}
    r = invoke("check", str(path), "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["frameworks"]["torch"]["status"] == "checked"


def test_guard_commands_keep_help_light():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom xbn.cli import cli\n"
            "for args in (['snapshot', '--help'], ['check', '--help']):\n"
            "    assert CliRunner().invoke(cli, args).exit_code == 0\n"
            "print([m for m in ('torch', 'tensorflow', 'jax', 'pandas', 'xbn.guard.check')"
            " if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_failed_step_or_worker_names_the_failure_not_the_missing_rows(snapshot):
    snap = load_snapshot(snapshot)
    meta = {"numpy": {"available": True, "versions": {"numpy": "x"}}}
    raised = [o for o in snap.observations if o["step"] == 1]
    raised.append({**snap.observations[0], "status": "error", "value": None, "dtype": None,
                   "message": "AttributeError: no such API"})
    result = compare_run(snap, raised, meta, {})
    output, *state = result.changes
    assert output.kind == "status" and "no setting of the reference" in output.explanation
    assert state and all(c.kind == "missing" and "step 0 is error now (AttributeError"
                         in c.explanation for c in state)

    crash = "WorkerCrashed: exit status -15: no output"
    crashed = [{**o, "status": "error", "value": None, "message": crash}
               for o in snap.observations if o["quantity"] == "output"]
    result = compare_run(snap, crashed, {"numpy": {**meta["numpy"], "error": crash}}, {})
    assert result.changed and all("worker failed" in c.explanation for c in result.changes)
    assert any("the worker failed" in w for w in result.warnings)


def test_the_explanation_search_has_a_time_budget(snapshot, monkeypatch):
    import xbn.explain.changes as ge

    monkeypatch.setattr(ge, "SEARCH_BUDGET_S", -1.0)
    snap = load_snapshot(snapshot)
    moved = [{**o, "value": [[9.0, 9.0]] * 3} if (o["step"], o["quantity"]) == (1, "output")
             else o for o in snap.observations]
    (change,) = compare_run(snap, moved, {"numpy": {"available": True}}, {}).changes
    assert change.explanation == ge.OUT_OF_TIME


def test_snapshot_holds_no_timing_and_no_absolute_path(snapshot, tmp_path):
    text = snapshot.read_text()
    doc = json.loads(text)
    (entry,) = doc["scenarios"]
    assert not entry["definition"]["path"].startswith("/") and '"/' not in text
    assert all("seconds" not in meta for meta in doc["frameworks"].values())
    path = tmp_path / "builtin.json"
    assert invoke("snapshot", "bare-call", "-f", "numpy", "-o", str(path)).exit_code == 0
    (entry,) = json.loads(path.read_text())["scenarios"]
    assert entry["definition"]["path"] == "builtin:bare-call"
    r = invoke("check", str(path))
    assert r.exit_code == 0 and "has changed" not in r.stderr
    snap = load_snapshot(path)
    snap.scenarios[0].inputs["x"] = snap.scenarios[0].inputs["x"] + 1.0  # as if edited since
    assert any("builtin:bare-call has changed" in w for w in
               compare_run(snap, snap.observations, {"numpy": {"available": True}}, {}).warnings)


def test_exact_only_on_the_snapshots_cpu():
    """Bit-exact comparison is what the same versions on the same CPU give; a snapshot made on
    another CPU (or one that does not say which) is compared within the rounding tolerance,
    with a warning that says so, unless a tolerance is given."""
    from xbn.guard.check import OTHER_CPU_K, tolerance_for
    from xbn.guard.snapshot import Snapshot, platform_info

    here = platform_info()
    assert here["cpu_flags"] and here["machine"]

    def snap(plat):
        return Snapshot("s.json", "0", {}, [], [], plat)

    assert tolerance_for(snap(here), None) == (0.0, None)
    other = {**here, "cpu_flags": "0" * 16, "cpu": "another CPU"}
    k, why = tolerance_for(snap(other), None)
    assert k == OTHER_CPU_K > 0 and "another CPU" in why and "--tolerance 0" in why
    assert tolerance_for(snap({"machine": here["machine"]}), None)[0] == OTHER_CPU_K
    assert tolerance_for(snap(other), 0.0) == (0.0, None)
    assert tolerance_for(snap(here), 4.0) == (4.0, None)
