"""Masks that broadcast (an axis of size 1) and masks over the channel axis (``mask_channels``).

Keras' ``test_masked_broadcast_normalization`` passes a (1, 2, 1) mask for a (1, 2, 3, 4) input;
Flax's NNX/linen equivalence test passes a (5,) mask for a (10, 5) input, which Flax broadcasts
to the input and so masks whole features. The loader's rules; the reference against a
derivation; Flax linen and NNX, tf-keras and Keras 3 (a subprocess per backend) against the
framework driven by hand.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.adapters.keras_child import run_in_backend
from xbn.scenario.loader import ElementMask, ScenarioError, load

X = np.random.default_rng(3).normal(1.0, 2.0, (2, 3, 2, 4)).astype(np.float32).astype(np.float64)
POSITIONS = np.array([[[1], [0], [1]], [[1], [1], [0]]], np.float64)  # [N, H, 1] of NHWC
FEATURES = np.array([[[[1, 0, 1, 1]]]], np.float64)  # [1, 1, 1, C]: features 1 masked
EPS, MOMENTUM = 1e-3, 0.5
SCENARIO = """
schema = 1
name = "b"
[layer]
features = 2
layout = "NLC"
[inputs]
x = [[[1.0, 2.0], [3.0, 5.0], [0.5, 1.5]], [[0.5, -1.0], [2.0, 2.0], [4.0, 1.0]]]
m = MASK
[[steps]]
op = "OP"
input = "x"
mask = "m"
EXTRA
"""


def _load(write_scenario, mask, op="call", extra=""):
    text = SCENARIO.replace("MASK", mask).replace("OP", op).replace("EXTRA", extra)
    if op == "fit":
        text += 'target = "x"\noptimizer = { name = "sgd", lr = 0.1 }\n'
    return load(write_scenario(text))


# ------------------------------------------------------------------------------ loading


@pytest.mark.parametrize(("mask", "extra"), [
    ("[[1], [0]]", ""),  # [N, 1] against [N, L] = [2, 3]
    ("[[1, 0, 1]]", ""),  # [1, L]
    ("[[[1, 0]]]", "mask_channels = true"),  # [1, 1, C]: a feature mask
    ("[[[1, 0], [1, 1], [0, 1]], [[1, 1], [0, 0], [1, 1]]]", "mask_channels = true"),
])
def test_broadcast_and_channel_masks_load(write_scenario, mask, extra):
    step = _load(write_scenario, mask, extra=extra).steps[0]
    assert step.mask == "m" and step.mask_channels == ("mask_channels" in extra)


@pytest.mark.parametrize(("mask", "op", "extra", "fragment"), [
    ("[[1, 0]]", "call", "", "steps[0].mask: a mask has the input's shape without the channel "
     "axis, [2, 3] (an axis may be 1: broadcast); input 'm' has shape [1, 2]"),
    ("[1, 0, 1]", "call", "", "input 'm' has shape [3]"),  # a lower rank is refused
    ("[[1, 0, 1]]", "call", "mask_channels = true", "steps[0].mask: a mask has the input's "
     "shape, [2, 3, 2]"),
    ("[[1, 0, 1]]", "call", "mask_channels = 1", "steps[0].mask_channels: expected true or false"),
    ("[[[1, 0]]]", "fit", "mask_channels = true", "steps[0].mask_channels: a mask over the "
     "channel axis is not supported on fit yet"),
    ("[[1, 0, 1]]", "fit", "", "steps[0].mask: a mask on fit is sliced with the mini-batches"),
])
def test_loader_errors_name_file_step_and_key(write_scenario, mask, op, extra, fragment):
    with pytest.raises(ScenarioError) as info:
        _load(write_scenario, mask, op, extra)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_mask_channels_needs_a_mask(write_scenario):
    text = SCENARIO.replace("m = MASK\n", "").replace("OP", "call").replace(
        'mask = "m"\n', "").replace("EXTRA", "mask_channels = true")
    with pytest.raises(ScenarioError, match="steps\\[0\\].mask_channels: only meaningful with mask"):
        load(write_scenario(text))


# ----------------------------------------------------------------------- the reference


def _layer(layout="NHWC"):
    from xbn.scenario.loader import Layer

    return Layer(features=4, layout=layout, momentum=MOMENTUM, epsilon=EPS)


def _derived(valid: np.ndarray, empty=0.0):
    """Per channel c: the mean and biased variance of X[..., c] where ``valid[..., c]``; a
    channel with no valid element gets ``empty``; every element normalized."""
    mean, var = np.full(4, empty), np.full(4, empty)
    for c in range(4):
        v = X[..., c][valid[..., c]]
        if v.size:
            mean[c], var[c] = v.mean(), v.var()
    return {"output": (X - mean) / np.sqrt(var + EPS), "moving_mean": (1 - MOMENTUM) * mean,
            "moving_variance": MOMENTUM + (1 - MOMENTUM) * var}


@pytest.mark.parametrize("kind", ["positions", "features"])
def test_reference_matches_the_derivation(kind):
    from xbn.adapters.numpy.adapter import NumpyAdapter

    mask = POSITIONS if kind == "positions" else FEATURES.view(ElementMask)
    valid = np.broadcast_to(POSITIONS[..., None] != 0 if kind == "positions" else FEATURES != 0,
                            X.shape)
    ad = NumpyAdapter("numpy")
    ad.build(_layer())
    got = ad.call_masked(X, True, mask)
    want = _derived(valid)
    np.testing.assert_allclose(got, want["output"], rtol=1e-12)
    for q in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(ad.state()[q], want[q], rtol=1e-12, err_msg=q)


def test_reference_feature_mask_gradient_matches_central_differences():
    from xbn.adapters.numpy.adapter import NumpyAdapter

    mask = np.ones(X.shape) * np.array([1, 0, 1, 1])  # feature 1 wholly masked
    mask[0, 1, :, 2] = 0  # and two elements of feature 2
    w = np.random.default_rng(4).uniform(-1, 1, X.shape)
    ad = NumpyAdapter("numpy")
    ad.build(_layer())
    got = ad.grad_masked(X, True, w, mask.view(ElementMask))["grad_input"]
    valid = mask != 0

    def objective(xx):
        out = np.empty_like(xx)
        for c in range(4):
            v = xx[..., c][valid[..., c]]
            out[..., c] = (xx[..., c] - v.mean()) / np.sqrt(v.var() + EPS) if v.size else \
                xx[..., c] / np.sqrt(EPS)
        return (out * w).sum()

    numeric = np.zeros_like(X)
    for idx in np.ndindex(X.shape):
        e = np.zeros_like(X)
        e[idx] = 1e-6
        numeric[idx] = (objective(X + e) - objective(X - e)) / 2e-6
    np.testing.assert_allclose(got, numeric, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------- Flax, by hand


@pytest.fixture
def _restore_x64():
    import jax

    before = bool(jax.config.jax_enable_x64)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.usefixtures("_restore_x64")
@pytest.mark.parametrize("kind", ["positions", "features"])
def test_flax_linen_and_nnx_broadcast_the_mask_as_by_hand(kind):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from xbn.frameworks.registry import load_adapter

    mask = POSITIONS if kind == "positions" else FEATURES.view(ElementMask)
    flax_mask = jnp.asarray(POSITIONS[..., None] != 0 if kind == "positions" else FEATURES != 0)
    x = jnp.asarray(X, jnp.float32)
    bn = nn.BatchNorm(axis=3, momentum=MOMENTUM, epsilon=EPS)
    variables = bn.init(jax.random.key(0), x, use_running_average=True)
    y, mutated = bn.apply(variables, x, use_running_average=False, mask=flax_mask,
                          mutable=["batch_stats"])
    linen = load_adapter("flax")
    linen.build(_layer())
    np.testing.assert_array_equal(linen.call_masked(X, True, mask), np.asarray(y))
    np.testing.assert_array_equal(linen.state()["moving_mean"], mutated["batch_stats"]["mean"])
    module = nnx.BatchNorm(4, momentum=MOMENTUM, epsilon=EPS, axis=3, rngs=nnx.Rngs(0))
    want = module(x, use_running_average=False, mask=flax_mask)
    ad = load_adapter("flax-nnx")
    ad.build(_layer())
    np.testing.assert_array_equal(ad.call_masked(X, True, mask), np.asarray(want))
    if kind == "features":  # a wholly masked feature: 0/0 = NaN
        assert np.isnan(np.asarray(want)[..., 1]).all()
        assert np.isnan(ad.state()["moving_mean"][1])


# ---------------------------------------------------------------- the Keras family, by hand


@pytest.mark.slow  # importing TensorFlow: over 10 s
def test_tf_keras_broadcast_mask_and_no_channel_mask():
    import tensorflow as tf
    import tf_keras

    from xbn.adapters.base import NotApplicable
    from xbn.frameworks.registry import load_adapter

    x, m = X[:, :, 0, :], np.array([[1, 0, 1]], np.float64)  # NLC [2, 3, 4]; mask [1, 3]
    layer = _layer("NLC")
    ad = load_adapter("tf-keras")
    ad.build(layer)
    bn = tf_keras.layers.BatchNormalization(axis=2, momentum=MOMENTUM, epsilon=EPS)
    inputs = tf_keras.Input(shape=[None, 4])
    model = tf_keras.Model(inputs, bn(inputs))
    want = model(tf.constant(x, tf.float32), training=True, mask=tf.constant(m != 0)).numpy()
    np.testing.assert_array_equal(ad.call_masked(x, True, m), want)
    np.testing.assert_array_equal(ad.state()["moving_mean"], bn.moving_mean.numpy())
    with pytest.raises(NotApplicable, match="over the channel axis whose last axis is not 1"):
        ad.call_masked(x, True, np.ones((1, 1, 4)).view(ElementMask))


@pytest.mark.slow  # Keras on three backends, each in a process of its own
@pytest.mark.parametrize("framework_id", ["keras", "keras-jax", "keras-torch"])
def test_keras3_broadcast_mask_and_no_channel_mask(framework_id: str) -> None:
    run_in_backend(__file__, framework_id)


def _child(framework_id: str) -> None:
    import keras
    from keras import ops

    from xbn.adapters.base import NotApplicable
    from xbn.frameworks.registry import load_adapter

    ad = load_adapter(framework_id)
    ad.build(_layer())
    bn = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS)
    x = ops.convert_to_tensor(X.astype(np.float32))
    want = ops.convert_to_numpy(bn(x, training=True, mask=ops.convert_to_tensor(POSITIONS != 0)))
    np.testing.assert_array_equal(ad.call_masked(X, True, POSITIONS), want)
    np.testing.assert_array_equal(ad.state()["moving_mean"], ops.convert_to_numpy(bn.moving_mean))
    np.testing.assert_allclose(want, _derived(np.broadcast_to(POSITIONS[..., None] != 0, X.shape))
                               ["output"], rtol=1e-5, atol=1e-5)
    try:
        ad.call_masked(X, True, FEATURES.view(ElementMask))
        raise AssertionError("a mask over the channel axis should be n/a in Keras")
    except NotApplicable as exc:
        assert "whose last axis is not 1" in str(exc)
    print(f"OK {framework_id}")


if __name__ == "__main__":
    _child(sys.argv[1])
