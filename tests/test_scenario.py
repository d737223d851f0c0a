"""Strict scenario validation: every error names file, step and key, in one line."""

from __future__ import annotations

import numpy as np
import pytest

from xbn.scenario import ScenarioError, builtin_paths, load

from .conftest import MINIMAL


def error_of(write_scenario, text: str) -> str:
    path = write_scenario(text)
    with pytest.raises(ScenarioError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_minimal_loads(write_scenario):
    s = load(write_scenario(MINIMAL))
    assert s.layer.momentum == 0.99 and s.layer.epsilon == 1e-3
    assert s.inputs["x"].shape == (3, 2)


@pytest.mark.parametrize("path", builtin_paths(), ids=lambda p: p.stem)
def test_builtin_scenarios_load(path):
    s = load(path)
    assert s.name == path.stem and s.title


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('training = true', 'trainingg = true', "steps[0].trainingg: unknown key (did you mean 'training'?)"),
        ('training = true', 'training = "yes"', "steps[0].training: expected true or false"),
        ('input = "x"', 'input = "y"', "steps[0].input: unknown input 'y'"),
        ('op = "call"', 'op = "cal"', "steps[0].op: must be one of"),
        ('features = 2', 'features = 3', "inputs.x: channel axis (NC) has size 2, but layer.features = 3"),
        ('features = 2', 'features = 2\nlayout = "NCHW"', "inputs.x: layout NCHW needs a rank-4 array"),
        ('x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]', 'x = [[1.0, inf], [3.0, 5.0]]', "inputs.x: non-finite value"),
        ('x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]', 'x = [[1.0, 2.0], [3.0]]', "inputs.x: ragged list"),
        ('schema = 1', 'schema = 2', "schema: unsupported schema 2"),
        ('name = "t"', 'name = "T t"', "name: must match [a-z0-9-]+"),
        ('features = 2', 'features = 2\nmomentum = 1.5', "layer.momentum: must be in [0, 1]"),
        ('features = 2', 'features = 2\nnative = { pytorch = { momentum = 0.1 } }', "layer.native.pytorch: unknown key"),
        ('features = 2', 'features = 2\ndtype = "int8"', "layer.dtype: must be one of"),
    ],
)
def test_errors_name_file_step_and_key(write_scenario, old, new, fragment):
    assert old in MINIMAL
    message = error_of(write_scenario, MINIMAL.replace(old, new))
    assert fragment in message


def test_fit_target_shape_and_optimizer(write_scenario):
    text = MINIMAL + """
[inputs2]
"""
    message = error_of(write_scenario, text)
    assert "inputs2: unknown key" in message
    fit = MINIMAL.replace('x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]',
                          'x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]\nt = [[1.0, 2.0]]') + """
[[steps]]
op = "fit"
input = "x"
target = "t"
optimizer = { name = "sgd", lr = 0.1 }
"""
    assert "steps[1].target: shape [1, 2] does not match input 'x' [3, 2]" in error_of(write_scenario, fit)
    bad_opt = fit.replace('target = "t"', 'target = "x"').replace('lr = 0.1', 'lr = -1')
    assert "steps[1].optimizer.lr: must be > 0" in error_of(write_scenario, bad_opt)


def test_generated_inputs_are_seeded_and_rounded(write_scenario):
    text = MINIMAL.replace('x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]',
                           'x = { normal = { mean = 5.0, std = 2.0 }, shape = [8, 2], seed = 3 }')
    text = text.replace("features = 2", 'features = 2\ndtype = "bfloat16"')
    a = load(write_scenario(text, "a.toml")).inputs["x"]
    b = load(write_scenario(text, "b.toml")).inputs["x"]
    np.testing.assert_array_equal(a, b)
    raw = np.random.default_rng(3).normal(5.0, 2.0, size=(8, 2))
    assert not np.array_equal(a, raw)  # rounded to bfloat16: 8 significant bits
    mantissa = (a.astype(np.float32).view(np.uint32) & 0xFFFF)
    assert np.all(mantissa == 0)


def test_unknown_file_and_bad_toml(tmp_path):
    with pytest.raises(ScenarioError, match="no such file"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("schema = = 1")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load(bad)


def test_json_has_the_same_structure(tmp_path):
    import json

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"schema": 1, "name": "j", "layer": {"features": 1},
                                "inputs": {"a": [[1.0], [2.0]]},
                                "steps": [{"op": "predict", "input": "a"}]}))
    assert load(path).steps[0].op == "predict"


def test_paths_are_recorded_without_the_machine(write_scenario, tmp_path, monkeypatch):
    """Reports and snapshots record builtin:NAME or a path relative to the working directory."""
    from xbn.scenario import builtin_dir, recorded_path, resolve

    s = load(builtin_dir() / "bare-call.toml")
    assert s.path == "builtin:bare-call" and "path" in s.to_dict()
    assert resolve(s.path) == builtin_dir() / "bare-call.toml"
    assert load("builtin:bare-call").digest == s.digest
    monkeypatch.chdir(tmp_path)
    path = write_scenario(MINIMAL, "mine.toml")
    assert load(path).path == "mine.toml" == load("mine.toml").path
    assert recorded_path(tmp_path.parent / "elsewhere.toml") == "../elsewhere.toml"


def test_scenario_and_snapshot_errors_share_one_shape():
    from xbn.snapshot import SnapshotError
    from xbn.strict import StrictError

    assert issubclass(ScenarioError, StrictError) and issubclass(SnapshotError, StrictError)
    assert str(ScenarioError("f.toml", "bad", "steps[0].op")) == "f.toml: steps[0].op: bad"
