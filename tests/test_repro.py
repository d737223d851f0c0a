"""``xbn repro``: generated scripts run on their own, with xbn unimportable, and state the
discrepancy in their last line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from xbn.cli import cli

from .test_fuzz import large_mean, need

ROOT = str(Path(__file__).resolve().parents[1])  # the checkout, which holds xbn/
# Run a script the way a framework's maintainer would: no xbn anywhere (the editable install's
# import hook removed, the checkout off sys.path), and prove it.
RUNNER = (
    "import sys, runpy\n"
    "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
    f"sys.path = [p for p in sys.path if p not in ('', '.', {ROOT!r}) and '__editable__' not in p]\n"
    "try:\n"
    "    import xbn\n"
    "    raise SystemExit('xbn is importable')\n"
    "except ModuleNotFoundError:\n"
    "    pass\n"
    "runpy.run_path(sys.argv[1], run_name='__main__')\n"
    "assert 'xbn' not in sys.modules\n"
)


def run_script(path, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", RUNNER, str(path)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def write_doc(tmp_path, doc) -> str:
    from xbn.fuzz.output import to_toml

    path = tmp_path / f"{doc['name']}.toml"
    path.write_text(to_toml(doc))
    return str(path)


@pytest.mark.slow  # runs frameworks in standalone scripts
@pytest.mark.parametrize("framework,expect", [
    ("keras-torch", "is nan where the exact value is"),
    ("haiku", "is nan where the exact value is"),
    ("flax", "relative error"),
])
def test_generated_script_runs_without_xbn(tmp_path, framework, expect):
    need(framework)
    doc = large_mean("big", 1e4, 1e-1)
    doc["steps"].append({"op": "predict", "input": "x"})
    out = tmp_path / "repro.py"
    r = CliRunner().invoke(cli, ["repro", write_doc(tmp_path, doc), "--framework", framework,
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "import xbn" not in out.read_text() and "from xbn" not in out.read_text()
    done = run_script(out, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("step 0 output") and "exact" in line for line in lines)
    assert lines[-1].startswith(f"{framework} (") and expect in lines[-1], lines[-1]


@pytest.mark.slow  # runs frameworks in standalone scripts
def test_script_of_a_framework_that_agrees_says_so(tmp_path):
    """torch on a well-conditioned batch: the exact values match within rounding."""
    need("torch")
    doc = large_mean("calm", 0.0, 1.0, batch=4)
    doc["layer"]["layout"] = "NLC"
    doc["inputs"]["x"]["shape"] = [4, 2, 1]
    doc["steps"] += [{"op": "set", "trainable": False}, {"op": "call", "input": "x",
                                                          "training": False}]
    out = tmp_path / "calm.py"
    assert CliRunner().invoke(cli, ["repro", write_doc(tmp_path, doc), "--framework", "torch",
                                    "-o", str(out)]).exit_code == 0
    done = run_script(out, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no discrepancy" in done.stdout.strip().splitlines()[-1]


def test_unsupported_step_exits_2(tmp_path):
    """A step with no standalone form (a fit on a family whose template has no trainer) is one
    line naming the op, exit 2."""
    doc = large_mean("fit", 0.0, 1.0)
    doc["steps"] = [{"op": "fit", "input": "x", "target": "x",
                     "optimizer": {"name": "sgd", "lr": 0.1}}]
    r = CliRunner().invoke(cli, ["repro", write_doc(tmp_path, doc), "--framework", "haiku"])
    assert r.exit_code == 2
    assert "fit" in r.output and len(r.output.strip().splitlines()) == 1


def test_set_momentum_exits_2_even_where_fit_is_supported(tmp_path):
    """torch's template writes fits, but a momentum change mid-run still has no standalone form."""
    doc = large_mean("set", 0.0, 1.0)
    doc["steps"] += [{"op": "set", "momentum": 0.5}]
    r = CliRunner().invoke(cli, ["repro", write_doc(tmp_path, doc), "--framework", "torch"])
    assert r.exit_code == 2, r.output
    assert "momentum" in r.output and len(r.output.strip().splitlines()) == 1


def test_summary_names_only_files_that_exist(tmp_path):
    """A finding whose scenario has no standalone form (a fit) gets no script, and its summary
    names no script: every file it names is beside it; it ends with the upstream report."""
    need("haiku")
    from xbn.fuzz.campaign import Finding
    from xbn.fuzz.cause import root_cause
    from xbn.fuzz.output import write
    from xbn.fuzz.verdict import flags_of
    from xbn.scenario.loader import parse

    from .test_fuzz import _files_named, rows_of

    doc = large_mean("fit", 1e4, 1e-1)
    doc["steps"] = [{"op": "fit", "input": "x", "target": "x",
                     "optimizer": {"name": "sgd", "lr": 0.01}}]
    scenario = parse(doc)
    rows = rows_of("haiku", [doc])["fit"]
    flag = next(f for f in flags_of("haiku", scenario, rows, 16.0) if f.kind == "nan")
    finding = Finding(flag, doc, scenario, rows, root_cause(flag, scenario, rows))
    paths = write(finding, tmp_path, {"dm-haiku": "0"}, 0)
    names = {p.name for p in paths}
    assert {p.suffix for p in paths} == {".toml", ".md"}  # no template for fit
    md = next(p for p in paths if p.suffix == ".md").read_text()
    assert _files_named(md) <= names, _files_named(md) - names
    assert "## Upstream report" in md and "Upstream status:" in md.splitlines()[-1]
