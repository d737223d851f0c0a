"""``set_weights`` of Batch Renormalization's own variables (``renorm_mean``, ``renorm_stddev``,
``moving_stddev``), as Keras' ``test_renorm_correctness`` assigns them before a step.

The loader's keys; the reference's training call from loaded values against the renorm
arithmetic written out in numpy; the Keras adapters against Keras driven by hand (tf-keras
in-process, Keras 3 in a subprocess per backend).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.adapters.keras_child import run_in_backend
from tests.conftest import MINIMAL
from xbn.scenario.loader import ScenarioError, load

X = np.array([[4.0, 6.0, 2.0], [8.0, -2.0, 5.0], [6.0, 4.0, 3.0], [1.0, 0.5, -1.0]])
LOADED = {"moving_mean": [0.5, -0.25, 1.0], "moving_variance": [0.25, 4.0, 1.0],
          "moving_stddev": [0.75, 1.5, 0.5], "renorm_mean": [1.0, 2.0, -1.0],
          "renorm_stddev": [0.5, 3.0, 2.0], "gamma": [1.25, 0.5, 1.0], "beta": [0.0, 1.0, -0.5]}
EPS, MOMENTUM, RENORM_MOMENTUM = 1e-3, 0.9, 0.8
RENORM = {"momentum": RENORM_MOMENTUM, "rmax": 3.0, "rmin": 0.25, "dmax": 2.0}


def _layer():
    from xbn.scenario.loader import Layer

    return Layer(features=3, momentum=MOMENTUM, epsilon=EPS, renorm=RENORM)


def _derived():
    """One renorm training call from the loaded values (Keras' arithmetic: r and d from the
    renorm statistics before the batch, clipped; every average moved; moving_variance derived
    from moving_stddev)."""
    v = {k: np.asarray(val) for k, val in LOADED.items()}
    mean, std = X.mean(0), np.sqrt(X.var(0) + EPS)
    r = np.clip(std / v["renorm_stddev"], RENORM["rmin"], RENORM["rmax"])
    d = np.clip((mean - v["renorm_mean"]) / v["renorm_stddev"], -RENORM["dmax"], RENORM["dmax"])
    out = ((X - mean) / std * r + d) * v["gamma"] + v["beta"]
    state = {"renorm_mean": v["renorm_mean"] * RENORM_MOMENTUM + mean * (1 - RENORM_MOMENTUM),
             "renorm_stddev": v["renorm_stddev"] * RENORM_MOMENTUM + std * (1 - RENORM_MOMENTUM),
             "moving_mean": v["moving_mean"] * MOMENTUM + mean * (1 - MOMENTUM),
             "moving_stddev": v["moving_stddev"] * MOMENTUM + std * (1 - MOMENTUM)}
    state["moving_variance"] = np.maximum(state["moving_stddev"] ** 2 - EPS, 0)
    return out, state


# ------------------------------------------------------------------------------ loading


@pytest.mark.parametrize(("layer", "values", "fragment"), [
    ("", "renorm_mean = 1.0", "steps[0].renorm_mean: a Batch Renormalization variable: only with layer.renorm"),
    ("renorm = {}", "moving_stddev = [1.0, -1.0]", "steps[0].moving_stddev: a standard deviation cannot be negative"),
    ("renorm = {}", "renorm_stddev = [1.0]", "steps[0].renorm_stddev: expected 2 values, got shape [1]"),
    ("renorm = {}", "renorm_stdev = 1.0", "steps[0].renorm_stdev: unknown key (did you mean 'renorm_stddev'?)"),
])
def test_loader_errors_name_file_step_and_key(write_scenario, layer, values, fragment):
    text = MINIMAL.replace("features = 2", f"features = 2\n{layer}").replace(
        "[[steps]]", f"[[steps]]\nop = \"set_weights\"\n{values}\n[[steps]]", 1)
    with pytest.raises(ScenarioError) as info:
        load(write_scenario(text))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_loader_names_the_renorm_keys_when_none_is_given(write_scenario):
    text = MINIMAL.replace("features = 2", "features = 2\nrenorm = {}").replace(
        "[[steps]]", "[[steps]]\nop = \"set_weights\"\n[[steps]]", 1)
    with pytest.raises(ScenarioError, match="give at least one of moving_mean, moving_variance, gamma, beta, "
                       "renorm_mean, renorm_stddev, moving_stddev"):
        load(write_scenario(text))


def test_loaded_renorm_values_reach_the_scenario(write_scenario):
    text = MINIMAL.replace("features = 2", "features = 2\nrenorm = {}").replace(
        "[[steps]]", "[[steps]]\nop = \"set_weights\"\nmoving_stddev = 2.0\nrenorm_mean = [0.1, 0.2]\n"
        "[[steps]]", 1)
    step = load(write_scenario(text)).steps[0]
    assert step.values == {"moving_stddev": [2.0, 2.0], "renorm_mean": [np.float32(0.1), np.float32(0.2)]}


# ----------------------------------------------------------------------- the reference


def test_reference_trains_from_the_loaded_renorm_state():
    from xbn.adapters.numpy.adapter import NumpyAdapter

    ad = NumpyAdapter("numpy")
    ad.build(_layer())
    ad.set_weights({k: np.asarray(v) for k, v in LOADED.items()})
    state = ad.state()
    for k, v in LOADED.items():  # each variable as loaded (rounded to float32): nothing derived
        np.testing.assert_array_equal(state[k], np.asarray(v, np.float32), err_msg=k)
    out, want = _derived()
    np.testing.assert_allclose(ad.call(X, True), out, rtol=1e-12)
    for k, v in want.items():
        np.testing.assert_allclose(ad.state()[k], v, rtol=1e-12, err_msg=k)


def test_reference_without_renorm_refuses_renorm_variables():
    from xbn.adapters.base import NotApplicable
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.scenario.loader import Layer

    ad = NumpyAdapter("numpy")
    ad.build(Layer(features=3))
    with pytest.raises(NotApplicable, match="renorm_mean"):
        ad.set_weights({"renorm_mean": np.zeros(3)})


# ------------------------------------------------------------------ Keras, by hand


@pytest.mark.slow  # importing TensorFlow: over 10 s
def test_tf_keras_assigns_renorm_variables_as_by_hand():
    import tf_keras

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter("tf-keras")
    ad.build(_layer())
    ad.set_weights({k: np.asarray(v) for k, v in LOADED.items()})
    tf_keras.backend.clear_session()
    bn = tf_keras.layers.BatchNormalization(
        axis=1, momentum=MOMENTUM, epsilon=EPS, renorm=True, renorm_momentum=RENORM_MOMENTUM,
        renorm_clipping={k: v for k, v in RENORM.items() if k != "momentum"})
    inputs = tf_keras.Input(shape=[3])
    model = tf_keras.Model(inputs, bn(inputs))
    for k, v in LOADED.items():
        getattr(bn, k).assign(np.asarray(v, np.float32))
    want = model(X.astype(np.float32), training=True).numpy()
    np.testing.assert_array_equal(ad.call(X, True), want)
    for k in LOADED:
        np.testing.assert_array_equal(ad.state()[k], getattr(bn, k).numpy(), err_msg=k)
    out, derived = _derived()
    np.testing.assert_allclose(want, out, rtol=1e-5, atol=1e-5)
    for k, v in derived.items():
        np.testing.assert_allclose(getattr(bn, k).numpy(), v, rtol=1e-5, err_msg=k)


@pytest.mark.slow  # Keras on three backends, each in a process of its own
@pytest.mark.parametrize("framework_id", ["keras", "keras-jax", "keras-torch"])
def test_keras3_assigns_renorm_variables_as_by_hand(framework_id: str) -> None:
    run_in_backend(__file__, framework_id)


def _child(framework_id: str) -> None:
    import keras
    from keras import ops

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter(framework_id)
    ad.build(_layer())
    ad.set_weights({k: np.asarray(v) for k, v in LOADED.items()})
    bn = keras.layers.BatchNormalization(
        momentum=MOMENTUM, epsilon=EPS, renorm=True, renorm_momentum=RENORM_MOMENTUM,
        renorm_clipping={k: v for k, v in RENORM.items() if k != "momentum"})
    bn.build((None, 3))
    for k, v in LOADED.items():
        getattr(bn, k).assign(np.asarray(v, np.float32))
    want = ops.convert_to_numpy(bn(X.astype(np.float32), training=True))
    np.testing.assert_allclose(ad.call(X, True), want, rtol=1e-6, atol=1e-6)
    out, derived = _derived()
    np.testing.assert_allclose(want, out, rtol=1e-5, atol=1e-5)
    for k, v in derived.items():
        np.testing.assert_allclose(ad.state()[k], ops.convert_to_numpy(getattr(bn, k)),
                                   rtol=1e-6, err_msg=k)
        np.testing.assert_allclose(ad.state()[k], v, rtol=1e-5, err_msg=k)
    print(f"OK {framework_id}")


if __name__ == "__main__":
    _child(sys.argv[1])
