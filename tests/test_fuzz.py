"""``xbn fuzz``: findings come from xbn's verdicts on real frameworks, are shrunk by Hypothesis,
deduplicated by signature, written as loadable scenarios, and known behaviour stays quiet."""

from __future__ import annotations

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


def test_deduplication_signature_ignores_the_example():
    """Two different large-mean scenarios give one signature (framework, quantity, kind,
    switches), so a campaign keeps one finding for both; a different kind is another one."""
    need("haiku")
    from xbn.fuzz.verdict import broken_switches, flags_of

    docs = [large_mean("a", 1e4, 1e-1), large_mean("b", 1e4, 1e-1, batch=4, seed=3)]
    rows = rows_of("haiku", docs)
    signatures = []
    for doc in docs:
        scenario = parse(doc)
        flags = flags_of("haiku", scenario, rows[doc["name"]], 16.0)
        nan = next(f for f in flags if f.key == ("haiku", "output", "nan"))
        signatures.append((*nan.key, broken_switches(nan, scenario, rows[doc["name"]])))
    assert signatures[0] == signatures[1]
    assert signatures[0][3] == ("variance_algorithm",)  # the declared fast variance


def test_campaign_shrinks_and_deduplicates(tmp_path):
    """A short seeded campaign on Keras-on-torch finds the NaN by itself, shrinks it to one
    training call, keeps one finding per key, and writes a scenario that loads and still
    shows the NaN through the ordinary runner."""
    need("keras-torch")
    from xbn.execution.runner import run
    from xbn.fuzz.campaign import Campaign
    from xbn.fuzz.output import write

    campaign = Campaign(["keras-torch"], seed=0, max_examples=120, shrink_seconds=40)
    findings = campaign.run()
    keys = [f.flag.key for f in findings]
    assert len(keys) == len(set(keys))  # deduplicated
    nan = next(f for f in findings if f.flag.key == ("keras-torch", "output", "nan"))
    assert [s.op for s in nan.scenario.steps] == ["call"]  # shrunk to what it needs
    assert nan.scenario.steps[0].training is True
    paths = write(nan, tmp_path, campaign.sessions["keras-torch"].versions, 0)
    toml = next(p for p in paths if p.suffix == ".toml")
    scenario = load(toml)
    assert list(scenario.inputs) == ["x"] or len(scenario.inputs) == 1  # unused inputs dropped
    assert "keras-torch" in next(p for p in paths if p.suffix == ".md").read_text()
    result = run([scenario], ["keras-torch"])
    outputs = [o for o in result.observations if o["quantity"] == "output"]
    assert any(v != v for v in _flat(outputs[0]["value"]))  # NaN


def _flat(value):
    if isinstance(value, list):
        for v in value:
            yield from _flat(v)
    else:
        yield value


def test_known_behaviour_stays_quiet(tmp_path):
    """A campaign over frameworks whose profiles explain everything reports nothing: exit 0,
    nothing written."""
    need("torch")
    r = CliRunner().invoke(cli, ["fuzz", "-f", "numpy,torch", "--max-examples", "24",
                                 "--seed", "1", "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "f").exists()


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
