"""``xbn fuzz``: findings come from xbn's verdicts on real frameworks, are shrunk by Hypothesis,
deduplicated by root cause (one per framework and mechanism), written as loadable scenarios to a
folder that held no files, and known behaviour (declared switches, documented options within
their rounding bound, float rounding) stays quiet."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from xbn.cli import cli
from xbn.frameworks.registry import available
from xbn.scenario.loader import load, parse

from .test_installed import allowed_missing


def need(*frameworks: str) -> None:
    for fw in frameworks:
        if not available(fw):
            if fw in allowed_missing():
                pytest.skip(f"{fw} missing, allowed by XBN_ALLOW_MISSING")
            raise AssertionError(f"{fw} is not installed")


def large_mean(name: str, mean: float, std: float, batch: int = 3, seed: int = 0) -> dict:
    return {"schema": 1, "name": name, "layer": {"features": 1},
            "inputs": {"x": {"normal": {"mean": mean, "std": std}, "shape": [batch, 1],
                             "seed": seed}},
            "steps": [{"op": "call", "input": "x", "training": True}]}


def rows_of(framework: str, documents: list[dict]) -> dict:
    from xbn.execution.session import Session

    session = Session(framework)
    try:
        return session.run([parse(d).to_dict() for d in documents])
    finally:
        session.close()


@pytest.mark.slow  # a fuzz campaign or framework workers
def test_verdicts_flag_the_keras_torch_nan_and_not_torch():
    """The same large-mean batch: Keras on torch (one-pass moments, no clamp) returns NaN, a
    hazard; torch (two-pass) is reproduced by its profile: no finding."""
    need("keras-torch", "torch")
    from xbn.fuzz.verdict import flags_of

    doc = large_mean("big", 1e4, 1e-1)
    scenario = parse(doc)
    kt = flags_of("keras-torch", scenario, rows_of("keras-torch", [doc])["big"], 16.0)
    assert ("keras-torch", "output", "nan") in {f.key for f in kt}
    assert flags_of("torch", scenario, rows_of("torch", [doc])["big"], 16.0) == []


@pytest.mark.slow  # workers for three frameworks: 40 s measured alone on the shared machine
def test_symptoms_of_one_cause_share_one_signature():
    """Two different large-mean scenarios, and a NaN output and a negative moving variance
    of the same call: one root cause per framework (the one-pass variance without a clamp),
    so one signature, whichever the symptom or the example."""
    need("haiku", "keras-torch")
    from xbn.fuzz.cause import root_cause
    from xbn.fuzz.verdict import flags_of

    docs = [large_mean("a", 1e4, 1e-1), large_mean("b", 1e4, 1e-1, batch=4, seed=3)]
    docs[1]["layer"]["momentum"] = 0.0  # the moving variance is the batch's: negative
    for fw in ("haiku", "keras-torch"):
        rows = rows_of(fw, docs)
        signatures, kinds = set(), set()
        for doc in docs:
            scenario = parse(doc)
            for flag in flags_of(fw, scenario, rows[doc["name"]], 16.0):
                kinds.add(flag.kind)
                cause = root_cause(flag, scenario, rows[doc["name"]])
                signatures.add((flag.framework, cause.name))
        assert "nan" in kinds and "negative_variance" in kinds, (fw, kinds)
        assert signatures == {(fw, "one-pass-variance-not-clamped")}, signatures


@pytest.mark.slow  # workers for three frameworks: 33 s measured alone on the shared machine
def test_two_findings_of_one_cause_dedupe_to_one():
    """A campaign's findings with the same framework and cause become one finding that lists
    every symptom; another framework's stays apart."""
    need("keras-torch", "haiku")
    from xbn.fuzz.campaign import Finding, deduplicate
    from xbn.fuzz.cause import root_cause
    from xbn.fuzz.verdict import flags_of

    doc = large_mean("big", 1e4, 1e-1)
    doc["layer"]["momentum"] = 0.0
    scenario = parse(doc)
    findings = []
    for fw in ("keras-torch", "haiku"):
        rows = rows_of(fw, [doc])["big"]
        for flag in flags_of(fw, scenario, rows, 16.0):
            findings.append(Finding(flag, doc, scenario, rows, root_cause(flag, scenario, rows)))
    assert len(findings) >= 4  # output nan and negative variance, in both frameworks
    kept = deduplicate(findings)
    assert sorted(f.signature for f in kept) == [("haiku", "one-pass-variance-not-clamped"),
                                                 ("keras-torch", "one-pass-variance-not-clamped")]
    for f in kept:
        assert {("output", "nan"), ("moving_variance", "negative_variance")} <= f.symptoms


@pytest.mark.slow  # a fuzz campaign or framework workers
def test_documented_behaviour_and_rounding_are_not_findings():
    """What xbn's own explanation accounts for is no finding: Haiku's debiased moving mean one
    float32 ulp past the only value it saw (rounding, within the verdict's tolerance; its
    explanation is ema=debiased), and Flax's documented fast variance (use_fast_variance: "less
    numerically stable") on a constant channel of 1e5, within the cancellation bound that
    xbn's explanation prints."""
    need("haiku", "flax")
    from xbn.fuzz.verdict import flags_of

    one = {"schema": 1, "name": "one", "layer": {"features": 2, "momentum": 0.9},
           "inputs": {"x": {"normal": {"mean": 0.0, "std": 1.0}, "shape": [1, 2], "seed": 0}},
           "steps": [{"op": "call", "input": "x", "training": True}]}
    rows = rows_of("haiku", [one])["one"]
    mean = next(o for o in rows if o["quantity"] == "moving_mean")["value"]
    assert float(mean[1]) < float(parse(one).inputs["x"].min())  # the ulp past the data
    assert flags_of("haiku", parse(one), rows, 16.0) == []

    constant = {"schema": 1, "name": "flat", "layer": {"features": 3, "momentum": 0.9},
                "inputs": {"x": {"constant": 1e5, "shape": [3, 3], "seed": 2}},
                "steps": [{"op": "call", "input": "x", "training": True, "repeat": 10},
                          {"op": "predict", "input": "x"}]}
    rows = rows_of("flax", [constant])["flat"]
    variance = [o for o in rows if o["quantity"] == "moving_variance"][-1]["value"]
    assert min(variance) > 100  # collapsed: the exact variance is 0
    assert flags_of("flax", parse(constant), rows, 16.0) == []


@pytest.mark.slow  # a fuzz campaign or framework workers
def test_refusals_and_rounding_noise_are_not_findings():
    """torch refuses a fit of a BatchNorm without parameters (its optimizer, before the
    forward pass) where the declared refusal comes after it: both refuse, no finding. Keras'
    Adam on an input of mean 1e6 over a spread of 0.1 moves gamma by the sign of a gradient
    that is 0 in exact arithmetic: float32 noise (its declared profile in float32 and in
    float64 disagree there), no finding; nor is a float64 input gradient that the rounding of
    the batch mean alone moves beyond the tolerance."""
    need("torch", "keras")
    from xbn.fuzz.verdict import flags_of

    bare = {"schema": 1, "name": "bare", "layer": {"features": 1, "momentum": 0.9,
                                                   "center": False, "scale": False},
            "inputs": {"x": {"constant": 0.0, "shape": [2, 1], "seed": 0}},
            "steps": [{"op": "fit", "input": "x", "target": "x",
                       "optimizer": {"name": "sgd", "lr": 0.01}}]}
    rows = rows_of("torch", [bare])["bare"]
    assert any(o["status"] == "error" and "empty parameter list" in o["message"] for o in rows)
    assert flags_of("torch", parse(bare), rows, 16.0) == []

    noise = {"schema": 1, "name": "noise", "layer": {"features": 3, "layout": "NHWC"},
             "inputs": {"y": {"normal": {"mean": 1e6, "std": 0.1}, "shape": [4, 2, 2, 3],
                              "seed": 3}},
             "steps": [{"op": "fit", "input": "y", "target": "y",
                        "optimizer": {"name": "adam", "lr": 0.01}}]}
    grad = {"schema": 1, "name": "grad", "layer": {"features": 1, "epsilon": 1e-8,
                                                   "dtype": "float64"},
            "inputs": {"x": {"normal": {"mean": 1e5, "std": 1e-3}, "shape": [7, 1], "seed": 0}},
            "steps": [{"op": "grad", "input": "x", "training": True, "weights": "x"}]}
    rows = rows_of("keras", [noise, grad])
    assert flags_of("keras", parse(noise), rows["noise"], 16.0) == []
    # the input gradient of a float64 batch whose spread is 1e-8 of its mean: the rounding of
    # its batch mean alone moves it by more than the tolerance
    assert flags_of("keras", parse(grad), rows["grad"], 16.0) == []


def _files_named(text: str) -> set[str]:
    """File names a summary names, not a framework's source paths (keras/src/.../nn.py)."""
    return set(re.findall(r"(?<![/\w.-])([\w.-]+\.(?:py|toml|md))\b", text))


@pytest.mark.slow  # a fuzz campaign or framework workers
def test_campaign_writes_a_fresh_folder_one_finding_per_cause(tmp_path, monkeypatch):
    """Run as the README shows, from a folder whose findings/ holds a user's files: the
    campaign leaves findings/ byte for byte as it was, writes to findings-2/ and says so; on
    Keras-on-torch it finds the NaN by itself, keeps one finding for its one cause, shrinks it
    to one training call, and writes a scenario that loads and still shows the hazard through
    the ordinary runner, a script, and a summary that names only files that exist."""
    need("keras-torch")
    from xbn.execution.runner import run

    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "findings"
    mine.mkdir()
    (mine / "keras-torch-one-pass-variance-not-clamped.md").write_text("my notes\n")
    (mine / "keras-torch-output-nan.toml").write_text("# mine\n")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    r = CliRunner().invoke(cli, ["fuzz", "-f", "keras-torch", "--max-examples", "10",
                                 "--seed", "0"])
    assert r.exit_code == 1, r.output
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    out = tmp_path / "findings-2"
    assert "findings-2/" in r.output
    written = {p.name for p in out.iterdir()}
    name = "keras-torch-one-pass-variance-not-clamped"
    assert {f"{name}.md", f"{name}.py", f"{name}.toml"} <= written
    # its symptoms (NaN output, negative variance, NaN gamma after fit) are not findings apart
    assert not [w for w in written if "nan" in w or "negative" in w], written
    scenario = load(out / f"{name}.toml")
    assert [(s.op, s.training) for s in scenario.steps] == [("call", True)]
    assert len(scenario.inputs) == 1  # unused inputs dropped
    md = (out / f"{name}.md").read_text()
    assert _files_named(md) <= written, _files_named(md) - written
    # named by their path from where the campaign ran, with the campaign's whole command
    paths = set(re.findall(r"findings-2/([\w.-]+\.(?:py|toml))", md))
    assert paths and paths <= written, paths - written
    assert f"`xbn run findings-2/{name}.toml -f keras-torch`" in md
    assert "xbn fuzz -f keras-torch --max-examples 10 --seed 0" in md
    assert "## Upstream report" in md and "https://github.com/keras-team/keras/pull/18795" in md
    assert "explains step 0" in md
    result = run([scenario], ["keras-torch"])
    values = [o["value"] for o in result.observations if o["quantity"] in ("output",
                                                                           "moving_variance")]
    assert any(v != v or v < 0 for value in values for v in _flat(value))  # NaN or negative


def _flat(value):
    if isinstance(value, list):
        for v in value:
            yield from _flat(v)
    else:
        yield value


@pytest.mark.slow  # a fuzz campaign or framework workers
def test_known_behaviour_stays_quiet(tmp_path):
    """A campaign over frameworks whose profiles explain everything reports nothing: exit 0,
    nothing written."""
    need("torch")
    r = CliRunner().invoke(cli, ["fuzz", "-f", "numpy,torch", "--max-examples", "24",
                                 "--seed", "1", "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "f").exists()


def test_fuzz_never_writes_into_a_folder_that_holds_files(tmp_path, monkeypatch):
    """--out naming a folder with files is refused before the campaign starts (exit 2, the
    files untouched) unless --force; without --out a campaign picks a folder that holds no
    files (findings-2 next to a findings/ that holds some) and says where."""
    need("torch")
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "findings"
    mine.mkdir()
    (mine / "note.md").write_text("mine\n")
    r = CliRunner().invoke(cli, ["fuzz", "-f", "numpy,torch", "--max-examples", "4",
                                 "--out", "findings"])
    assert r.exit_code == 2 and "--force" in r.output, r.output
    assert "workers up" not in r.output  # refused before any worker started
    r = CliRunner().invoke(cli, ["fuzz", "-f", "numpy,torch", "--max-examples", "4"])
    assert r.exit_code == 0, r.output
    assert "findings-2/" in r.output
    r = CliRunner().invoke(cli, ["fuzz", "-f", "numpy,torch", "--max-examples", "4",
                                 "--out", "findings", "--force"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in mine.iterdir()] == ["note.md"]
    assert (mine / "note.md").read_text() == "mine\n"


def test_out_dir_picks_a_folder_without_files(tmp_path):
    from xbn.fuzz.output import OutputExists, out_dir

    base = str(tmp_path / "findings")
    assert out_dir(None, default=base) == tmp_path / "findings"  # absent
    (tmp_path / "findings").mkdir()
    assert out_dir(None, default=base) == tmp_path / "findings"  # empty
    (tmp_path / "findings" / "a.md").write_text("x")
    (tmp_path / "findings-2").mkdir()
    (tmp_path / "findings-2" / "b.md").write_text("x")
    assert out_dir(None, default=base) == tmp_path / "findings-3"
    with pytest.raises(OutputExists):
        out_dir(base)
    assert out_dir(base, force=True) == tmp_path / "findings"
    with pytest.raises(OutputExists):
        out_dir(str(tmp_path / "findings" / "a.md"), force=True)  # a file in the way


@pytest.mark.parametrize("args", [["fuzz", "-f", "nosuch"], ["fuzz", "--budget", "0"],
                                  ["fuzz", "--budget", "5", "--max-examples", "3"],
                                  ["repro", "x.toml"], ["repro", "nope.toml", "--framework", "torch"]])
def test_fuzz_usage_errors_exit_2(args):
    assert CliRunner().invoke(cli, args).exit_code == 2


def test_toml_round_trip():
    """A generated document written as TOML loads back to the same scenario."""
    from hypothesis import given, settings

    from xbn.fuzz.output import to_toml
    from xbn.fuzz.strategies import scenario_document
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    @settings(max_examples=30, deadline=None, database=None)
    @given(scenario_document())
    def check(doc):
        assert parse(tomllib.loads(to_toml(doc))).digest == parse(doc).digest

    check()
