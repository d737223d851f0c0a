"""NaN and infinite padding under a mask: each framework's adapter against the framework
driven by hand, and what the framework does (the facts behind ``masked_nonfinite``).

Keras 3 runs on each backend in its own subprocess (tests/adapters/keras_child.py); tf-keras
and Flax in-process. Nothing here skips: a missing framework fails.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.adapters.keras_child import run_in_backend

# NLC: 3 sequences of 4 steps, 2 channels; padding (mask 0) holds NaN, -inf and inf
X = np.array([[[1.0, 5.0], [2.0, 5.5], [np.nan, np.nan], [np.nan, np.nan]],
              [[3.0, 4.0], [0.5, 6.0], [7.0, 3.5], [-np.inf, np.nan]],
              [[-1.0, 4.5], [2.5, 5.0], [1.5, 6.5], [4.0, np.inf]]])
M = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]], np.float64)
W = np.random.default_rng(5).uniform(-1.0, 1.0, X.shape).astype(np.float32).astype(np.float64)
MOMENTUM, EPSILON = 0.5, 1e-3
VALID = M.astype(bool)


def _layer():
    from xbn.scenario.loader import Layer

    return Layer(features=2, layout="NLC", momentum=MOMENTUM, epsilon=EPSILON)


def _valid_moments():
    v = X[VALID]
    return v.mean(axis=0), v.var(axis=0)


def _assert_select_or_where_mean(state, out):
    """The statistics of the valid positions only: finite, as the derivation says."""
    mean, var = _valid_moments()
    np.testing.assert_allclose(state["moving_mean"], (1 - MOMENTUM) * mean, rtol=1e-6)
    np.testing.assert_allclose(state["moving_variance"], MOMENTUM + (1 - MOMENTUM) * var, rtol=1e-5)
    np.testing.assert_allclose(out[VALID], (X[VALID] - mean) / np.sqrt(var + EPSILON), rtol=1e-5)


@pytest.fixture
def _restore_x64():
    import jax

    before = bool(jax.config.jax_enable_x64)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.usefixtures("_restore_x64")
def test_flax_linen_leaves_masked_nan_out_but_its_gradient_is_nan():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter("flax")
    ad.build(_layer())
    bn = nn.BatchNorm(axis=2, momentum=MOMENTUM, epsilon=EPSILON)
    x, w = jnp.asarray(X, jnp.float32), jnp.asarray(W, jnp.float32)
    mask = jnp.asarray(VALID)[..., None]
    variables = bn.init(jax.random.key(0), x, use_running_average=True)
    y, mutated = bn.apply(variables, x, use_running_average=False, mask=mask,
                          mutable=["batch_stats"])
    got = ad.call_masked(X, True, M)
    np.testing.assert_array_equal(got, np.asarray(y))
    state = ad.state()
    np.testing.assert_array_equal(state["moving_mean"], mutated["batch_stats"]["mean"])
    _assert_select_or_where_mean(state, got)

    def objective(xv):
        out, _ = bn.apply(variables, xv, use_running_average=False, mask=mask,
                          mutable=["batch_stats"])
        return jnp.sum(out * w)

    gx = np.asarray(jax.grad(objective)(x))
    fresh = load_adapter("flax")
    fresh.build(_layer())
    np.testing.assert_array_equal(fresh.grad_masked(X, True, W, M)["grad_input"], gx)
    masked = ~VALID[..., None] & np.ones(X.shape, bool)
    # where_mean: 0 * d(x**2)/dx at a masked NaN or infinity; a masked finite value is finite
    assert np.isnan(gx[masked & ~np.isfinite(X)]).all()
    assert np.isfinite(gx[masked & np.isfinite(X)]).all()


@pytest.mark.usefixtures("_restore_x64")
def test_flax_nnx_leaves_masked_nan_out():
    import jax.numpy as jnp
    from flax import nnx

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter("flax-nnx")
    ad.build(_layer())
    bn = nnx.BatchNorm(2, momentum=MOMENTUM, epsilon=EPSILON, axis=2, rngs=nnx.Rngs(0))
    want = bn(jnp.asarray(X, jnp.float32), use_running_average=False,
              mask=jnp.asarray(VALID)[..., None])
    got = ad.call_masked(X, True, M)
    np.testing.assert_array_equal(got, np.asarray(want))
    np.testing.assert_array_equal(ad.state()["moving_mean"], np.asarray(bn.mean[...]))
    _assert_select_or_where_mean(ad.state(), got)


@pytest.mark.slow  # importing TensorFlow: over 10 s
def test_tf_keras_weighted_moments_make_the_statistics_nan():
    import tensorflow as tf
    import tf_keras

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter("tf-keras")
    ad.build(_layer())
    bn = tf_keras.layers.BatchNormalization(axis=2, momentum=MOMENTUM, epsilon=EPSILON)
    inputs = tf_keras.Input(shape=[None, 2])
    model = tf_keras.Model(inputs, bn(inputs))
    want = model(tf.constant(X, tf.float32), training=True, mask=tf.constant(VALID)).numpy()
    got = ad.call_masked(X, True, M)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ad.state()["moving_mean"], bn.moving_mean.numpy())
    # multiply: 0 * NaN = 0 * inf = NaN in both channels' weighted sums
    assert np.isnan(got).all()
    assert np.isnan(ad.state()["moving_mean"]).all()
    assert np.isnan(ad.state()["moving_variance"]).all()
    # a fully masked batch is still 0 and 0 (div_no_nan), NaN padding or not
    fresh = load_adapter("tf-keras")
    fresh.build(_layer())
    fresh.call_masked(X, True, np.zeros_like(M))
    np.testing.assert_array_equal(fresh.state()["moving_mean"], [0.0, 0.0])


@pytest.mark.slow  # Keras on three backends, each in a process of its own
@pytest.mark.parametrize("framework_id", ["keras", "keras-jax", "keras-torch"])
def test_keras3_selects_the_valid_values(framework_id: str) -> None:
    run_in_backend(__file__, framework_id)


def _child(framework_id: str) -> None:
    import keras
    from keras import ops

    from tests.adapters.test_masks import _hand_grad
    from xbn.frameworks.registry import load_adapter

    ad = load_adapter(framework_id)
    ad.build(_layer())
    bn = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON)
    x = ops.convert_to_tensor(X.astype(np.float32))
    mask = ops.convert_to_tensor(VALID)
    want = ops.convert_to_numpy(bn(x, training=True, mask=mask))
    got = ad.call_masked(X, True, M)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ad.state()["moving_mean"], ops.convert_to_numpy(bn.moving_mean))
    _assert_select_or_where_mean(ad.state(), got)
    gx, _ = _hand_grad(keras, bn, x, ops.convert_to_tensor(W.astype(np.float32)), mask)
    np.testing.assert_array_equal(ad.grad_masked(X, True, W, M)["grad_input"], gx)
    # select: a masked position's gradient is its own output's term, w * rsqrt(var + eps),
    # finite at NaN and infinite inputs; a valid one sums over the NaN outputs
    _, batch_var = _valid_moments()
    masked = ~VALID
    np.testing.assert_allclose(gx[masked], (W / np.sqrt(batch_var + EPSILON))[masked], rtol=1e-5)
    assert np.isnan(gx[VALID]).all()
    print(f"OK {framework_id}")


if __name__ == "__main__":
    _child(sys.argv[1])
