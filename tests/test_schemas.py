"""The JSON Schemas (xbn/schemas/): every file xbn writes validates against its schema, every
committed report does, the schemas say what the strict readers accept (the same vocabulary),
and `xbn schema NAME` prints them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from xbn import schemas
from xbn.profiles.divergences import tomllib

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "examples" / "user-project" / "scenarios" / "fresh-inference.toml"


def _toml(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _xbn(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xbn", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("name", schemas.NAMES)
def test_each_schema_is_a_valid_json_schema(name):
    doc = schemas.schema(name)
    jsonschema.validators.validator_for(doc).check_schema(doc)
    assert doc["$id"] == f"{schemas.BASE}{name}.json"


def test_xbn_schema_prints_the_packaged_file():
    out = _xbn("schema", "snapshot")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(
        (ROOT / "xbn" / "schemas" / "snapshot.json").read_text(encoding="utf-8"))
    bad = _xbn("schema", "snapshots")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "xbn: error: unknown schema 'snapshots' (did you mean 'snapshot'?); schemas: "
        "scenario, results, snapshot, finding, divergences"]


def test_the_scenario_schema_has_the_loaders_vocabulary():
    """Ops, each op's keys and the layer's keys: what the loader accepts, no more, no less."""
    from xbn.scenario import additions
    from xbn.scenario.loader import _LAYER_KEYS, OPS
    from xbn.scenario.steps import _OPS

    doc = schemas.schema("scenario")
    assert set(doc["properties"]["layer"]["properties"]) == _LAYER_KEYS
    step = doc["$defs"]["step"]
    assert step["properties"]["op"]["enum"] == list(OPS)
    by_op = {b["if"]["properties"]["op"]["const"]: set(b["then"]["propertyNames"]["enum"])
             for b in step["allOf"]}
    assert by_op == {op: {"op", "expect"} | set(keys) | additions.step_keys(op)
                     for op, (keys, _) in _OPS.items()}


def test_the_divergences_schema_has_the_parsers_conditions():
    from xbn.profiles.divergences import LAYER_CONDITIONS, STEP_CONDITIONS

    entry = schemas.schema("divergences")["properties"]["divergence"]["items"]["properties"]
    assert set(entry["layer"]["properties"]) == set(LAYER_CONDITIONS)
    assert set(entry["step"]["properties"]) == set(STEP_CONDITIONS) == \
        set(entry["after"]["properties"])


def test_every_scenario_and_divergences_file_in_the_repository_validates():
    files = [*sorted((ROOT / "xbn" / "scenarios").glob("*.toml")),
             *sorted((ROOT / "examples").rglob("*.toml"))]
    for f in files:
        doc = _toml(f)
        if "steps" not in doc and "divergence" not in doc:  # a matrix plan, a project file
            continue
        kind = schemas.kind_of(str(f), doc)
        assert schemas.problems(kind, doc) == [], f
    assert schemas.problems("divergences", _toml(ROOT / "xbn" / "profiles" / "divergences.toml")) == []
    findings = sorted(f for f in (ROOT / "findings").glob("*.toml") if f.name != "known.toml")
    assert findings, "findings/ holds the committed fuzz findings"
    for f in findings:
        assert schemas.problems("finding", _toml(f)) == [], f


def test_the_known_causes_file_reads_and_every_link_is_a_url_or_a_committed_finding():
    """findings/known.toml (``xbn fuzz --known``) is no finding: its strict reader checks it, and
    a link that is a path must name a file that exists."""
    from xbn.fuzz.upstream import load_known

    known = load_known(str(ROOT / "findings" / "known.toml"))
    assert known
    for link in known.values():
        assert link.startswith("https://") or (ROOT / link).is_file(), link


def test_a_schema_error_is_one_line_naming_file_and_key(tmp_path):
    """The loader's own checks come first; the schema catches what they let through, with the
    same one-line shape. Here the schema rejects a document directly."""
    doc = _toml(SCENARIO)
    doc["steps"][0]["training"] = "yes"
    with pytest.raises(schemas.SchemaError) as exc:
        schemas.validate("scenario", doc, "my.toml")
    assert str(exc.value) == "my.toml: steps[0].training: 'yes' is not of type 'boolean' (schema scenario)"
    doc["steps"][0] = {"op": "call", "input": "x", "weights": "x"}
    with pytest.raises(schemas.SchemaError, match=r"^my\.toml: steps\[0\]: key 'weights' is not "
                                                  r"allowed here \(allowed: expect, input,"):
        schemas.validate("scenario", doc, "my.toml")


def test_what_xbn_writes_validates(tmp_path):
    """`xbn run --format json` (results) and `xbn snapshot` (snapshot) of a real run."""
    out = _xbn("run", str(SCENARIO), "-f", "numpy", "--format", "json", "--no-cache", "--quiet")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert results["observations"]
    assert schemas.problems("results", results) == []
    snap = tmp_path / "snap.json"
    out = _xbn("snapshot", str(SCENARIO), "-f", "numpy", "-o", str(snap))
    assert out.returncode == 0, out.stderr
    assert schemas.problems("snapshot", json.loads(snap.read_text(encoding="utf-8"))) == []
    # and a broken one does not: an observation whose status is not one of the three
    broken = json.loads(snap.read_text(encoding="utf-8"))
    broken["observations"][0]["status"] = "fine"
    assert schemas.problems("snapshot", broken)[0][0] == "observations[0].status"


def test_a_fuzz_finding_validates(tmp_path):
    """What ``xbn.fuzz.output.to_toml`` writes, read back, is a valid finding."""
    from xbn.fuzz.output import to_toml

    doc = _toml(SCENARIO)
    doc["name"] = "torch-some-cause"
    text = to_toml(doc, "xbn fuzz finding (torch: some_cause)")
    assert schemas.problems("finding", tomllib.loads(text)) == []


@pytest.mark.parametrize("path", sorted((ROOT / "reports" / "matrix").glob("*.json")),
                         ids=lambda p: p.name)
def test_committed_matrix_snapshots_validate(path):
    assert schemas.problems("snapshot", json.loads(path.read_text(encoding="utf-8"))) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["results.json", "baseline.json"])
def test_committed_reports_validate(name):
    """reports/results.json and reports/baseline.json: thousands of observations (slow)."""
    path = ROOT / "reports" / name
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert schemas.problems(schemas.kind_of(str(path), doc), doc) == []
