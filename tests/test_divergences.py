"""xbn/profiles/divergences.toml is checked data: every entry names its framework, the quantities it
covers, a reason and a link, and covers the rows of any scenario that does what it describes,
whatever the scenario's name (the conformance suite holds each named quantity to still departing
from the profile)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xbn.frameworks.registry import FRAMEWORK_IDS
from xbn.profiles.divergences import known_divergence, known_divergences, parse_divergences
from xbn.scenario.loader import QUANTITIES, builtin_paths, load

from .frameworks import require_framework

GOOD = """
[[divergence]]
framework = "keras-jax"
layer = { dtype = "float32", replicas = false }
step = { op = "predict", updates = 10 }
after = { training = true }
quantity = "output"
reason = "r"
link = "l"
"""


def test_every_packaged_entry_names_its_quantities_reason_and_link():
    entries = known_divergences()
    assert entries
    for d in entries:
        assert d["quantity"] and isinstance(d["quantity"], tuple), d
        assert d["reason"].strip() and d["link"].startswith("https://"), d


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace('quantity = "output"\n', ""), "divergence[0]: quantity is required"),
    (lambda t: t.replace('link = "l"', 'link = ""'), "divergence[0]: link is required"),
    (lambda t: t.replace('step = {', 'steps = {'), "divergence[0].steps: unknown key"),
    (lambda t: t.replace('"keras-jax"', '"kerasjax"'), "unknown framework 'kerasjax'"),
    (lambda t: t.replace('"output"', '"outputs"'), "divergence[0].quantity: 'outputs' is not one"),
    (lambda t: t.replace('"output"', "[]"), "divergence[0]: quantity is required"),
    (lambda t: t.replace('"predict"', '"evaluate"'), "divergence[0].step.op: 'evaluate' is not one"),
    # a name is no condition: the scope is what the scenario does
    (lambda t: t.replace('quantity =', 'scenario = "seed-*"\nquantity ='),
     "divergence[0].scenario: a divergence is scoped by what a scenario does"),
    (lambda t: t.replace('op = "predict"', 'ops = "predict"'),
     "divergence[0].step.ops: unknown condition (conditions: op, training,"),
    (lambda t: t.replace('replicas = false', 'mixed = true'), "divergence[0].layer.mixed: unknown condition"),
    (lambda t: t.replace('dtype = "float32"', 'dtype = "float8"'), "divergence[0].layer.dtype: 'float8' is not one"),
    (lambda t: t.replace('replicas = false', 'replicas = "no"'), "divergence[0].layer.replicas: 'no' is not true or false"),
    (lambda t: t.replace('training = true', 'training = 1'), "divergence[0].after.training: 1 is not true or false"),
    (lambda t: t.replace('updates = 10', 'updates = 0'), "divergence[0].step.updates: 0 is not a whole number"),
    (lambda t: t.replace('updates = 10', 'updates = true'), "divergence[0].step.updates: True is not a whole number"),
    (lambda t: t.replace('training = true', 'exceeds_dtype = "output"'), "divergence[0].after.exceeds_dtype: 'output' is not one"),
    (lambda t: t.replace('{ training = true }', '{}'), "divergence[0].after: a table of conditions"),
    (lambda t: t.replace('{ training = true }', '"training"'), "divergence[0].after: a table of conditions"),
])
def test_a_malformed_entry_is_refused_naming_entry_and_key(change, message):
    good = parse_divergences(GOOD)[0]
    assert good["step"] == {"op": ("predict",), "updates": 10}
    assert good["layer"] == {"dtype": ("float32",), "replicas": False}
    with pytest.raises(ValueError) as err:
        parse_divergences(change(GOOD))
    assert str(err.value).startswith("xbn/profiles/divergences.toml: divergence[0]")
    assert message in str(err.value)


# What each packaged entry covers on the built-in scenarios: (framework, the reason's first words)
# -> scenario -> the steps whose rows it covers, of every quantity the entry names. Every row
# here departs from the profile (or is n/a: Equinox cannot place unequal shards).
COVERED = {
    ("equinox", "eqx.nn.BatchNorm mode='ema'"): {"mixed-float16": [0, 1]},
    ("keras-jax", "predict is jitted"): {"seed-keras": [4]},
    ("keras-jax", "jax.lax.rsqrt"): {"seed-keras-frozen": [4, 6, 7]},
    ("flax-nnx", "nnx.BatchNorm promotes"): {"mixed-float16-large-variance": [1]},
    ("equinox", "eqx.nn.BatchNorm's default mode='ema' cannot train under shard_map"): {
        "replicas-equal": [0, 1], "replicas-unequal": [0, 1], "replicas-mask": [0, 1],
        "replicas-unsynchronized-equal": [0, 1, 2], "replicas-unsynchronized": [0, 1, 2]},
    ("torch", "torch's profile declares SyncBatchNorm"): {"replicas-equal": [0, 1],
                                                          "replicas-unequal": [0, 1],
                                                          "replicas-mask": [0, 1]},
    ("keras", "Keras 3's predict loop"): {"zero-size-batch": [2]},
    ("keras-torch", "Keras 3's predict loop"): {"zero-size-batch": [2]},
    ("keras-numpy", "Keras 3's predict loop"): {"zero-size-batch": [2]},
    ("keras-openvino", "Keras 3's predict loop"): {"zero-size-batch": [2]},
    ("mlx", "MLX computes the batch mean"): {"mixed-float16": [0, 1],
                                             "mixed-float16-large-variance": [0, 1]},
    ("keras-jax", "Keras 3's JAX predict loop"): {"zero-size-batch": [2, 3, 4]},
    # every 4-D training step runs XLA's one-pass variance; it departs where the mean is large
    ("tf-keras+xla", "tf-keras runs a 4-D BatchNormalization"): {
        "batch-of-one-spatial": [0], "layout-nchw": [0, 1, 2],
        "layout-nhwc": [0, 1, 2], "memory-format-channels-last": [0, 1, 2],
        "variance-update-spatial": [0, 1]},
    # float64 layers only: no built-in scenario is float64 (the fuzzer found them)
    ("torch+onnx", "ONNX's BatchNormalization takes epsilon"): {},
    ("torch+onnx-script", "ONNX's BatchNormalization takes epsilon"): {},
    ("torch+openvino", "OpenVINO's CPU plugin has no float64"): {},
    ("keras+openvino", "OpenVINO's CPU plugin has no float64"): {},
    ("mlx", "MLX 0.32.4 can hang"): {"zero-size-batch": [0, 1, 2, 3, 4]},
}
MODED = ("tf-keras+xla", "torch+onnx", "torch+onnx-script", "torch+openvino", "keras+openvino")  # the moded ids an entry names (a compiled program's own divergence)


def _entry(d: dict) -> tuple[str, str]:
    found = [key for key in COVERED if key[0] == d["framework"] and d["reason"].startswith(key[1])]
    assert len(found) == 1, f"an entry COVERED does not name: {d['framework']}: {d['reason'][:60]}"
    return found[0]


def _covered(scenario, frameworks=(*FRAMEWORK_IDS, *MODED)) -> set[tuple]:
    """(entry, framework, step, quantity) of every row a known divergence covers in ``scenario``."""
    return {(_entry(d), fw, step, q) for fw in frameworks for step in range(len(scenario.steps))
            for q in QUANTITIES if (d := known_divergence(fw, scenario, step, q))}


def _renamed(scenario, name: str = "my-own-scenario"):
    return dataclasses.replace(scenario, name=name, path="elsewhere/my-own-scenario.toml")


def test_a_renamed_copy_of_every_builtin_scenario_is_covered_alike():
    """The rows each entry covers on the built-in scenarios, found again in copies of them
    under another name: an entry is scoped by what the scenario does."""
    got = set()
    for path in builtin_paths():
        scenario = load(path)
        copy = _renamed(scenario)
        covered = _covered(copy)
        assert covered == _covered(scenario), scenario.name
        got |= {(entry, scenario.name, step, q) for entry, _, step, q in covered}
    want = {(entry, name, step, q) for entry, where in COVERED.items() for name, steps in where.items()
            for step in steps for d in known_divergences() if _entry(d) == entry
            for q in d["quantity"]}
    assert got == want


def _builtin(name: str):
    return next(load(p) for p in builtin_paths() if p.stem == name)


def _steps(scenario, steps: list):
    """``scenario`` with these steps, numbered in their order."""
    return dataclasses.replace(scenario, steps=[dataclasses.replace(s, index=i)
                                                for i, s in enumerate(steps)])


def _step(scenario, index: int, **changes):
    steps = list(scenario.steps)
    steps[index] = dataclasses.replace(steps[index], **changes)
    return _steps(scenario, steps)


def _layer(scenario, **changes):
    return dataclasses.replace(scenario, layer=dataclasses.replace(scenario.layer, **changes))


def _fit_to(scenario, target: str, value):
    """Every fit of ``scenario`` trained towards the new input ``target``."""
    scenario = dataclasses.replace(scenario, inputs={**scenario.inputs, target: value})
    return _steps(scenario, [dataclasses.replace(s, target=target) if s.op == "fit" else s
                             for s in scenario.steps])


@pytest.mark.parametrize("name, framework, change", [
    # Equinox's mixed precision: 16-bit statistics train (dtype-float16) ...
    ("mixed-float16", "equinox", lambda s: _layer(s, param_dtype=None)),
    # ... and without a training call nothing fails
    ("mixed-float16", "equinox", lambda s: _step(s, 0, training=False)),
    # keras-jax's jitted predict: a few updates leave the moving mean far from the input ...
    ("seed-keras", "keras-jax", lambda s: _step(s, 1, repeat=10)),
    # ... as does a reset before the predict, and a frozen layer's training calls update nothing
    ("seed-keras", "keras-jax", lambda s: _step(s, 3, op="reset", input=None, training=None)),
    ("seed-keras", "keras-jax", lambda s: _steps(s, [s.steps[5], *s.steps[:5]])),
    # keras-jax's rsqrt: a loss against another target does not cancel
    ("seed-keras-frozen", "keras-jax", lambda s: _fit_to(s, "t", np.zeros((1, 1)))),
    # flax-nnx: a variance float16 can hold survives the promotion
    ("mixed-float16-large-variance", "flax-nnx",
     lambda s: _step(s, 0, values={"moving_variance": [60000.0] * 3})),
    # on one device Equinox trains and torch's BatchNorm needs no GPU
    ("replicas-equal", "equinox", lambda s: _layer(s, replicas=None, synchronized=False)),
    ("replicas-equal", "torch", lambda s: _layer(s, replicas=None, synchronized=False)),
    ("replicas-equal", "torch", lambda s: _layer(s, synchronized=False)),  # DDP alone runs on CPU
    # Keras' predict loop on a batch with rows
    ("zero-size-batch", "keras", lambda s: _step(s, 2, input="x")),
    ("zero-size-batch", "keras-torch", lambda s: _step(s, 2, input="x")),
    ("zero-size-batch", "keras-jax", lambda s: _step(s, 2, input="x")),
])
def test_a_scenario_without_the_condition_is_not_covered(name, framework, change):
    scenario = _builtin(name)
    assert _covered(_renamed(scenario), [framework])  # the condition is there: covered
    assert not _covered(_renamed(change(scenario)), [framework])


def test_rows_before_the_failure_are_not_covered():
    # keras-jax's variables lose their values in the empty predict (step 2), not before it
    scenario = _renamed(_builtin("zero-size-batch"))
    assert not known_divergence("keras-jax", scenario, 1, "output")
    assert known_divergence("keras-jax", scenario, 2, "output")
    # Equinox's failed training: an inference call before it is not covered
    mixed = _renamed(_builtin("mixed-float16"))
    mixed = _steps(mixed, [mixed.steps[1], mixed.steps[0]])
    assert not known_divergence("equinox", mixed, 0, "output")
    assert known_divergence("equinox", mixed, 1, "output")
    assert not known_divergence("equinox", mixed, 1, "gamma")  # only the quantities it names


def test_equinox_mixed_precision_under_another_name_is_a_known_divergence():
    """End to end: Equinox's real TypeError on float16 inputs with float32 statistics, in a
    user's scenario that is mixed-float16 under another name."""
    require_framework("equinox")
    from xbn import compare, run

    scenario = _renamed(_builtin("mixed-float16"), "my-amp-layer")
    diffs = compare(run([scenario], ["numpy", "equinox"], timeout=300))
    rows = diffs[(diffs["framework"] == "equinox") & (diffs["verdict"] != "same")]
    assert set(rows["quantity"]) == {"output", "moving_mean", "moving_variance"}
    assert "error" in set(rows["verdict"])  # the training call raises
    assert rows["explanation"].str.startswith("known divergence: eqx.nn.BatchNorm mode='ema'").all()
