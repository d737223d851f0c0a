"""The command line: exit codes, formats, lazy imports, and reports that are never half-written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from xbn.cli import cli

from .conftest import MINIMAL

HEAVY = ("torch", "tensorflow", "keras", "tf_keras", "jax", "flax", "haiku", "equinox", "pandas")


def test_help_and_list_import_no_framework():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from xbn.cli import cli\n"
        "for args in (['--help'], ['list'], ['frameworks'], ['run', '--help']):\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    assert r.exit_code == 0, r.output\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_validation_imports_no_framework(write_scenario):
    path = write_scenario(MINIMAL)
    code = (f"import sys, xbn\nxbn.load_scenario({str(path)!r})\n"
            f"print([m for m in {HEAVY[:-1]!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_scenario_exits_2_with_one_line(write_scenario):
    path = write_scenario(MINIMAL.replace("training = true", "trainng = true"))
    r = CliRunner().invoke(cli, ["run", str(path), "-f", "numpy"])
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert f"{path}: steps[0].trainng: unknown key" in r.output


@pytest.mark.parametrize("args", [["run", "x.toml", "-f", "nosuch"], ["run", "x.toml", "-r", "nope"],
                                  ["run", "--format", "yaml", "x.toml"], ["run"]])
def test_usage_errors_exit_2(args):
    assert CliRunner().invoke(cli, args).exit_code == 2


def test_run_json_follows_the_contract(write_scenario):
    path = write_scenario(MINIMAL)
    r = CliRunner().invoke(cli, ["run", str(path), "-f", "numpy", "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["xbn_version"] and doc["frameworks"]["numpy"]["available"] is True
    first = doc["observations"][0]
    assert set(first) >= {"scenario", "step", "op", "framework", "quantity", "status", "value",
                          "dtype", "message"}
    assert first["quantity"] == "output" and len(first["value"]) == 3


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "html"])
def test_every_format_renders(write_scenario, fmt):
    r = CliRunner().invoke(cli, ["run", str(write_scenario(MINIMAL)), "-f", "numpy", "--format", fmt])
    assert r.exit_code == 0 and r.stdout.strip()


def test_output_is_not_replaced_on_bad_input(write_scenario, tmp_path):
    good = tmp_path / "out.json"
    r = CliRunner().invoke(cli, ["run", str(write_scenario(MINIMAL)), "-f", "numpy",
                                 "--format", "json", "-o", str(good)])
    assert r.exit_code == 0
    before = good.read_text()
    bad = write_scenario(MINIMAL.replace("schema = 1", "schema = 9"), "bad.toml")
    r = CliRunner().invoke(cli, ["run", str(bad), "-f", "numpy", "--format", "json", "-o", str(good)])
    assert r.exit_code == 2 and good.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_same_run_twice_gives_the_same_json(write_scenario):
    path = str(write_scenario(MINIMAL))
    runs = [CliRunner().invoke(cli, ["run", path, "-f", "numpy", "--format", "json"]).stdout
            for _ in range(2)]
    strip = [json.loads(r) for r in runs]
    for doc in strip:
        for meta in doc["frameworks"].values():
            meta.pop("seconds", None)
    assert strip[0] == strip[1]


def test_frameworks_lists_every_id():
    r = CliRunner().invoke(cli, ["frameworks", "--format", "json"])
    data = json.loads(r.stdout)
    assert list(data) == ["numpy", "torch", "keras", "keras-jax", "keras-torch", "tf-keras",
                          "flax", "flax-nnx", "haiku", "equinox"]


def test_written_json_carries_no_timing(write_scenario):
    """Timings differ on every run: a committed report must not change when nothing else did."""
    r = CliRunner().invoke(cli, ["run", str(write_scenario(MINIMAL)), "-f", "numpy",
                                 "--format", "json"])
    assert r.exit_code == 0, r.output
    assert all("seconds" not in meta for meta in json.loads(r.stdout)["frameworks"].values())


@pytest.mark.parametrize("command", ["run", "snapshot", "check"])
def test_every_command_parses_framework_ids_alike(write_scenario, tmp_path, command):
    path = str(write_scenario(MINIMAL))
    if command == "check":
        snap = tmp_path / "snap.json"
        made = CliRunner().invoke(cli, ["snapshot", path, "-f", "numpy", "-o", str(snap)])
        assert made.exit_code == 0, made.output
        path = str(snap)
    r = CliRunner().invoke(cli, [command, path, "-f", "numpy, nosuch"])
    assert r.exit_code == 2
    assert "xbn: error: unknown framework id(s) nosuch; known: numpy, torch" in r.output
