"""Execution modes for torch and Keras, and the mode plumbing in profiles (issue 23).

The adapter under a mode must run the program users write: expected values come from the
framework driven by hand (``torch.compile(module)``, a Keras model called inside
``tf.function(jit_compile=True)``), compared bit for bit. The input is large-mean's kind (mean
1e4, std 0.5, float32): there the eager and compiled float programs round differently, so a
mode that silently ran eagerly would fail. ``torch.compile`` costs seconds per program here, so
only the profile test is in the quick tier.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks import require_framework
from xbn.adapters.compile_time import CompileTimer
from xbn.frameworks import modes
from xbn.frameworks.registry import load_adapter
from xbn.profiles.facts import PROFILES, differences, semantics_of
from xbn.scenario.loader import Layer

X = np.asarray(np.random.default_rng(131).normal(1e4, 0.5, (16, 2)), np.float32)
EPS = 1e-3


def test_moded_ids_take_their_base_profile_overridden_by_their_mode():
    """``torch+compile`` is torch's semantics with inductor's rounding; a device changes
    nothing; a mode the id has not is no profile; a mode without facts is its base's."""
    assert "torch+compile@cuda" in PROFILES and "torch+bogus" not in PROFILES
    compiled, eager = PROFILES["torch+compile"], PROFILES["torch"]
    assert compiled["variance_update"] == eager["variance_update"]
    assert eager["inference_form"].value == "folded_fma"
    assert compiled["inference_form"].value == "centered"
    assert semantics_of("torch+compile@cuda").update_form == "weighted_sum"
    assert differences("torch+eager") == differences("torch")
    assert "torch+compile" not in list(PROFILES)  # iteration: registry ids only


def test_plain_ids_say_what_each_op_runs_and_timers_keep_one_note():
    keras = modes.describe("keras")
    assert set(keras["plain"]) == set(modes.OPS) and "jit_compile='auto'" in keras["plain_why"]
    assert "jax.jit" in modes.describe("keras-jax")["plain"]["predict"]
    notes: list[str] = ["other"]
    timer = CompileTimer("torch+compile", "torch.compile", notes)
    assert timer(("a",), lambda v: v + 1, 1) == 2 and timer(("a",), lambda v: v, 3) == 3
    timer(("b",), lambda: None)
    assert len(notes) == 2 and "2 program(s)" in notes[1] and "(1)" in notes[1]


def _torch_adapter(mode: str | None):
    adapter = load_adapter("torch" if mode is None else f"torch+{mode}")
    adapter.build(Layer(features=2, layout="NC", momentum=0.9, epsilon=EPS))
    return adapter


@pytest.mark.slow
def test_torch_compile_runs_the_compiled_module_and_differs_from_eager():
    require_framework("torch")
    import torch

    got = np.asarray(_torch_adapter("compile").call(X.astype(np.float64), True))
    eager = np.asarray(_torch_adapter(None).call(X.astype(np.float64), True))
    torch._dynamo.reset()
    bn = torch.nn.BatchNorm1d(2, eps=EPS, momentum=0.1)
    with torch.no_grad():
        want = torch.compile(bn)(torch.from_numpy(X)).numpy()
        plain = torch.nn.BatchNorm1d(2, eps=EPS, momentum=0.1)(torch.from_numpy(X)).numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(eager, plain)
    assert (got != eager).any()  # large-mean: another float program
    # the derivation the mode facts state: ((x - mean) * (1/sqrt(var + eps))) * w + b,
    # two-pass statistics, every operation rounded in float32
    mean = X.mean(axis=0, dtype=np.float32)
    var = ((X - mean) ** 2).mean(axis=0, dtype=np.float32)
    inv = np.float32(1) / np.sqrt(var + np.float32(EPS))
    np.testing.assert_array_equal(got, (X - mean) * inv)


@pytest.mark.slow
def test_keras_xla_calls_inside_tf_function_jit_compile():
    require_framework("keras")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("this process imported Keras on another backend")
    adapter = load_adapter("keras+xla")
    adapter.build(Layer(features=2, layout="NC", momentum=0.9, epsilon=EPS))
    got = np.asarray(adapter.call(X.astype(np.float64), True))
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(2,), dtype="float32")
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9,
                                                                epsilon=EPS)(inputs))
    want = tf.function(lambda x: model(x, training=True), jit_compile=True)(X).numpy()
    eager = model(X, training=True).numpy()
    np.testing.assert_array_equal(got, want)
    assert (want != eager).any()
    assert any("keras+xla compile time" in n for n in adapter.notes)
