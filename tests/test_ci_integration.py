"""xbn in a user's CI: the pytest plugin (run with pytester), the GitHub Action's script (run
with a fake $GITHUB_STEP_SUMMARY), the user's own divergences file, the pre-commit hook, and
the README section "In your CI" whose blocks these tests run.

The quick tests use xbn's float64 reference (numpy) only and plant a change in a snapshot;
the example project (torch) and the Keras 3.0.2 snapshot (three Keras backends) are slow."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.frameworks import require_framework

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "examples" / "user-project"
SCRIPT = ROOT / "scripts" / "xbn_action.sh"
README_HEADING = "## In your CI"
PLUGIN = ("-p", "xbn.pytest_plugin")  # also loaded by its entry point once xbn is reinstalled

SCENARIO = """schema = 1
name = "fresh"
[layer]
features = 2
[inputs]
x = [[1.0, -1.0], [3.0, 5.0]]
[[steps]]
op = "call"
input = "x"
training = true
"""
ACCEPT = """[[divergence]]
framework = "numpy"
quantity = "output"
reason = "planted: we accept it"
link = "https://example.invalid/planted"
"""
STALE = """
[[divergence]]
framework = "numpy"
quantity = "loss"
reason = "no fit step anywhere: matches nothing"
link = "https://example.invalid/stale"
"""


def _xbn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xbn", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: one scenario and a snapshot of it made by numpy (the reference)."""
    (tmp_path / "fresh.toml").write_text(SCENARIO, encoding="utf-8")
    out = _xbn("snapshot", "fresh.toml", "-f", "numpy", "-o", "baseline.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return tmp_path


def _plant(snapshot: Path) -> float:
    """Change numpy's recorded output of step 0 (as an upgrade that moved it would); returns
    the value it had."""
    doc = json.loads(snapshot.read_text(encoding="utf-8"))
    row = next(o for o in doc["observations"] if o["quantity"] == "output")
    old = row["value"][0][0]
    row["value"][0][0] = old + 0.5
    snapshot.write_text(json.dumps(doc), encoding="utf-8")
    return old


def _recorded_output(snapshot: Path) -> float:
    doc = json.loads(snapshot.read_text(encoding="utf-8"))
    return next(o for o in doc["observations"] if o["quantity"] == "output")["value"][0][0]


# ----------------------------------------------------------------------------------------
# the pytest plugin


def test_the_plugin_imports_no_framework_until_a_test_asks(pytester):
    pytester.makepyfile(test_lazy="""
        import sys

        def test_nothing_heavy(xbn):
            assert "xbn.pytest_plugin" in sys.modules
            heavy = [m for m in ("torch", "tensorflow", "jax", "keras", "paddle", "mlx",
                                 "xbn.analysis", "xbn.execution") if m in sys.modules]
            assert heavy == []
            assert callable(xbn.assert_bn_equivalent)   # imported now, on request
            assert "xbn.testing" in sys.modules
    """)
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_fixture_fails_a_bad_scenario_with_one_line(pytester):
    pytester.makepyfile(test_bad="""
        def test_typo(xbn):
            xbn.run({"schema": 1, "name": "typo", "layer": {"features": 1},
                     "inputs": {"x": [[1.0], [2.0]]},
                     "steps": [{"op": "call", "input": "x", "trainig": True}]},
                    frameworks=["numpy"])
    """)
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*xbn: <test_typo>: steps[[]0[]].trainig: unknown key*"])


@pytest.mark.slow  # several runs of the reference's worker
def test_baseline_passes_fails_on_a_planted_change_and_update_rewrites_it(pytester, project):
    """--xbn-baseline: one test per scenario; a changed observation fails it with the step,
    framework, quantity and the way back; --xbn-update rewrites the snapshot (syrupy)."""
    baseline = project / "baseline.json"
    good = _recorded_output(baseline)
    result = pytester.runpytest(*PLUGIN, f"--xbn-baseline={baseline}")
    result.assert_outcomes(passed=1)

    _plant(baseline)
    result = pytester.runpytest(*PLUGIN, f"--xbn-baseline={baseline}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*xbn: scenario 'fresh': 1 observation(s) changed since*baseline.json",
        "*step 0 call*numpy*output*value, max_ulp*",
        "*--xbn-update*"])

    # the user's divergences file accepts the change; its other entry matched nothing: stale
    (project / "div.toml").write_text(ACCEPT + STALE, encoding="utf-8")
    result = pytester.runpytest(*PLUGIN, f"--xbn-baseline={baseline}",
                                f"--xbn-divergences={project / 'div.toml'}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*xbn: stale divergences*",
                                 "*div.toml: divergence[[]1[]] (numpy: loss) matched nothing*"])
    assert "divergence[0]" not in result.stdout.str()

    result = pytester.runpytest(*PLUGIN, f"--xbn-baseline={baseline}", "--xbn-update")
    result.assert_outcomes(passed=1)
    assert _recorded_output(baseline) == good
    result = pytester.runpytest(*PLUGIN, f"--xbn-baseline={baseline}")
    result.assert_outcomes(passed=1)


# ----------------------------------------------------------------------------------------
# --divergences on the command line


def test_run_reports_stale_entries_and_refuses_a_bad_file(project):
    (project / "div.toml").write_text(STALE, encoding="utf-8")
    out = _xbn("run", "fresh.toml", "-f", "numpy", "--divergences", "div.toml", "--quiet",
               "--format", "csv", "--no-cache", cwd=project)
    assert out.returncode == 0, out.stderr
    assert "xbn: warning: div.toml: divergence[0] (numpy: loss) matches no differing row: " \
           "stale, remove it" in out.stderr
    (project / "bad.toml").write_text(STALE.replace('"loss"', '"los"'), encoding="utf-8")
    out = _xbn("run", "fresh.toml", "-f", "numpy", "--divergences", "bad.toml", cwd=project)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "xbn: error: bad.toml: divergence[0].quantity: 'los' is not one of " +
        out.stderr.split("is not one of ", 1)[1].strip()]


# ----------------------------------------------------------------------------------------
# the GitHub Action


def _action(project: Path, **env: str) -> tuple[subprocess.CompletedProcess, str, str]:
    summary, outputs = project / "summary.md", project / "outputs.txt"
    summary.write_text("", encoding="utf-8")
    outputs.write_text("", encoding="utf-8")
    full = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(outputs),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    out = subprocess.run(["bash", str(SCRIPT)], cwd=project, env=full, capture_output=True,
                         text=True, timeout=600)
    return out, summary.read_text(encoding="utf-8"), outputs.read_text(encoding="utf-8")


@pytest.mark.slow  # several runs of the reference's worker
def test_the_action_script_passes_fails_and_accepts(project):
    out, summary, outputs = _action(project, XBN_BASELINE="baseline.json",
                                    XBN_SCENARIOS="*.toml", XBN_REQUIRE_ALL="true")
    assert out.returncode == 0, out.stderr
    assert "status=0" in outputs and "junit=xbn-report/xbn.xml" in outputs
    assert summary == (project / "xbn-report" / "xbn.md").read_text(encoding="utf-8")
    assert (project / "xbn-report" / "xbn.xml").is_file()

    _plant(project / "baseline.json")
    out, summary, outputs = _action(project, XBN_BASELINE="baseline.json")
    assert out.returncode == 1, out.stderr
    assert "status=1" in outputs
    assert "numpy" in summary and "output" in summary and "changed" in summary

    (project / "div.toml").write_text(ACCEPT, encoding="utf-8")
    out, summary, outputs = _action(project, XBN_BASELINE="baseline.json",
                                    XBN_DIVERGENCES="div.toml")
    assert out.returncode == 0, out.stderr
    assert "accepted (div.toml: divergence[0])" in summary

    (project / "typo.toml").write_text(SCENARIO.replace("training", "trainig"), encoding="utf-8")
    out, summary, outputs = _action(project, XBN_BASELINE="baseline.json",
                                    XBN_SCENARIOS="typo.toml")
    assert out.returncode == 2
    assert "typo.toml: steps[0].trainig: unknown key" in summary
    assert "status=2" in outputs


def test_action_yml_runs_the_script_with_every_input():
    action = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    check = next(s for s in steps if s.get("id") == "check")
    assert "scripts/xbn_action.sh" in check["run"]
    used = set(re.findall(r"inputs\.([a-z-]+)", yaml.safe_dump(action["runs"])))
    assert used == set(action["inputs"]), used ^ set(action["inputs"])
    script = SCRIPT.read_text(encoding="utf-8")
    for var in check["env"]:
        assert var in script, var


# ----------------------------------------------------------------------------------------
# the pre-commit hook


def test_the_pre_commit_hook_validates_the_example_without_a_framework():
    """The hook is fast because it imports no framework (its time is measured by
    benchmarks/precommit_hook.py, not asserted here: a timed test fails on a busy machine)."""
    hooks = {h["id"]: h for h in yaml.safe_load(
        (ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))}
    hook = hooks["xbn-validate"]
    files = sorted(str(p.relative_to(PROJECT)) for p in PROJECT.rglob("*")
                   if re.search(hook["files"], p.name))
    assert "baseline.json" in files and "xbn-divergences.toml" in files
    out = subprocess.run([shutil.which("xbn") or "xbn", *hook["entry"].split()[1:], *files],
                         cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    probe = ("import json, sys\nfrom xbn.cli import main\nsys.argv = ['xbn', *sys.argv[1:]]\n"
             "code = None\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
             "heavy = ('torch', 'tensorflow', 'jax', 'keras', 'paddle', 'mlx', 'onnxruntime')\n"
             "print(json.dumps([code or 0, sorted(m for m in heavy if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", probe, *hook["entry"].split()[1:], *files],
                         cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout.splitlines()[-1]) == [0, []], out


# ----------------------------------------------------------------------------------------
# the README section: its blocks, run


def _section() -> str:
    """The README's "In your CI" section (XBN_README: another file, e.g. a draft)."""
    text = Path(os.environ.get("XBN_README", ROOT / "README.md")).read_text(encoding="utf-8")
    start = text.index(README_HEADING + "\n")
    rest = text[start + len(README_HEADING):]
    end = re.search(r"^## ", rest, re.M)
    return rest[:end.start()] if end else rest


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", _section(), re.M | re.S)


def test_readme_blocks_match_the_action_the_hooks_and_the_schema(tmp_path):
    [workflow] = _blocks("yaml")[:1]
    job = yaml.safe_load(workflow)["jobs"]["xbn"]
    use = next(s for s in job["steps"] if str(s.get("uses", "")).endswith("/xbn@v1"))
    inputs = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))["inputs"]
    assert set(use["with"]) <= set(inputs)
    assert {k for k, v in inputs.items() if v.get("required")} <= set(use["with"])

    [toml] = _blocks("toml")
    (tmp_path / "xbn-divergences.toml").write_text(toml, encoding="utf-8")
    out = _xbn("validate", "xbn-divergences.toml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr

    config = yaml.safe_load(_blocks("yaml")[1])
    hooks = {h["id"]: h for h in yaml.safe_load(
        (ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))}
    for hook in config["repos"][0]["hooks"]:
        assert hook["id"] in hooks
        chosen = [p for p in ("scenarios/port-momentum.toml", "xbn-divergences.toml",
                              "baseline.json") if re.search(hook["files"], p)]
        assert len(chosen) == 3
        out = _xbn(*hooks[hook["id"]]["entry"].split()[1:], *chosen, cwd=PROJECT)
        assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_readme_pytest_blocks_run_in_the_example_project(pytester):
    """The README's Python and shell blocks in a copy of examples/user-project (torch)."""
    require_framework("torch")
    shutil.copytree(PROJECT, pytester.path, dirs_exist_ok=True)
    [python] = _blocks("python")
    (pytester.path / "tests" / "test_readme.py").write_text(python, encoding="utf-8")
    bash = _blocks("bash")[0].splitlines()[0]
    args = bash.split()[1:]  # pytest --xbn-baseline baseline.json --xbn-divergences ...
    result = pytester.runpytest_subprocess(*PLUGIN, *[a for a in args if "#" not in a])
    result.assert_outcomes(passed=5)  # 3 tests of the project + 2 baseline scenarios


@pytest.mark.slow
def test_a_changed_keras_pin_fails_with_a_readable_message(pytester):
    """The Keras 3.0.2 snapshot (reports/matrix) checked with the Keras installed now: the
    moments changed in 3.0.3 (examples/matrix/keras-moments.toml) and the torch backend's
    inference form at 3.0.5 (seed-keras; reports/matrix/keras.md), so both scenarios' tests
    fail and say which rows, how far, and which versions."""
    require_framework("keras")
    snapshot = ROOT / "reports" / "matrix" / "snapshot-keras-3.0.2.json"
    result = pytester.runpytest_subprocess(*PLUGIN, f"--xbn-baseline={snapshot}")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*xbn: scenario 'keras-moments': * observation(s) changed since*",
        "*keras*: 3.0.2 in the baseline, * now*"])
