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
    ("keras-torch", "is nan where keras-torch's own documented computation gives"),
    ("haiku", "is nan where haiku's own documented computation gives"),
    ("flax", "relative departure"),
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
    """A step with no standalone form (a masked call) is one line naming it, exit 2."""
    doc = large_mean("mask", 0.0, 1.0)
    doc["inputs"]["m"] = [1, 1, 0]
    doc["steps"] = [{"op": "call", "input": "x", "training": True, "mask": "m"}]
    r = CliRunner().invoke(cli, ["repro", write_doc(tmp_path, doc), "--framework", "torch"])
    assert r.exit_code == 2, r.output
    assert "mask" in r.output and len(r.output.strip().splitlines()) == 1


def test_set_momentum_exits_2_even_where_fit_is_supported(tmp_path):
    """torch's template writes fits, but a momentum change mid-run still has no standalone form."""
    doc = large_mean("set", 0.0, 1.0)
    doc["steps"] += [{"op": "set", "momentum": 0.5}]
    r = CliRunner().invoke(cli, ["repro", write_doc(tmp_path, doc), "--framework", "torch"])
    assert r.exit_code == 2, r.output
    assert "momentum" in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.slow  # a haiku worker and a root-cause search: about 12 s
def test_summary_names_only_files_that_exist(tmp_path):
    """A finding whose scenario has no standalone form (a set of the momentum) gets no script,
    and its summary names no script: every file it names is beside it; it ends with the
    upstream report."""
    need("haiku")
    from xbn.fuzz.campaign import Finding
    from xbn.fuzz.cause import root_cause
    from xbn.fuzz.output import write
    from xbn.fuzz.verdict import flags_of
    from xbn.scenario.loader import parse

    from .test_fuzz import _files_named, rows_of

    doc = large_mean("fit", 1e4, 1e-1)
    doc["steps"] = [{"op": "set", "momentum": 0.5},
                    {"op": "fit", "input": "x", "target": "x",
                     "optimizer": {"name": "sgd", "lr": 0.01}}]
    scenario = parse(doc)
    rows = rows_of("haiku", [doc])["fit"]
    flag = next(f for f in flags_of("haiku", scenario, rows, 16.0) if f.kind == "nan")
    finding = Finding(flag, doc, scenario, rows, root_cause(flag, scenario, rows))
    paths = write(finding, tmp_path, {"dm-haiku": "0"}, 0)
    names = {p.name for p in paths}
    assert {p.suffix for p in paths} == {".toml", ".md"}  # no standalone set of the momentum
    md = next(p for p in paths if p.suffix == ".md").read_text()
    assert _files_named(md) <= names, _files_named(md) - names
    assert "## Upstream report" in md and "Upstream status:" in md.splitlines()[-1]


OBSERVED_DUMP = """
import json as _json
print("OBSERVED " + _json.dumps({k: np.asarray(v, np.float64).tolist()
                                 for k, v in OBSERVED.items()}))
"""


def _training_doc(name: str, optimizer: dict) -> dict:
    """A fit in two mini-batches over two epochs, a second fit with the same optimizer (kept,
    the driver's rule), and a grad step in each mode: every path of the templates' fit/grad."""
    shape = [4, 2]
    return {"schema": 1, "name": name, "layer": {"features": 2, "momentum": 0.9,
                                                 "epsilon": 1e-3},
            "inputs": {"x": {"normal": {"mean": 1.0, "std": 2.0}, "shape": shape, "seed": 0},
                       "t": {"normal": {"mean": 0.5, "std": 1.0}, "shape": shape, "seed": 1},
                       "w": {"normal": {"mean": 0.0, "std": 1.0}, "shape": shape, "seed": 2}},
            "steps": [{"op": "fit", "input": "x", "target": "t", "optimizer": optimizer,
                       "epochs": 2, "batch_size": 2},
                      {"op": "fit", "input": "x", "target": "t", "optimizer": optimizer},
                      {"op": "grad", "input": "x", "training": True, "weights": "w"},
                      {"op": "grad", "input": "x", "training": False, "weights": "w"}]}


@pytest.mark.slow  # a subprocess importing the framework, then its adapter: > 10 s
@pytest.mark.parametrize("framework,optimizer", [
    ("haiku", {"name": "adam", "lr": 0.1}),
    ("haiku+eager", {"name": "sgd", "lr": 0.1}),
    ("equinox", {"name": "adam", "lr": 0.1}),
    ("equinox+jit", {"name": "rmsprop", "lr": 0.01}),
    ("flax", {"name": "adam", "lr": 0.1}),
    ("flax-nnx", {"name": "rmsprop", "lr": 0.01}),
    ("keras", {"name": "adam", "lr": 0.1}),
    ("keras-jax", {"name": "sgd", "lr": 0.1}),
    ("keras-torch", {"name": "adam", "lr": 0.1}),
    ("tf-keras", {"name": "sgd", "lr": 0.1}),
])
def test_fit_and_grad_scripts_agree_with_the_adapter(tmp_path, framework, optimizer):
    """The script of a fit and grad scenario, run with xbn unimportable, observes the values
    xbn's adapter observes for the same scenario, bit for bit: the same optimizer, loss
    reduction, trained parameters and running-statistics updates."""
    import json

    import numpy as np

    from xbn.fuzz.repro import script
    from xbn.scenario.loader import parse

    from .test_fuzz import rows_of

    need(framework.partition("+")[0])
    doc = _training_doc("train", optimizer)
    scenario = parse(doc, "<t>")
    path = tmp_path / "repro.py"
    path.write_text(script(scenario, framework) + OBSERVED_DUMP, encoding="utf-8")
    out = run_script(path, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    observed = json.loads(out.stdout.strip().splitlines()[-1].removeprefix("OBSERVED "))
    # the adapter in a worker, as xbn runs it (a Keras 3 backend is chosen per process)
    rows = {f"{o['step']}|{o['quantity']}": o for o in rows_of(framework, [doc])["train"]}
    assert {k.split("|")[1] for k in observed} >= {"loss", "output", "grad_input", "grad_gamma",
                                                   "grad_beta", "moving_mean", "gamma"}
    for key, value in observed.items():
        assert rows[key]["status"] == "ok", (key, rows[key])
        np.testing.assert_array_equal(np.asarray(value).ravel(),
                                      np.asarray(rows[key]["value"], np.float64).ravel(),
                                      err_msg=key)
