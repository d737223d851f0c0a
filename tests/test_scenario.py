"""Strict scenario validation: every error names file, step and key, in one line."""

from __future__ import annotations

import numpy as np
import pytest

from xbn.scenario.loader import ScenarioError, builtin_paths, load

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
        ('x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]', 'x = [[1.0, "inf"], [3.0, 5.0]]', "inputs.x: expected numbers, got 'inf'"),
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
    from xbn.scenario.loader import builtin_dir, recorded_path, resolve

    s = load(builtin_dir() / "bare-call.toml")
    assert s.path == "builtin:bare-call" and "path" in s.to_dict()
    assert resolve(s.path) == builtin_dir() / "bare-call.toml"
    assert load("builtin:bare-call").digest == s.digest
    monkeypatch.chdir(tmp_path)
    path = write_scenario(MINIMAL, "mine.toml")
    assert load(path).path == "mine.toml" == load("mine.toml").path
    assert recorded_path(tmp_path.parent / "elsewhere.toml") == "../elsewhere.toml"


def test_scenario_and_snapshot_errors_share_one_shape():
    from xbn.common.strict import StrictError
    from xbn.guard.snapshot import SnapshotError

    assert issubclass(ScenarioError, StrictError) and issubclass(SnapshotError, StrictError)
    assert str(ScenarioError("f.toml", "bad", "steps[0].op")) == "f.toml: steps[0].op: bad"


# -- where values live: param_dtype, rounding, overflow ----------------------------------------

SET_BIG = MINIMAL + """
[[steps]]
op = "set_weights"
moving_variance = 70000
"""


def test_a_value_beyond_its_dtype_is_a_load_error_not_inf(write_scenario):
    """70000 > 65504, the largest float16: a float16 layer cannot hold it (it would be inf)."""
    f16 = SET_BIG.replace("features = 2", 'features = 2\ndtype = "float16"')
    message = error_of(write_scenario, f16)
    assert message.endswith(
        "steps[1].moving_variance: 70000 is not representable in float16 (max 65504)")
    # mixed precision: the statistics live in float32, where 70000 is exact
    mixed = f16.replace('dtype = "float16"', 'dtype = "float16"\nparam_dtype = "float32"')
    s = load(write_scenario(mixed))
    assert s.layer.state_dtype == "float32" and s.steps[1].values["moving_variance"] == [70000.0] * 2
    # values still round to where they live: 65519 -> 65504 in float16, 1 + 2^-12 -> 1
    near = f16.replace("moving_variance = 70000", "moving_variance = [65519, 1.000244140625]")
    assert load(write_scenario(near)).steps[1].values["moving_variance"] == [65504.0, 1.0]
    bf16 = SET_BIG.replace("features = 2", 'features = 2\ndtype = "bfloat16"') \
        .replace("70000", "3.4e38")
    assert "3.4e+38 is not representable in bfloat16 (max 3.3895314e+38)" in \
        error_of(write_scenario, bf16)


def test_inputs_and_expected_values_round_to_where_each_quantity_lives(write_scenario):
    f16 = MINIMAL.replace("features = 2", 'features = 2\ndtype = "float16"')
    assert "inputs.x: 100000 is not representable in float16" in error_of(
        write_scenario, f16.replace("[3.0, 5.0]", "[3.0, 1e5]"))
    text = f16.replace('param', 'param') + """
[steps.expect]
source = "a test"
output = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
moving_variance = 70000
"""
    assert "steps[0].expect.moving_variance: 70000 is not representable in float16" in \
        error_of(write_scenario, text)
    mixed = text.replace('dtype = "float16"', 'dtype = "float16"\nparam_dtype = "float32"')
    expect = load(write_scenario(mixed)).steps[0].expect
    assert expect["moving_variance"] == [70000.0, 70000.0]  # float32: exact
    assert expect["output"][0] == [float(np.float16(0.1)), float(np.float16(0.2))]  # float16
    from xbn.scenario.loader import quantity_dtype

    layer = load(write_scenario(mixed)).layer
    assert [quantity_dtype(layer, q) for q in ("output", "grad_input", "gamma", "grad_beta",
                                               "moving_mean", "loss")] == \
        ["float16", "float16", "float32", "float32", "float32", "float32"]
    assert "a call step records no loss" in error_of(
        write_scenario, mixed.replace("moving_variance = 70000", "loss = 1.0"))


def test_param_dtype_defaults_to_dtype_and_keeps_old_digests(write_scenario):
    plain = load(write_scenario(MINIMAL, "a.toml"))
    same = load(write_scenario(MINIMAL.replace("features = 2",
                                               'features = 2\nparam_dtype = "float32"'), "b.toml"))
    assert plain.layer.param_dtype is None and plain.layer.state_dtype == "float32"
    assert "param_dtype" not in plain.to_dict()["layer"]  # digests of existing files unchanged
    assert same.digest == plain.digest  # the same as dtype means unset
    mixed = load(write_scenario(MINIMAL.replace(
        "features = 2", 'features = 2\ndtype = "bfloat16"\nparam_dtype = "float32"'), "c.toml"))
    assert mixed.layer.mixed and mixed.to_dict()["layer"]["param_dtype"] == "float32"
    from xbn.scenario.loader import Scenario

    assert Scenario.from_dict(mixed.to_dict()).layer == mixed.layer
    assert "layer.param_dtype: must be one of" in error_of(
        write_scenario, MINIMAL.replace("features = 2", 'features = 2\nparam_dtype = "half"'))


@pytest.mark.parametrize(("old", "new", "fragment"), [
    ("x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]",
     "x = { normal = { mean = 0.0, std = -1.0 }, shape = [3, 2] }",
     "inputs.x.normal.std: a standard deviation cannot be negative"),
    ("x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]",
     "x = { uniform = { low = -1e308, high = 1e308 }, shape = [3, 2] }",
     "inputs.x.uniform: high - low is beyond float64's range"),
    ("x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]", "x = [[1, 2], [3, 5], [0, 1" + "0" * 400 + "]]",
     "inputs.x: non-finite value (an integer beyond float64's range)"),
    ("features = 2", "features = 2\nepsilon = " + "9" * 400, "layer.epsilon: must be finite"),
    ("x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]",
     "x = { constant = 1.0, shape = [100000, 100000] }",
     "inputs.x.shape: 10000000000 elements; at most"),
    ("features = 2", "features = 100000000000", "layer.features: must be <= 65536"),
    ("x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]",
     "x = { normal = { std = 1e308 }, offset = 1e308, shape = [3, 2], seed = 1 }",
     "inputs.x"),
])
def test_bad_input_is_one_line_not_a_raw_error(write_scenario, old, new, fragment):
    assert old in MINIMAL
    assert fragment in error_of(write_scenario, MINIMAL.replace(old, new))


def test_inputs_that_are_not_a_table(write_scenario):
    text = MINIMAL.replace("[inputs]\nx = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]\n", "") \
        .replace("schema = 1\n", "schema = 1\ninputs = 1.5\n")
    assert error_of(write_scenario, text).endswith("inputs: expected a table, got a number")


def _mutations(value, rng):
    """``value`` with one thing changed somewhere inside it: a key dropped or misspelt, or a
    value replaced by one a careless or hostile file could hold; deeper places are as likely
    as the top."""
    pool = [None, True, -1, 0, 1.5, -1e308, 1e308, float("inf"), float("nan"), 10**400, "",
            "x", "float16", "NHWC", [], [[]], [1, [2]], {}, {"a": 1}, [1.0] * 3, [[1.0] * 3],
            70000.0, -0.0, 2**31, {"normal": {"std": -0.0}, "shape": [2, 2]}]
    children = [k for k, v in (value.items() if isinstance(value, dict) else
                               enumerate(value) if isinstance(value, list) else ())
                if isinstance(v, (dict, list))]
    if children and rng.random() < 0.75:  # go deeper
        out = dict(value) if isinstance(value, dict) else list(value)
        key = children[int(rng.integers(len(children)))]
        out[key] = _mutations(out[key], rng)
        return out
    if isinstance(value, dict) and value:
        out = dict(value)
        key = sorted(out)[int(rng.integers(len(out)))]
        choice = int(rng.integers(3))
        if choice == 0:
            del out[key]
        elif choice == 1:
            out[key + "x"] = out.pop(key)
        else:
            out[key] = pool[int(rng.integers(len(pool)))]
        return out
    if isinstance(value, list) and value:
        out = list(value)
        out[int(rng.integers(len(out)))] = pool[int(rng.integers(len(pool)))]
        return out
    return pool[int(rng.integers(len(pool)))]


def test_fuzzed_documents_fail_with_one_line_or_load():
    """Random mutations of valid scenarios (every built-in and a rich one): parse either
    succeeds or raises ScenarioError naming the file, never another exception."""
    import json

    from xbn.scenario.loader import parse

    rich = {"schema": 1, "name": "r", "layer": {"features": 2, "dtype": "float16",
                                                "param_dtype": "float32", "momentum": 0.9,
                                                "native": {"torch": {"momentum": 0.1}}},
            "inputs": {"x": {"normal": {"mean": 1.0, "std": 2.0}, "shape": [4, 2], "seed": 3},
                       "t": {"uniform": {"low": 0.0, "high": 1.0}, "shape": [4, 2]},
                       "c": {"constant": 2.0, "shape": [4, 2], "offset": 1.0}},
            "steps": [{"op": "fit", "input": "x", "target": "t", "epochs": 2, "batch_size": 2,
                       "optimizer": {"name": "adam", "lr": 0.1, "beta1": 0.9}},
                      {"op": "grad", "input": "x", "weights": "t", "training": True},
                      {"op": "set_weights", "gamma": [1.0, 2.0], "moving_variance": 3.0},
                      {"op": "set", "trainable": False, "mode": "eval"},
                      {"op": "call", "input": "c", "repeat": 2,
                       "expect": {"source": "s", "output": 0.5, "moving_mean": [0.0, 1.0]}}]}
    from xbn.scenario.loader import tomllib

    docs = [rich] + [tomllib.loads(p.read_text()) for p in builtin_paths()]
    rng = np.random.default_rng(2024)
    for doc in docs:
        parse(json.loads(json.dumps(doc)), "f.toml")  # each one is valid as it stands
    for i in range(3000):
        doc = json.loads(json.dumps(docs[i % len(docs)]))
        for _ in range(int(rng.integers(1, 4))):
            doc = _mutations(doc, rng)
        try:
            parse(doc, "f.toml")
        except ScenarioError as exc:
            assert str(exc).startswith("f.toml: ") and "\n" not in str(exc), str(exc)


CHAIN = MINIMAL + """
[[steps]]
op = "set"
trainable = false
[[steps]]
op = "reset"
[[steps]]
op = "call"
input = "@0"
training = true
"""


def test_chained_inputs_and_reset_load(write_scenario):
    s = load(write_scenario(CHAIN))
    assert [st.op for st in s.steps] == ["call", "set", "reset", "call"]
    assert s.steps[3].input == "@0" and s.input_shape("@0") == (3, 2)
    assert s.observes_counter and not load(write_scenario(MINIMAL)).observes_counter


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('input = "@0"', 'input = "@3"', "steps[3].input: step 3 is not an earlier step"),
        ('input = "@0"', 'input = "@9"', "steps[3].input: step 9 is not an earlier step"),
        ('input = "@0"', 'input = "@1"', "steps[3].input: step 1 (set) has no output"),
        ('input = "@0"', 'input = "@2"', "steps[3].input: step 2 (reset) has no output"),
        ('input = "@0"', 'input = "@x"', "steps[3].input: expected \"@N\" with N a step index"),
        ('input = "@0"', 'input = 0', "steps[3].input: expected a string"),
        ('op = "reset"', 'op = "reset"\ntraining = true', "steps[2].training: unknown key"),
    ],
)
def test_chained_and_reset_errors_name_step_and_key(write_scenario, old, new, fragment):
    assert CHAIN.count(old) == 1
    assert fragment in error_of(write_scenario, CHAIN.replace(old, new))



def test_a_chained_input_has_the_shape_of_its_source(write_scenario):
    """expect and grad weights are checked against the chained output's shape."""
    text = CHAIN + """
[[steps]]
op = "grad"
input = "@3"
training = true
weights = "x"
expect = { source = "s", output = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]] }
"""
    s = load(write_scenario(text))
    assert s.input_shape(s.steps[4].input) == (3, 2)
    bad = text.replace("output = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]", "output = [[0.0, 0.0]]")
    assert "steps[4].expect.output: expected shape [3, 2]" in error_of(write_scenario, bad)


def test_epsilon_zero_is_passed_through_and_negative_is_refused(write_scenario):
    s = load(write_scenario(MINIMAL.replace("features = 2", "features = 2\nepsilon = 0")))
    assert s.layer.epsilon == 0.0
    bad = MINIMAL.replace("features = 2", "features = 2\nepsilon = -1e-5")
    assert "layer.epsilon: must be >= 0, got -1e-05" in error_of(write_scenario, bad)


@pytest.mark.parametrize(("native", "layout", "fragment"), [
    ('{ memory_format = "nhwc" }', "NHWC", "layer.native.torch.memory_format: must be one of"),
    ('{ memory_format = 4 }', "NHWC", "layer.native.torch.memory_format: expected a string"),
    ('{ memory_format = "channels_last" }', "NC",
     "layer.native.torch.memory_format: channels_last needs a 4-D or 5-D layout, got NC"),
])
def test_torch_memory_format_is_validated(write_scenario, native, layout, fragment):
    rank = {"NC": 2, "NHWC": 4}[layout]
    shape = [2, 2, 2, 2][:rank]
    text = f"""
schema = 1
name = "t"
[layer]
features = 2
layout = "{layout}"
native = {{ torch = {native} }}
[inputs]
x = {{ constant = 1.0, shape = {shape} }}
[[steps]]
op = "predict"
input = "x"
"""
    assert fragment in error_of(write_scenario, text)
    good = text.replace(native, '{ memory_format = "channels_last" }').replace(
        f'layout = "{layout}"', 'layout = "NHWC"').replace(str(shape), "[2, 2, 2, 2]")
    assert load(write_scenario(good)).layer.native["torch"] == {"memory_format": "channels_last"}


def test_one_table_says_what_each_op_records():
    """``RECORDS`` is both what an ``expect`` table may name per op and what the driver records
    before the state (a ``step`` row for an op that records no value): every op, once."""
    from xbn.adapters.base import primary_quantities
    from xbn.scenario.model import OPS
    from xbn.scenario.observation import RECORDS

    assert tuple(RECORDS) == OPS
    assert {op: primary_quantities(op) for op in OPS} == {
        "call": ("output",), "predict": ("output",), "set": ("step",), "fit": ("loss",),
        "grad": ("output", "grad_input", "grad_gamma", "grad_beta"), "set_weights": ("step",),
        "reset": ("step",)}


def test_a_quoted_momentum_is_named_as_a_number_in_quotes(write_scenario):
    """momentum = "0.9" is a number written as a string: the error says so, rather than
    offering "cumulative" as the only choice."""
    path = write_scenario(MINIMAL.replace("features = 2", 'features = 2\nmomentum = "0.9"'))
    with pytest.raises(ScenarioError, match=r"layer\.momentum: must be a number .*'0\.9'"):
        load(path)
