"""The JSON report read back with a strict parser: no bare NaN/Infinity, non-finite numbers as
the strings the README documents, and null (not "NaN") where a field has no value."""

from __future__ import annotations

import json

from click.testing import CliRunner

from xbn.cli import cli

# Published values may be non-finite (expect accepts nan and inf): they become the "expected"
# pseudo-framework's observations, and their diffs measure infinite distances.
NONFINITE = """
schema = 1
name = "nonfinite"
[layer]
features = 2
[inputs]
x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]
[[steps]]
op = "call"
input = "x"
training = true
[steps.expect]
source = "a test"
moving_mean = [nan, inf]
moving_variance = [-inf, 1.0]
[[steps]]
op = "set"
trainable = false
"""

TEXT_FIELDS = ("scenario", "op", "framework", "quantity", "status", "dtype", "message",
               "reference", "verdict", "explanation")


def _strict(text: str):
    """RFC 8259 JSON only: Python's json module would accept NaN and Infinity as numbers."""
    def refuse(name):
        raise AssertionError(f"bare {name} in the JSON")
    return json.loads(text, parse_constant=refuse)


def test_json_report_is_strict_and_says_null_for_nothing(write_scenario):
    path = write_scenario(NONFINITE)
    r = CliRunner().invoke(cli, ["run", str(path), "-f", "numpy", "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = _strict(r.stdout)
    obs = {(o["framework"], o["step"], o["quantity"]): o for o in doc["observations"]}

    # non-finite values are the strings "NaN", "Infinity", "-Infinity"
    assert obs["expected", 0, "moving_mean"]["value"] == ["NaN", "Infinity"]
    assert obs["expected", 0, "moving_variance"]["value"] == ["-Infinity", 1.0]
    assert obs["expected", 0, "moving_mean"]["message"] == "a test"
    # no message is null, never pandas' NaN
    assert obs["numpy", 0, "output"]["message"] is None
    assert obs["numpy", 1, "step"]["value"] is None and obs["numpy", 1, "step"]["dtype"] is None
    for record in doc["observations"] + doc["diffs"]:
        for field in TEXT_FIELDS:
            if field in record:
                assert record[field] is None or isinstance(record[field], str) and \
                    record[field] not in ("NaN", "Infinity", "-Infinity"), (field, record)

    diff = next(d for d in doc["diffs"] if d["quantity"] == "moving_mean")
    assert diff["verdict"] == "differs" and diff["max_abs"] == "Infinity"
    assert isinstance(diff["tolerance"], float)
