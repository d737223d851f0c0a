"""The fuzzer's pieces that need no framework: its strategies reach every addition of the
scenario language from a fixed set of shapes, step shrinking keeps ``@N`` chains valid, rows
after a step the framework could not express are no claim, an overflow is range not a hazard,
the reference reruns are cached, ``--known`` files are read strictly and cover a plain id's
modes, and a finding's ``.md`` holds the path, the campaign's command and the scenario."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, seed, settings

from xbn.cli import cli
from xbn.explain.reruns import rerun
from xbn.fuzz.campaign import Campaign, Finding
from xbn.fuzz.output import minimal_document, without_step, write
from xbn.fuzz.strategies import SHAPES, scenario_document
from xbn.fuzz.upstream import load_known
from xbn.fuzz.verdict import Flag, expressed, hazards, reference
from xbn.scenario.loader import parse


def _doc(dtype: str = "float32", steps: list | None = None) -> dict:
    return {"schema": 1, "name": "t", "layer": {"features": 1, "dtype": dtype},
            "inputs": {"x": {"normal": {"mean": 1.0, "std": 2.0}, "shape": [4, 1], "seed": 0}},
            "steps": steps or [{"op": "call", "input": "x", "training": True}]}


@pytest.mark.slow  # 250 Hypothesis draws: 5-13 s
def test_strategies_reach_every_addition_with_few_shapes():
    seen: set[str] = set()
    shapes: set[tuple] = set()

    @seed(1)
    @settings(max_examples=250, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(scenario_document())
    def draw(doc):
        scenario = parse(doc, "<fuzz>")  # valid by construction
        x = scenario.inputs["x"]
        shapes.add((x.shape[0], scenario.layer.features))
        seen.update(k for k in ("renorm", "virtual_batch_size", "replicas", "param_dtype")
                    if k in doc["layer"])
        for s in doc["steps"]:
            seen.add(s["op"])
            seen.update(k for k in ("mask", "trace", "momentum", "epsilon") if k in s)
            if str(s.get("input", "")).startswith("@"):
                seen.add("@N")

    draw()
    assert {"renorm", "virtual_batch_size", "replicas", "param_dtype", "mask", "trace",
            "momentum", "epsilon", "@N", "reset", "set", "fit", "grad", "predict",
            "set_weights"} <= seen
    assert shapes <= {(b, f) for b, f, _ in SHAPES}


def test_without_step_renumbers_chains_and_keeps_what_is_read():
    doc = _doc(steps=[{"op": "call", "input": "x", "training": True},
                      {"op": "call", "input": "x", "training": True},
                      {"op": "call", "input": "@1", "training": True},
                      {"op": "predict", "input": "@2"}])
    assert without_step(doc, 1) is None  # step 2 reads its output
    shorter = without_step(doc, 0)
    assert [s["input"] for s in shorter["steps"]] == ["x", "@0", "@1"]
    parse(shorter, "<t>")
    assert without_step(doc, 3) is None  # the last step: the flag's own
    masked = {**doc, "inputs": {**doc["inputs"], "m": [1, 1, 0, 1]},
              "steps": [{"op": "call", "input": "x", "training": True, "mask": "m"}]}
    assert "m" in minimal_document(masked)["inputs"]


def test_rows_after_a_step_the_framework_cannot_express_are_no_claim():
    rows = [{"step": 0, "quantity": "output", "status": "ok", "value": [1.0]},
            {"step": 1, "quantity": "output", "status": "n/a", "value": None},
            {"step": 2, "quantity": "output", "status": "ok", "value": [float("nan")]}]
    assert [o["step"] for o in expressed(rows)] == [0]
    assert expressed(rows[:1]) == rows[:1]


def test_an_overflow_of_the_dtype_is_range_not_a_hazard():
    exact = {(0, "output"): {"status": "ok", "value": [[3e5]] * 4}}
    row = {"step": 0, "quantity": "output", "status": "ok", "value": [[math.inf]] * 4}
    half = parse(_doc("float16"), "<t>")
    assert hazards("torch", half, [{**row, "dtype": "float16"}], exact) == []
    single = parse(_doc(), "<t>")
    [flag] = hazards("torch", single, [{**row, "dtype": "float32"}], exact)
    assert flag.kind == "inf"


def test_reference_reruns_are_cached_and_equal_a_fresh_rerun():
    scenario = parse(_doc(steps=[{"op": "call", "input": "x", "training": True,
                                  "repeat": 3}]), "<t>")
    first = reference(scenario, {"variance_algorithm": "fast"})
    assert reference(scenario, {"variance_algorithm": "fast"}) is first
    fresh = {(o["step"], o["quantity"]): o["value"]
             for o in rerun(scenario, {"variance_algorithm": "fast"})}
    assert {k: o["value"] for k, o in first.items()} == fresh
    assert reference(scenario, {}) is not first


def test_known_file_is_strict_and_a_plain_id_covers_its_modes(tmp_path):
    good = tmp_path / "known.toml"
    good.write_text('[[known]]\nframework = "haiku"\ncause = "one-pass-variance-not-clamped"\n'
                    'link = "https://example.org/1"\n[[known]]\nframework = "torch+compile"\n'
                    'cause = "unexplained"\nlink = "none found"\n', encoding="utf-8")
    known = load_known(str(good))
    campaign = Campaign(["haiku+jit", "torch"], known=known)
    assert campaign.reported("haiku+jit", "one-pass-variance-not-clamped") == \
        ("haiku", "one-pass-variance-not-clamped")
    assert campaign.reported("torch", "unexplained") is None  # a mode covers itself only
    assert campaign.reported("torch+compile", "unexplained") == ("torch+compile", "unexplained")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[known]]\nframework = "haiku"\ncuase = "x"\nlink = "y"\n', encoding="utf-8")
    r = CliRunner().invoke(cli, ["fuzz", "-f", "numpy", "--max-examples", "1", "--known",
                                 str(bad), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "known[0].cuase" in r.output and "cause" in r.output, r.output
    assert "workers up" not in r.output
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[[known]]\nframework = "nope"\ncause = "x"\nlink = "y"\n',
                       encoding="utf-8")
    r = CliRunner().invoke(cli, ["fuzz", "-f", "numpy", "--known", str(unknown)])
    assert r.exit_code == 2 and "known[0].framework" in r.output, r.output


def test_finding_report_names_its_path_command_and_scenario(tmp_path, monkeypatch):
    """The writer on a fabricated row (no framework runs: what is tested is the text)."""
    monkeypatch.chdir(tmp_path)
    doc = {**_doc(steps=[{"op": "call", "input": "x", "training": True},
                         {"op": "call", "input": "x", "training": False}]), "name": "fuzz"}
    scenario = parse(doc, "<fuzz>")
    rows = [{**o, "framework": "torch", "scenario": "fuzz"} for o in rerun(scenario, {})]
    flag = Flag("torch", "output", "unexplained", 0, "output = [1] where its profile gives [2]")
    from xbn.fuzz.cause import Cause

    finding = Finding(flag, doc, scenario, rows, Cause("unexplained", "a mechanism"))
    command = "xbn fuzz -f torch --budget 60 --seed 3 --batch 8"
    paths = write(finding, Path("out"), {"torch": "2.x"}, 3, command=command)
    md = next(p for p in paths if p.suffix == ".md").read_text(encoding="utf-8")
    toml = next(p for p in paths if p.suffix == ".toml").read_text(encoding="utf-8")
    assert "`xbn run out/torch-unexplained.toml -f torch`" in md
    assert command in md and command in toml
    assert "```toml" in md and "[[steps]]" in md
    assert toml.count("[[steps]]") == 1  # cut at the flag's step
    parse(__import__("tomllib").loads(toml), "<t>")


def test_a_moded_id_finding_gets_a_valid_name(tmp_path, monkeypatch):
    """A mode's ``+`` and a device's ``@`` are no scenario-name characters: the files and the
    scenario are named with ``-`` (the first wave-3 campaign lost its findings to this)."""
    monkeypatch.chdir(tmp_path)
    doc = {**_doc(), "name": "fuzz"}
    scenario = parse(doc, "<fuzz>")
    rows = [{**o, "framework": "torch+openvino@cpu", "scenario": "fuzz"}
            for o in rerun(scenario, {})]
    flag = Flag("torch+openvino@cpu", "output", "unexplained", 0, "output = [1]")
    from xbn.fuzz.cause import Cause

    finding = Finding(flag, doc, scenario, rows, Cause("float64-computed-in-float32", "x"))
    paths = write(finding, Path("out"), {"torch": "2.x"}, 0, command="xbn fuzz")
    assert {p.stem for p in paths} == {"torch-openvino-cpu-float64-computed-in-float32"}
    toml = next(p for p in paths if p.suffix == ".toml").read_text(encoding="utf-8")
    parse(__import__("tomllib").loads(toml), "<t>")


@pytest.mark.slow  # imports JAX and Equinox in a subprocess
@pytest.mark.parametrize("fid,layout,shape", [("equinox", "NHWC", [4, 2, 2, 2]),
                                              ("equinox+eager", "NCL", [4, 2, 3])])
def test_equinox_repro_script_runs_without_xbn(tmp_path, fid, layout, shape):
    """The script replays a well-conditioned scenario in Equinox alone (run in a clean
    folder with ``python -I``: no xbn on its path) and finds nothing: the values it embeds are
    Equinox's own computation in exact arithmetic, so an ordinary batch agrees with them."""
    import subprocess
    import sys

    from tests.frameworks import require_framework
    from xbn.fuzz.repro import script

    require_framework("equinox")
    doc = {"schema": 1, "name": "eq", "layer": {"features": 2, "layout": layout,
                                                "momentum": 0.9},
           "inputs": {"x": {"normal": {"mean": 1.0, "std": 2.0}, "shape": shape, "seed": 0}},
           "steps": [{"op": "call", "input": "x", "training": True},
                     {"op": "call", "input": "x", "training": False},
                     {"op": "predict", "input": "x"}]}
    code = script(parse(doc, "<t>"), fid)
    assert "xbn" not in code.split('"""', 2)[2].replace("xbn repro", "")
    path = tmp_path / "eq.py"
    path.write_text(code, encoding="utf-8")
    out = subprocess.run([sys.executable, "-I", str(path)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{fid} (equinox ") and "no discrepancy" in last, last
    assert out.stdout.count("moving_variance") == 3


def test_a_declared_replica_refusal_is_no_claim_but_an_xbn_error_is():
    """keras-torch's replicas: Keras itself raises (no torch distribution backend), the
    refusal its profile declares (xbn/profiles/replicas.py), which the single-device reference
    reruns do not model; the same exception raised by xbn's own code stays judged."""
    refused = {"framework": "keras-torch", "step": 0, "quantity": "output", "status": "error",
               "origin": "keras", "value": None,
               "message": "layer not built: AttributeError: 'NoneType' object has no attribute "
                          "'list_devices'"}
    assert expressed([refused]) == []
    assert expressed([{**refused, "origin": "xbn"}]) == [{**refused, "origin": "xbn"}]
    assert expressed([{**refused, "framework": "torch"}]) == [{**refused, "framework": "torch"}]
