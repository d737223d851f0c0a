"""Batch Renormalization (Keras 3, tf-keras) and ghost batches (tf-keras ``virtual_batch_size``).

The adapters are checked bit-for-bit against the frameworks driven by hand; the float64
reference against the arithmetic written out below in plain numpy (``derive_renorm``,
``derive_ghost``) and gradients against central differences of that arithmetic; the loader's
errors by message. Keras 3 fixes its backend at import, so each backend runs this file as a
child process (as tests/adapters/test_keras.py does). Nothing is skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.adapters.keras_child import run_in_backend
from xbn.common.dtypes import round_to

pytestmark = pytest.mark.slow  # Keras on three backends, each in a process of its own

ROOT = Path(__file__).resolve().parents[2]
EPS = 1e-3
CLIP = {"rmax": 2.0, "rmin": 0.5, "dmax": 1.0}
RENORM = {"momentum": 0.75, **CLIP}


def data(shape, mean, std, seed):
    return round_to(np.random.default_rng(seed).normal(mean, std, size=shape), "float32")


# two batches that hit the clipping: the first rmax and dmax, the second rmin and -dmax
A, B = data((8, 3), 3.0, 4.0, 1), data((8, 3), -2.0, 0.5, 2)


# ---------------------------------------------------------------------------------------
# the arithmetic, in plain numpy (float64), as the Keras sources describe it


def derive_renorm(batches, momentum, renorm_momentum, gamma, beta, clip):
    """Outputs of training calls and the state after them. r and d use the renorm
    statistics before each batch (renorm_stddev floored at sqrt(eps)); moving_variance is
    relu(moving_stddev^2 - eps)."""
    c = batches[0].shape[1]
    renorm_mean, renorm_stddev = np.zeros(c), np.ones(c)
    moving_mean, moving_stddev, moving_variance = np.zeros(c), np.ones(c), np.ones(c)
    outputs = []
    for x in batches:
        mu, sigma = x.mean(axis=0), np.sqrt(x.var(axis=0) + EPS)
        floor = np.maximum(renorm_stddev, np.sqrt(EPS))
        r = np.clip(sigma / floor, clip.get("rmin", 0), clip.get("rmax", np.inf))
        d = np.clip((mu - renorm_mean) / floor, -clip.get("dmax", np.inf), clip.get("dmax", np.inf))
        outputs.append(((x - mu) / sigma * r + d) * gamma + beta)
        renorm_mean = renorm_momentum * renorm_mean + (1 - renorm_momentum) * mu
        renorm_stddev = renorm_momentum * renorm_stddev + (1 - renorm_momentum) * sigma
        moving_mean = momentum * moving_mean + (1 - momentum) * mu
        moving_stddev = momentum * moving_stddev + (1 - momentum) * sigma
        moving_variance = np.maximum(moving_stddev**2 - EPS, 0)
    state = {"moving_mean": moving_mean, "moving_variance": moving_variance,
             "renorm_mean": renorm_mean, "renorm_stddev": renorm_stddev,
             "moving_stddev": moving_stddev}
    return outputs, state


def ghost_rows(batch, n):
    """tf-keras reshapes a training batch to [n, batch / n, ...]: ghost batch g holds the
    items g, g + batch/n, ... (strided)."""
    per = batch // n
    return [np.arange(g, batch, per) for g in range(per)]


def derive_ghost(x, n, momentum, gamma=1.0, beta=0.0):
    """x channels last [B, ..., C]: output of one training call and the moving statistics
    (fed the mean over ghost batches of their means and biased variances)."""
    out = np.empty_like(x)
    means, variances = [], []
    for rows in ghost_rows(x.shape[0], n):
        part = x[rows].reshape(-1, x.shape[-1])
        mu, var = part.mean(axis=0), part.var(axis=0)
        out[rows] = (x[rows] - mu) / np.sqrt(var + EPS) * gamma + beta
        means.append(mu)
        variances.append(var)
    moving_mean = (1 - momentum) * np.mean(means, axis=0)
    moving_variance = momentum + (1 - momentum) * np.mean(variances, axis=0)
    return out, moving_mean, moving_variance


def central_difference(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


# ---------------------------------------------------------------------------------------
# the reference against the derivation


def reference(**layer):
    from xbn.frameworks.registry import load_adapter
    from xbn.scenario.loader import Layer

    a = load_adapter("numpy")
    a.build(Layer(**{"features": 3, "momentum": 0.5, "epsilon": EPS, "dtype": "float64",
                     **layer}))
    return a


def test_reference_renorm_matches_derivation():
    gamma, beta = np.array([2.0, 0.5, 1.0]), np.array([1.0, -1.0, 0.0])
    a = reference(renorm=RENORM)
    assert "renorm" in a.layer_features and "virtual_batch_size" in a.layer_features
    a.set_weights({"gamma": gamma, "beta": beta})
    outputs, state = derive_renorm([A, B], 0.5, 0.75, gamma, beta, CLIP)
    for x, want in zip([A, B], outputs, strict=True):
        np.testing.assert_allclose(a.call(x, True), want, rtol=1e-12, atol=1e-12)
    got = a.state()
    for name, want in state.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-12, atol=1e-12, err_msg=name)
    # the clipping really bit: unclipped, the first output differs
    free, _ = derive_renorm([A], 0.5, 0.75, gamma, beta, {})
    assert np.abs(free[0] - outputs[0]).max() > 0.5
    # inference: plain BN on moving_mean/moving_variance
    want = (A - state["moving_mean"]) / np.sqrt(state["moving_variance"] + EPS) * gamma + beta
    np.testing.assert_allclose(a.predict(A), want, rtol=1e-12, atol=1e-12)


def test_reference_renorm_defaults_do_not_clip():
    a = reference(renorm={})
    outputs, state = derive_renorm([A, B], 0.5, 0.99, 1.0, 0.0, {})
    for x, want in zip([A, B], outputs, strict=True):
        np.testing.assert_allclose(a.call(x, True), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.state()["renorm_stddev"], state["renorm_stddev"], rtol=1e-12)


def test_reference_renorm_gradients_hold_r_and_d_constant():
    gamma, beta = np.array([2.0, 0.5, 1.0]), np.array([1.0, -1.0, 0.0])
    w = data((8, 3), 0.0, 1.0, 3)
    a = reference(renorm=RENORM)
    a.set_weights({"gamma": gamma, "beta": beta})
    got = a.grad(A, True, w)
    # r, d from the fresh renorm statistics (0, 1) at the unperturbed batch, as constants
    mu, sigma = A.mean(axis=0), np.sqrt(A.var(axis=0) + EPS)
    r, d = np.clip(sigma, 0.5, 2.0), np.clip(mu, -1.0, 1.0)

    def loss(x, g=gamma):
        m, s = x.mean(axis=0), np.sqrt(x.var(axis=0) + EPS)
        return np.sum((((x - m) / s * r + d) * g + beta) * w)

    np.testing.assert_allclose(got["grad_input"], central_difference(loss, A), atol=1e-6)
    np.testing.assert_allclose(got["grad_gamma"],
                               central_difference(lambda g: loss(A, g), gamma), atol=1e-6)
    np.testing.assert_allclose(got["grad_beta"], w.sum(axis=0), atol=1e-12)


@pytest.mark.parametrize("layout,shape", [("NC", (8, 3)), ("NCHW", (4, 3, 2, 2))])
def test_reference_ghost_batches_match_derivation(layout, shape):
    x = data(shape, 1.0, 2.0, 4)
    a = reference(layout=layout, virtual_batch_size=2)
    last = np.moveaxis(x, 1, -1) if layout == "NCHW" else x
    out, moving_mean, moving_variance = derive_ghost(last, 2, 0.5)
    got = a.call(x, True)
    got = np.moveaxis(got, 1, -1) if layout == "NCHW" else got
    np.testing.assert_allclose(got, out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.state()["moving_mean"], moving_mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a.state()["moving_variance"], moving_variance, rtol=1e-12)
    # the average of ghost variances is not the batch variance
    assert np.abs(moving_variance - (0.5 + 0.5 * last.reshape(-1, 3).var(axis=0))).max() > 1e-3
    # a batch that 2 does not divide: uneven ghost batches, or refused where the semantics
    # model tf-keras' reshape (ghost_batch_remainder = "error", tf-keras' profile)
    assert np.isfinite(a.call(x[:3], True)).all()
    refusing = reference(layout=layout, virtual_batch_size=2,
                         native={"numpy": {"ghost_batch_remainder": "error"}})
    with pytest.raises(ValueError, match="does not divide"):
        refusing.call(x[:3], True)


def test_reference_ghost_gradients():
    x, w = data((8, 3), 1.0, 2.0, 5), data((8, 3), 0.0, 1.0, 6)
    got = reference(virtual_batch_size=4).grad(x, True, w)
    want = central_difference(lambda v: np.sum(derive_ghost(v, 4, 0.5)[0] * w), x)
    np.testing.assert_allclose(got["grad_input"], want, atol=1e-6)


# ---------------------------------------------------------------------------------------
# tf-keras against tf_keras by hand


def tf_keras_by_hand(shape, axis=-1, **kwargs):
    import tf_keras

    bn = tf_keras.layers.BatchNormalization(axis=axis, momentum=0.5, epsilon=EPS, **kwargs)
    inputs = tf_keras.Input(shape=shape[1:], dtype="float32")
    return tf_keras.Model(inputs, bn(inputs)), bn


def tf_keras_adapter(**layer):
    from xbn.frameworks.registry import load_adapter
    from xbn.scenario.loader import Layer

    a = load_adapter("tf-keras")
    a.build(Layer(**{"features": 3, "momentum": 0.5, "epsilon": EPS, **layer}))
    return a


def _same(got, want):
    want = want.numpy() if hasattr(want, "numpy") else want
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want).reshape(np.shape(got)))


def test_tf_keras_renorm_matches_by_hand():
    import tensorflow as tf

    a = tf_keras_adapter(renorm=RENORM)
    model, bn = tf_keras_by_hand(A.shape, renorm=True, renorm_clipping=CLIP,
                                 renorm_momentum=0.75)
    assert a.bn.renorm_clipping == CLIP and a.bn.renorm_momentum == 0.75 and not a.bn.fused
    for x in (A, B):
        _same(a.call(x, True), model(x.astype(np.float32), training=True))
        for name in ("moving_mean", "moving_variance", "renorm_mean", "renorm_stddev",
                     "moving_stddev"):
            _same(a.state()[name], getattr(bn, name))
    _same(a.predict(A), model.predict(A.astype(np.float32), batch_size=8, verbose=0))
    w = data((8, 3), 0.0, 1.0, 3)
    xt = tf.constant(A.astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt, training=True)
        total = tf.reduce_sum(y * tf.constant(w.astype(np.float32)))
    gx, gg, gb = tape.gradient(total, [xt, bn.gamma, bn.beta])
    got = a.grad(A, True, w)
    for q, want in (("output", y), ("grad_input", gx), ("grad_gamma", gg), ("grad_beta", gb)):
        _same(got[q], want)


def test_tf_keras_renorm_defaults():
    a = tf_keras_adapter(renorm={})
    assert a.bn.renorm and a.bn.renorm_clipping == {} and a.bn.renorm_momentum == 0.99
    model, bn = tf_keras_by_hand(A.shape, renorm=True)
    _same(a.call(A, True), model(A.astype(np.float32), training=True))
    _same(a.state()["renorm_stddev"], bn.renorm_stddev)


@pytest.mark.parametrize("layout,shape", [("NC", (8, 3)), ("NHWC", (4, 2, 2, 3))])
def test_tf_keras_ghost_batches_match_by_hand(layout, shape):
    import tensorflow as tf

    x, w = data(shape, 1.0, 2.0, 7), data(shape, 0.0, 1.0, 8)
    a = tf_keras_adapter(layout=layout, virtual_batch_size=2)
    model, bn = tf_keras_by_hand(shape, virtual_batch_size=2)
    # tf-keras' own shape: the input's rank plus the ghost axis; xbn observes [C]
    assert tuple(bn.moving_mean.shape) == (1,) * len(shape) + (3,)
    _same(a.call(x, True), model(x.astype(np.float32), training=True))
    state = a.state()
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        assert state[name].shape == (3,)
        _same(state[name], getattr(bn, name))
    # the framework's own numbers equal the strided derivation (float32 vs float64)
    out, moving_mean, moving_variance = derive_ghost(x.astype(np.float64), 2, 0.5)
    np.testing.assert_allclose(state["moving_mean"], moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["moving_variance"], moving_variance, rtol=1e-5)
    np.testing.assert_allclose(a.call(x, False), model(x.astype(np.float32), training=False),
                               rtol=0, atol=0)
    _same(a.predict(x), model.predict(x.astype(np.float32), batch_size=len(x), verbose=0))
    xt = tf.constant(x.astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(model(xt, training=True) * tf.constant(w.astype(np.float32)))
    gx, gg = tape.gradient(total, [xt, bn.gamma])
    got = a.grad(x, True, w)
    _same(got["grad_input"], gx)
    assert got["grad_gamma"].shape == (3,)
    _same(got["grad_gamma"], gg)
    a.set_weights({"moving_mean": np.array([1.0, 2.0, 3.0])})
    bn.moving_mean.assign(np.array([1.0, 2.0, 3.0], np.float32).reshape(bn.moving_mean.shape))
    _same(a.predict(x), model.predict(x.astype(np.float32), batch_size=len(x), verbose=0))


def test_tf_keras_ghost_batches_are_strided():
    """The fact xbn's reference encodes: tf-keras groups items g, g + B/N, ..., not
    consecutive ones (rows {0, 4} and {1, 5} ... for 8 rows and N = 2)."""
    x = data((8, 2), 1.0, 2.0, 9)
    model, _ = tf_keras_by_hand(x.shape, virtual_batch_size=2)
    y = model(x.astype(np.float32), training=True).numpy()
    strided, _, _ = derive_ghost(x.astype(np.float64), 2, 0.5)
    np.testing.assert_allclose(y, strided, rtol=1e-5, atol=1e-5)
    consecutive = np.concatenate([(p - p.mean(0)) / np.sqrt(p.var(0) + EPS)
                                  for p in np.split(x.astype(np.float64), 4)])
    assert np.abs(y - consecutive).max() > 0.1


def test_driver_observes_renorm_quantities_only_with_renorm():
    from xbn.adapters.base import run_scenario
    from xbn.frameworks.registry import load_adapter
    from xbn.scenario.loader import parse

    def scenario(layer):
        return parse({"schema": 1, "name": "t", "layer": {"features": 3, **layer},
                      "inputs": {"a": A.tolist()},
                      "steps": [{"op": "call", "input": "a", "training": True}]})

    a = load_adapter("tf-keras")
    rows = list(run_scenario(a, scenario({"renorm": {"rmax": 2.0}})))
    got = {r["quantity"]: r for r in rows}
    for q in ("renorm_mean", "renorm_stddev", "moving_stddev"):
        assert got[q]["status"] == "ok" and len(got[q]["value"]) == 3, got[q]
    _same(got["renorm_stddev"]["value"], a.bn.renorm_stddev)
    rows = list(run_scenario(a, scenario({})))
    assert {r["quantity"] for r in rows} == {"output", "gamma", "beta", "moving_mean",
                                             "moving_variance"}


# ---------------------------------------------------------------------------------------
# the loader


@pytest.mark.parametrize("renorm,key,words", [
    ("{ rmin = 3.0, rmax = 2.0 }", "layer.renorm.rmin", "larger than rmax"),
    ("{ rmid = 1.0 }", "layer.renorm", "rmid"),
])
def test_loader_errors_name_file_and_key(write_scenario, renorm, key, words):
    from xbn.scenario.loader import ScenarioError, load

    path = write_scenario(f"""
        schema = 1
        name = "t"
        [layer]
        features = 2
        renorm = {renorm}
        [inputs]
        x = [[1.0, 2.0], [3.0, 5.0]]
        [[steps]]
        op = "call"
        input = "x"
        training = true
        """)
    with pytest.raises(ScenarioError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and key in message and words in message


def test_loader_refuses_renorm_expectations_without_renorm():
    from xbn.scenario.loader import ScenarioError, parse

    with pytest.raises(ScenarioError, match="only observed in scenarios with renorm"):
        parse({"schema": 1, "name": "t", "layer": {"features": 2},
               "inputs": {"x": [[1.0, 2.0], [3.0, 5.0]]},
               "steps": [{"op": "call", "input": "x", "training": True,
                          "expect": {"source": "hand", "renorm_mean": [0.0, 0.0]}}]})


# ---------------------------------------------------------------------------------------
# Keras 3, each backend in a child process


@pytest.mark.parametrize("framework_id", ["keras", "keras-jax", "keras-torch"])
def test_keras3_renorm_matches_by_hand(framework_id: str) -> None:
    run_in_backend(__file__, framework_id)


def _keras_child(framework_id: str) -> None:
    import keras
    from keras import ops

    from xbn.frameworks.registry import load_adapter
    from xbn.scenario.loader import Layer

    a = load_adapter(framework_id)
    assert a.layer_features == frozenset({"renorm"})  # Keras 3 has no virtual_batch_size
    a.build(Layer(features=3, momentum=0.5, epsilon=EPS, renorm=RENORM))
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(3,))
    bn = keras.layers.BatchNormalization(momentum=0.5, epsilon=EPS, renorm=True,
                                         renorm_clipping=CLIP, renorm_momentum=0.75)
    model = keras.Model(inputs, bn(inputs))
    names = ("gamma", "beta", "moving_mean", "moving_variance", "renorm_mean",
             "renorm_stddev", "moving_stddev")
    for x in (A, B):
        np.testing.assert_array_equal(a.call(x, True),
                                      ops.convert_to_numpy(model(x.astype(np.float32),
                                                                 training=True)))
        state = a.state()
        assert set(state) == set(names)
        for name in names:
            np.testing.assert_array_equal(state[name], ops.convert_to_numpy(getattr(bn, name)),
                                          err_msg=name)
    np.testing.assert_array_equal(a.predict(A), model.predict(A.astype(np.float32),
                                                              batch_size=8, verbose=0))
    # defaults: renorm=True alone (no clipping, renorm_momentum 0.99)
    a.build(Layer(features=3, renorm={}))
    assert a.bn.renorm and a.bn.renorm_clipping == {} and a.bn.renorm_momentum == 0.99
    print(f"OK {framework_id}")


if __name__ == "__main__":
    _keras_child(sys.argv[1])
