"""`xbn matrix`: snapshots of several releases merged; a switch that flips between two releases
is reported at the release where it flipped."""

from __future__ import annotations

import json

from click.testing import CliRunner

from xbn.adapters.base import run_scenario
from xbn.adapters.numpy.adapter import NumpyAdapter
from xbn.cli import cli
from xbn.execution.runner import RunResult
from xbn.guard.matrix import settings
from xbn.guard.snapshot import dumps, snapshot_document
from xbn.reference.batchnorm import Semantics
from xbn.scenario.loader import load

from .conftest import MINIMAL


def _snapshot(path, scenario, version: str, **switches) -> str:
    """A snapshot whose "torch" behaves like the reference with ``switches``."""
    ref = list(run_scenario(NumpyAdapter("numpy", Semantics()), scenario))
    fake = [dict(o, framework="torch")
            for o in run_scenario(NumpyAdapter("numpy", Semantics().with_(**switches)), scenario)]
    meta = {"numpy": {"available": True, "version": "2"},
            "torch": {"available": True, "version": version}}
    path.write_text(dumps(snapshot_document(RunResult(ref + fake, meta, [scenario]))))
    return str(path)


def test_settings_are_read_from_explanations():
    assert settings("precision=native, update_form=decrement (bit-exact)") == [
        ("precision", "native"), ("update_form", "decrement")]
    assert settings("ema=seeded (bit-exact); partial: reproduces 3 of 4 rows, not step 1 x") == [
        ("ema", "seeded")]
    assert settings("unexplained: no single switch") == []


def test_a_flipped_switch_is_reported_where_it_flipped(write_scenario, tmp_path):
    s = load(write_scenario(MINIMAL))
    old = _snapshot(tmp_path / "old.json", s, "1.0")
    new = _snapshot(tmp_path / "new.json", s, "2.0", variance_update="unbiased")
    res = CliRunner().invoke(cli, ["matrix", new, old, "--format", "json"])  # any order
    assert res.exit_code == 0, res.output
    torch = json.loads(res.stdout)["torch"]
    assert [r["version"] for r in torch["releases"]] == ["1.0", "2.0"]
    assert torch["releases"][0]["switches"] == {}
    assert torch["releases"][1]["switches"] == {"variance_update": ["unbiased"]}
    assert torch["changes"] == [{"switch": "variance_update", "at": "2.0", "before": "-",
                                 "after": "unbiased"}]
    md = CliRunner().invoke(cli, ["matrix", old, new]).stdout
    assert "`variance_update` changed at 2.0: - -> unbiased" in md
