"""``mask = "m"``: each framework's own mask argument, against the framework driven by hand.

Expectations come from the framework called directly (Keras 3 on each backend in its own
subprocess, as tests/adapters/test_keras.py does; tf-keras and Flax in-process) or, for the
reference, from a derivation written out here in plain numpy. Nothing here skips: a missing
framework fails.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

from tests.adapters.keras_child import run_in_backend

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(11)
# NLC: 3 sequences of 4 steps, 2 channels; padding (mask 0) filled with a large value
X = RNG.normal(1.0, 2.0, (3, 4, 2)).astype(np.float32).astype(np.float64)
X[0, 2:] = 40.0
X[1, 3] = 40.0
M = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], np.float64)
W = RNG.uniform(-1.0, 1.0, X.shape).astype(np.float32).astype(np.float64)
MOMENTUM, EPSILON = 0.5, 1e-3


def _layer(layout="NLC", dtype="float32", **kw):
    from xbn.scenario.loader import Layer

    return Layer(features=2, layout=layout, momentum=MOMENTUM, epsilon=EPSILON, dtype=dtype,
                 **kw)


# ------------------------------------------------------------------- the reference, by hand


def _derived(x, mask, empty="zero"):
    """Masked BatchNorm written out in numpy (channels last, gamma 1, beta 0): statistics of
    the valid positions only, every position normalized, running statistics fed them; the
    gradient of sum(y * w) by central differences of this same formula."""
    valid = mask.astype(bool)

    def forward(xx):
        v = xx[valid]
        if v.shape[0] == 0:
            mu = var = np.full(xx.shape[-1], 0.0 if empty == "zero" else np.nan)
        else:
            mu, var = v.mean(axis=0), ((v - v.mean(axis=0)) ** 2).mean(axis=0)
        return (xx - mu) / np.sqrt(var + EPSILON), mu, var

    y, mu, var = forward(x)
    return {"output": y, "moving_mean": MOMENTUM * 0.0 + (1 - MOMENTUM) * mu,
            "moving_variance": MOMENTUM * 1.0 + (1 - MOMENTUM) * var, "forward": forward}


def _numeric_grad(forward, x, w, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = ((forward(x + e)[0] * w).sum() - (forward(x - e)[0] * w).sum()) / (2 * h)
    return g


def test_reference_masked_statistics_match_the_derivation():
    from xbn.frameworks.registry import load_adapter

    ref = load_adapter("numpy")
    ref.build(_layer(dtype="float64"))
    want = _derived(X, M)
    got = ref.grad_masked(X, True, W, M)
    np.testing.assert_allclose(got["output"], want["output"], rtol=1e-12, atol=1e-12)
    state = ref.state()
    for q in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(state[q], want[q], rtol=1e-12, err_msg=q)
    np.testing.assert_allclose(got["grad_input"], _numeric_grad(want["forward"], X, W),
                               rtol=1e-6, atol=1e-7)
    # masked positions: normalized, not passed through; their inputs do not move the statistics
    assert abs(got["output"][0, 3, 0]) > 10
    np.testing.assert_allclose(got["grad_beta"], W.sum(axis=(0, 1)), rtol=1e-12)
    # inference: the running statistics; the mask changes nothing
    np.testing.assert_array_equal(ref.predict_masked(X, M), ref.predict(X))


def test_reference_fully_masked_batch_per_switch():
    from xbn.adapters.base import NotApplicable
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.reference.batchnorm import Semantics

    zero = np.zeros_like(M)
    for rule, empty in (("weighted", "zero"), ("weighted_nan", "nan")):
        ref = NumpyAdapter("numpy", Semantics(mask=rule))
        ref.build(_layer(dtype="float64"))
        want = _derived(X, zero, empty)
        np.testing.assert_allclose(ref.call_masked(X, True, zero), want["output"], rtol=1e-12)
        state = ref.state()
        np.testing.assert_allclose(state["moving_variance"], want["moving_variance"])
    ref = NumpyAdapter("numpy", Semantics(mask="none"))
    ref.build(_layer())
    with pytest.raises(NotApplicable, match="takes no mask"):
        ref.call_masked(X, True, M)
    # weighted_unfused: tf-keras' fused kernel (4-D float32) ignores the mask; NLC honours it
    x4, m4 = X.reshape(3, 4, 1, 2), M.reshape(3, 4, 1)
    ref = NumpyAdapter("numpy", Semantics(mask="weighted_unfused"))
    ref.build(_layer("NHWC"))
    plain = NumpyAdapter("numpy", Semantics(mask="weighted_unfused"))
    plain.build(_layer("NHWC"))
    np.testing.assert_array_equal(ref.call_masked(x4, True, m4), plain.call(x4, True))
    ref.build(_layer("NLC", dtype="float64"))
    np.testing.assert_allclose(ref.call_masked(X, True, M), _derived(X, M)["output"],
                               rtol=1e-12)


# ---------------------------------------------------------------------------- the loader

BASE = """
schema = 1
name = "t"
[layer]
features = 2
layout = "NLC"
[inputs]
x = [[[1.0, 2.0], [3.0, 5.0]], [[0.5, -1.0], [2.0, 2.0]]]
t = [[[1.0, 2.0], [3.0, 5.0]], [[0.5, -1.0], [2.0, 2.0]]]
m = MASK
[[steps]]
op = "OP"
input = "x"
mask = "m"
"""


@pytest.mark.parametrize(("mask", "op", "fragment"), [
    ("[[1, 1, 0], [1, 0, 1]]", "call", "steps[0].mask: a mask has the input's shape without "
                                       "the channel axis, [2, 2]"),
    ("[[1, 2], [1, 0]]", "call", "steps[0].mask: input 'm' must hold only 0 and 1"),
    ("[[1, 0.5], [1, 0]]", "grad", "steps[0].mask: input 'm' must hold only 0 and 1"),
    ("[[1, 1, 1], [1, 0, 1]]", "fit", "steps[0].mask: a mask has the input's shape without "
                                      "the channel axis, [2, 2]"),
])
def test_loader_errors_name_file_step_and_key(write_scenario, mask, op, fragment):
    from xbn.scenario.loader import ScenarioError, load

    text = BASE.replace("MASK", mask).replace("OP", op)
    if op == "grad":
        text += 'weights = "t"\n'
    if op == "fit":
        text += 'target = "t"\noptimizer = { name = "sgd", lr = 0.1 }\n'
    path = write_scenario(text)
    with pytest.raises(ScenarioError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert fragment in message, message


def test_builtin_mask_scenarios_load_with_masks():
    from xbn.scenario.loader import load

    for name in ("mask-statistics", "mask-fully-masked"):
        sc = load(ROOT / "xbn" / "scenarios" / f"{name}.toml")
        assert any(s.mask for s in sc.steps), name


# ------------------------------------------------------------------------- flax, by hand


@pytest.fixture
def _restore_x64():
    import jax

    before = bool(jax.config.jax_enable_x64)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.usefixtures("_restore_x64")
def test_flax_linen_masked_call_grad_predict_match_by_hand():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter("flax")
    ad.build(_layer())
    bn = nn.BatchNorm(axis=2, momentum=MOMENTUM, epsilon=EPSILON)
    x, w = jnp.asarray(X, jnp.float32), jnp.asarray(W, jnp.float32)
    mask = jnp.asarray(M.astype(bool))[..., None]  # broadcastable to the input
    variables = bn.init(jax.random.key(0), x, use_running_average=True)
    y, mutated = bn.apply(variables, x, use_running_average=False, mask=mask,
                          mutable=["batch_stats"])
    np.testing.assert_array_equal(ad.call_masked(X, True, M), np.asarray(y))
    np.testing.assert_array_equal(ad.state()["moving_mean"], mutated["batch_stats"]["mean"])
    variables = {"params": variables["params"], "batch_stats": mutated["batch_stats"]}

    def objective(xv, params):
        out, st = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, xv,
                           use_running_average=False, mask=mask, mutable=["batch_stats"])
        return jnp.sum(out * w), st

    (gx, gp), st = jax.grad(objective, argnums=(0, 1), has_aux=True)(x, variables["params"])
    got = ad.grad_masked(X, True, W, M)
    np.testing.assert_array_equal(got["grad_input"], np.asarray(gx))
    np.testing.assert_array_equal(got["grad_gamma"], np.asarray(gp["scale"]))
    np.testing.assert_array_equal(ad.state()["moving_variance"], st["batch_stats"]["var"])
    variables = {"params": variables["params"], "batch_stats": st["batch_stats"]}
    want = bn.apply(variables, x, use_running_average=True, mask=mask)
    np.testing.assert_array_equal(ad.predict_masked(X, M), np.asarray(want))
    # a fully masked batch: 0/0 in jnp.mean(where=) is NaN, in the outputs and the statistics
    assert np.isnan(ad.call_masked(X, True, np.zeros_like(M))).all()
    assert np.isnan(ad.state()["moving_mean"]).all()


@pytest.mark.usefixtures("_restore_x64")
def test_flax_nnx_masked_call_and_grad_match_by_hand():
    import jax.numpy as jnp
    from flax import nnx

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter("flax-nnx")
    ad.build(_layer())
    bn = nnx.BatchNorm(2, momentum=MOMENTUM, epsilon=EPSILON, axis=2, rngs=nnx.Rngs(0))
    x, w = jnp.asarray(X, jnp.float32), jnp.asarray(W, jnp.float32)
    mask = jnp.asarray(M.astype(bool))[..., None]
    want = bn(x, use_running_average=False, mask=mask)
    np.testing.assert_array_equal(ad.call_masked(X, True, M), np.asarray(want))
    np.testing.assert_array_equal(ad.state()["moving_variance"], np.asarray(bn.var[...]))

    def objective(model, xv):
        return jnp.sum(model(xv, use_running_average=False, mask=mask) * w)

    gp, gx = nnx.grad(objective, argnums=(nnx.DiffState(0, nnx.Param), 1))(bn, x)
    got = ad.grad_masked(X, True, W, M)
    np.testing.assert_array_equal(got["grad_input"], np.asarray(gx))
    np.testing.assert_array_equal(got["grad_beta"], np.asarray(gp["bias"][...]))
    np.testing.assert_array_equal(ad.state()["moving_mean"], np.asarray(bn.mean[...]))


# ---------------------------------------------------------------------- tf-keras, by hand


def _tf_keras_by_hand(layout, features=2):
    import tf_keras

    from xbn.scenario.loader import LAYOUTS, channel_axis

    axis = channel_axis(layout)
    bn = tf_keras.layers.BatchNormalization(axis=axis, momentum=MOMENTUM, epsilon=EPSILON)
    shape = [None] * (LAYOUTS[layout] - 1)
    shape[axis - 1] = features
    inputs = tf_keras.Input(shape=shape)
    return tf_keras.Model(inputs, bn(inputs)), bn


@pytest.mark.parametrize("layout", ["NLC", "NHWC"])
def test_tf_keras_masked_call_and_grad_match_by_hand(layout):
    import tensorflow as tf

    from xbn.adapters.base import NotApplicable
    from xbn.frameworks.registry import load_adapter

    x, m = (X, M) if layout == "NLC" else (X.reshape(3, 4, 1, 2), M.reshape(3, 4, 1))
    ad = load_adapter("tf-keras")
    ad.build(_layer(layout))
    model, bn = _tf_keras_by_hand(layout)
    xt, mt = tf.constant(x, tf.float32), tf.constant(m.astype(bool))
    np.testing.assert_array_equal(ad.call_masked(x, True, m),
                                  model(xt, training=True, mask=mt).numpy())
    np.testing.assert_array_equal(ad.state()["moving_mean"], bn.moving_mean.numpy())
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt, training=True, mask=mt)
        total = tf.reduce_sum(y * tf.constant(W.reshape(x.shape), tf.float32))
    gx, gg = tape.gradient(total, [xt, bn.gamma])
    got = ad.grad_masked(x, True, W.reshape(x.shape), m)
    np.testing.assert_array_equal(got["grad_input"], gx.numpy())
    np.testing.assert_array_equal(got["grad_gamma"], gg.numpy())
    with pytest.raises(NotApplicable, match="predict"):
        ad.predict_masked(x, m)
    # what tf-keras did with the mask: NLC (tf.nn.weighted_moments) honours it; the fused
    # 4-D kernel ignores it (and warns, which the adapter keeps in its notes)
    valid = x.reshape(-1, 2)[m.reshape(-1) != 0]
    fresh = load_adapter("tf-keras")
    fresh.build(_layer(layout))
    fresh.call_masked(x, True, m)
    if layout == "NLC":
        np.testing.assert_allclose(fresh.state()["moving_mean"],
                                   (1 - MOMENTUM) * valid.mean(axis=0), rtol=1e-6)
    else:
        np.testing.assert_allclose(fresh.state()["moving_mean"],
                                   (1 - MOMENTUM) * x.reshape(-1, 2).mean(axis=0), rtol=1e-6)
        assert any("Masking is not supported with `fused=True`" in n for n in fresh.notes)


# ---------------------------------------------------------- frameworks that take no mask


def test_torch_reports_not_applicable_through_the_driver():
    from xbn.adapters.base import run_scenario
    from xbn.frameworks.registry import load_adapter
    from xbn.scenario.loader import load

    sc = load(ROOT / "xbn" / "scenarios" / "mask-statistics.toml")
    rows = list(run_scenario(load_adapter("torch"), sc))
    masked = [r for r in rows if sc.steps[r["step"]].mask and r["quantity"] == "output"]
    assert masked and all(r["status"] == "n/a" and "takes no mask" in r["message"]
                          for r in masked)
    unmasked = [r for r in rows if not sc.steps[r["step"]].mask and r["quantity"] == "output"]
    assert unmasked and all(r["status"] == "ok" for r in unmasked)


# ------------------------------------------------------- Keras 3: one subprocess per backend


@pytest.mark.slow  # Keras on three backends, each in a process of its own
@pytest.mark.parametrize("framework_id", ["keras", "keras-jax", "keras-torch"])
def test_keras3_masked_call_and_grad_match_by_hand(framework_id: str) -> None:
    run_in_backend(__file__, framework_id)


def _hand_grad(keras, bn, x, w, mask):
    """d sum(bn(x, training=True, mask) * w) / dx and / gamma with the backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(bn(x, training=True, mask=mask) * w)
        return [g.numpy() for g in tape.gradient(total, [x, bn.gamma.value])]
    if backend == "jax":
        import jax

        trainable = [v.value for v in bn.trainable_variables]
        others = [v.value for v in bn.non_trainable_variables]

        def objective(t, xv):
            out, _ = bn.stateless_call(t, others, xv, training=True, mask=mask)
            return jax.numpy.sum(out * w)

        gt, gx = jax.grad(objective, argnums=(0, 1))(trainable, x)
        return [np.asarray(gx), np.asarray(gt[0])]
    import torch

    xv = x.detach().clone().requires_grad_(True)
    total = torch.sum(bn(xv, training=True, mask=mask) * w)
    return [g.detach().numpy() for g in torch.autograd.grad(total, [xv, bn.gamma.value])]


def _child(framework_id: str) -> None:
    import keras
    from keras import ops

    from xbn.adapters.base import NotApplicable
    from xbn.frameworks.registry import load_adapter

    ad = load_adapter(framework_id)
    ad.build(_layer())
    keras.utils.set_random_seed(0)
    bn = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON)
    x = ops.convert_to_tensor(X.astype(np.float32))
    w = ops.convert_to_tensor(W.astype(np.float32))
    mask = ops.convert_to_tensor(M.astype(bool))
    want = ops.convert_to_numpy(bn(x, training=True, mask=mask))
    np.testing.assert_array_equal(ad.call_masked(X, True, M), want)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_array_equal(ad.state()[name], ops.convert_to_numpy(getattr(bn, name)))
    gx, gg = _hand_grad(keras, bn, x, w, mask)
    got = ad.grad_masked(X, True, W, M)
    np.testing.assert_allclose(got["grad_input"], gx, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["grad_gamma"], gg, rtol=1e-6, atol=1e-6)
    try:
        ad.predict_masked(X, M)
        raise AssertionError("predict with a mask should be n/a")
    except NotApplicable:
        pass
    # a fully masked batch: mean 0 and variance 0 (count 0 + backend.epsilon()): x/sqrt(eps)
    fresh = load_adapter(framework_id)
    fresh.build(_layer())
    out = fresh.call_masked(X, True, np.zeros_like(M))
    np.testing.assert_allclose(out, X / np.sqrt(EPSILON), rtol=1e-5)
    np.testing.assert_array_equal(fresh.state()["moving_variance"], [MOMENTUM, MOMENTUM])
    # channels first: Keras broadcasts expand_dims(mask, -1) against the input, which fails
    # by hand (a Keras mask is the input's shape without its last axis), so the adapter says
    # n/a: a mask of positions has no Keras form on a channels-first layer
    by_hand = keras.layers.BatchNormalization(axis=1, momentum=MOMENTUM, epsilon=EPSILON)
    try:
        by_hand(ops.convert_to_tensor(np.moveaxis(X, 2, 1)), training=True, mask=mask)
        raise AssertionError("a channels-first mask should fail in Keras' broadcast")
    except AssertionError:
        raise
    except Exception as exc:  # the framework's own broadcast error, raised in its code
        frames = traceback.extract_tb(exc.__traceback__)
        assert "site-packages" in frames[-1].filename, repr(exc)
    ncl = load_adapter(framework_id)
    ncl.build(_layer("NCL"))
    try:
        ncl.call_masked(np.moveaxis(X, 2, 1), True, M)
        raise AssertionError("a channels-first mask of positions should be n/a")
    except NotApplicable as exc:
        assert "channels-first" in str(exc)
    print(f"OK {framework_id}")


if __name__ == "__main__":
    _child(sys.argv[1])
