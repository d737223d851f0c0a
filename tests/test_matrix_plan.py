"""`xbn matrix plan` and `xbn matrix run`: a VERSIONS.toml becomes cells with stable ids; the
local and Ray engines run a 2x2 plan (two Keras 3 releases from the package index x two
scenarios) to byte-identical merged reports; a killed cell leaves the others finishing and the
run resumable; without Ray, `--engine ray` names the extra to install."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from xbn.cli import cli

from .frameworks import require_framework

ROOT = Path(__file__).resolve().parents[1]
MOMENTS = ROOT / "examples" / "matrix" / "keras-moments.toml"


def _versions(tmp_path, body: str) -> str:
    path = tmp_path / "versions.toml"
    path.write_text(body)
    return str(path)


def test_plan_has_one_cell_per_version_set_and_drops_excluded_pairs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(MOMENTS.read_text())
    path = _versions(tmp_path, """
schema = 1
name = "k"
frameworks = ["numpy", "keras-jax"]
scenarios = ["s.toml", "seed-keras"]
[packages.keras]
versions = ["3.0.2", "3.0.3"]
[packages.jax]
versions = ["0.4.20", "0.4.30"]
[[exclude]]
keras = "<3.0.3"
jax = ">=0.4.30"
reason = "made up for the test"
""")
    res = CliRunner().invoke(cli, ["matrix", "plan", path, "--offline"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert [c["id"] for c in plan["cells"]] == ["jax-0.4.20+keras-3.0.2",
                                                "jax-0.4.20+keras-3.0.3",
                                                "jax-0.4.30+keras-3.0.3"]
    assert plan["cells"][0]["requirements"] == ["jax==0.4.20", "keras==3.0.2"]
    assert plan["cells"][0]["scenarios"] == ["s.toml", "seed-keras"]
    assert plan["dropped"] == [{"id": "jax-0.4.30+keras-3.0.2", "reason": "made up for the test"}]
    assert "dropped jax-0.4.30+keras-3.0.2: made up for the test" in res.stderr
    gh = CliRunner().invoke(cli, ["matrix", "plan", path, "--offline", "--format", "github"])
    include = json.loads(gh.stdout)["include"]
    assert include[2] == {"id": "jax-0.4.30+keras-3.0.3",
                          "requirements": "jax==0.4.30 keras==3.0.3",
                          "frameworks": "numpy,keras-jax", "scenarios": "s.toml seed-keras"}


def test_a_bad_versions_file_is_one_line_naming_the_key(tmp_path):
    path = _versions(tmp_path, 'schema = 1\nframeworks = ["numpy"]\nscenarios = ["seed-keras"]\n'
                               '[packages.keras]\nversion = ["3.0.2"]\n')
    res = CliRunner().invoke(cli, ["matrix", "plan", path, "--offline"])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1
    assert "packages.keras.version: unknown key (did you mean 'versions'?)" in res.stderr


def test_the_example_plan_is_the_committed_report_s_version_sets():
    from xbn.guard.plan import make_plan

    plan = make_plan(ROOT / "examples" / "matrix" / "versions.toml", offline=True)
    committed = sorted(p.stem.removeprefix("snapshot-")
                       for p in (ROOT / "reports" / "matrix").glob("snapshot-*.json"))
    assert sorted(c["id"] for c in plan["cells"]) == committed


def test_without_ray_the_ray_engine_names_the_extra(tmp_path, monkeypatch):
    from xbn.guard.plan import make_plan

    plan = make_plan(_versions(tmp_path, 'schema = 1\nframeworks = ["numpy"]\nscenarios = '
                               '["seed-keras"]\n[packages.keras]\nversions = ["3.0.2"]\n'),
                     offline=True)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray imports
    res = CliRunner().invoke(cli, ["matrix", "run", str(tmp_path / "plan.json"),
                                   "--engine", "ray", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "pip install 'xbn[ray]'" in res.stderr
    res = CliRunner().invoke(cli, ["fuzz", "--engine", "ray", "--frameworks", "numpy",
                                   "--max-examples", "1", "--out", str(tmp_path / "f")])
    assert res.exit_code == 2
    assert "pip install 'xbn[ray]'" in res.stderr


def _index_reachable() -> bool:
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "keras"],
                          capture_output=True, text=True, timeout=300, check=False)
    return "3.0.3" in proc.stdout


def test_a_range_resolves_against_the_index_and_absent_versions_are_dropped(tmp_path):
    if not _index_reachable():
        pytest.skip("the package index pip sees is unreachable")
    from xbn.guard.plan import make_plan

    plan = make_plan(_versions(tmp_path, 'schema = 1\nframeworks = ["numpy"]\nscenarios = '
                               '["seed-keras"]\n[packages.keras]\nrange = ">=3.0.2,<3.0.4"\n'))
    assert [c["id"] for c in plan["cells"]] == ["keras-3.0.2", "keras-3.0.3"]  # PyPI's history
    plan = make_plan(_versions(tmp_path, 'schema = 1\nframeworks = ["numpy"]\nscenarios = '
                               '["seed-keras"]\n[packages.keras]\nversions = ["3.0.2", '
                               '"3.0.99"]\n'))
    assert [c["id"] for c in plan["cells"]] == ["keras-3.0.2"]
    assert plan["dropped"][0]["id"] == "keras-3.0.99"
    assert "not on the index" in plan["dropped"][0]["reason"]


def _ray_processes() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()
            if any(name in line for name in ("raylet", "gcs_server", "ray::"))}


@pytest.mark.slow
def test_local_and_ray_engines_give_the_same_report_and_a_killed_cell_resumes(tmp_path):
    require_framework("keras-jax")
    if not _index_reachable():
        pytest.skip("the package index pip sees is unreachable")
    env = dict(os.environ, XBN_CACHE_DIR=str(tmp_path / "cache"))
    versions = _versions(tmp_path, f"""
schema = 1
frameworks = ["numpy", "keras-jax"]
scenarios = ["{MOMENTS}", "seed-keras"]
[packages.keras]
versions = ["3.0.2", "3.0.3"]
""")
    plan = tmp_path / "plan.json"
    subprocess.run([sys.executable, "-m", "xbn", "matrix", "plan", versions, "-o", str(plan)],
                   check=True, env=env, cwd=tmp_path)

    def xbn_run(out: str, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "xbn", "matrix", "run", str(plan),
                                 "--out", out, *extra], env=env, cwd=tmp_path, text=True,
                                stderr=subprocess.PIPE)

    # local: kill the first cell's snapshot process while it runs; the second still finishes
    proc = xbn_run("local")
    pid_file = tmp_path / "local" / "logs" / "keras-3.0.2.pid"
    deadline = time.monotonic() + 300
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, err
    assert "keras-3.0.2: FAILED" in err and "exited with status -9" in err
    assert (tmp_path / "local" / "snapshot-keras-3.0.3.json").is_file()
    assert not (tmp_path / "local" / "snapshot-keras-3.0.2.json").exists()
    proc = xbn_run("local")  # resume: only the killed cell runs again
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert "keras-3.0.3: skipped" in err and "keras-3.0.2: done" in err

    before = _ray_processes()
    proc = xbn_run("ray", "--engine", "ray", "--cpus", "2")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert _ray_processes() <= before, "the local Ray started for the run is still running"

    for name in ("matrix.md", "matrix.json"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()
    report = (tmp_path / "ray" / "matrix.md").read_text()
    # Keras 3.0.3 replaced the JAX backend's one-pass, clamped moments with jnp.var (see the
    # scenario's description): the switch the explanations name flips at that release
    assert "`variance_algorithm` changed at 3.0.3: fast_clamped -> -" in report


@pytest.mark.slow
def test_fuzz_on_ray_spreads_seeds_over_actors_and_keeps_one_finding_per_cause(tmp_path):
    require_framework("torch")
    from xbn.fuzz.campaign import deduplicate
    from xbn.fuzz.ray_engine import RayCampaign

    before = _ray_processes()
    lines: list[str] = []
    campaign = RayCampaign(["torch"], seed=3, max_examples=16, batch=8, shrink_seconds=10,
                           actors=2, cpus=2, log=lines.append)
    findings = campaign.run()
    assert _ray_processes() <= before, "the local Ray started for the campaign is still running"
    assert "ray: 2 actor(s), seeds 3..4" in lines
    assert campaign.examples >= 16  # each actor ran its half (whole batches)
    assert "torch" in campaign.sessions and campaign.sessions["torch"].versions["torch"]
    signatures = [f.signature for f in findings]
    assert len(signatures) == len(set(signatures))
    assert [f.signature for f in deduplicate(findings + findings)] == signatures
