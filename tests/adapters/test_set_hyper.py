"""``set`` with momentum/epsilon: each adapter against its framework changed by hand.

A user changes a built layer the framework's way (torch/Keras/NNX attributes, Flax linen
``clone`` with the same variables, a rebuilt Haiku transform, a rebuilt Equinox layer); the
adapter must do the same, and must pick the change up exactly when the framework does: a
function the framework already traced (Keras' ``predict_function``) keeps the old value.
Expectations come from the framework driven by hand here, or from the EMA written out.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.adapters.keras_child import run_in_backend
from xbn.frameworks.registry import load_adapter
from xbn.scenario.loader import Layer, Optimizer, Step

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(7)
X = RNG.normal(2.0, 3.0, (4, 3)).astype(np.float32).astype(np.float64)
X2 = RNG.normal(-1.0, 2.0, (4, 3)).astype(np.float32).astype(np.float64)
M2, EPS2 = 0.5, 0.25  # the values a set step gives (Keras convention)
SGD0 = Step(index=0, op="fit", optimizer=Optimizer("sgd", lr=0.0), epochs=1, batch_size=None)


def built(framework_id: str, **layer):
    a = load_adapter(framework_id)
    a.build(Layer(**{"features": 3, "momentum": 0.9, "epsilon": 1e-3, **layer}))
    return a


def equal(value, expected) -> None:
    np.testing.assert_array_equal(np.asarray(value, np.float64),
                                  np.asarray(expected, np.float64))


def equal_state(adapter, expected: dict) -> None:
    got = adapter.state()
    for name, value in expected.items():
        equal(got[name], value)


# ------------------------------------------------------------------------------------- torch


def test_torch_attributes_take_effect_at_the_next_call():
    import torch

    a = built("torch")
    bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-3)
    t = {k: torch.from_numpy(v.astype(np.float32)) for k, v in (("x", X), ("x2", X2))}
    with torch.no_grad():
        a.call(X, True)
        bn(t["x"])
        a.set_hyper(M2, EPS2)
        bn.momentum, bn.eps = 0.5, 0.25  # torch's momentum: the new batch's weight, 1 - 0.5
        equal(a.call(X2, True), bn(t["x2"]))
        assert (a.module.momentum, a.module.eps) == (0.5, 0.25)
        equal_state(a, {"moving_mean": bn.running_mean, "moving_variance": bn.running_var})
        a.set_hyper("cumulative", None)  # momentum=None: the average over num_batches_tracked
        bn.momentum = None
        a.call(X, True)
        bn(t["x"])
    assert a.module.momentum is None
    equal_state(a, {"moving_mean": bn.running_mean, "moving_variance": bn.running_var})
    equal(a.batches_tracked(), bn.num_batches_tracked)


# --------------------------------------------------------------------------- numpy reference


def test_reference_uses_the_new_values_from_the_next_operation():
    """Written out: a plain EMA with 0.9 from (0, 1), then 0.5; inference with the new eps."""
    a = built("numpy", dtype="float64")
    a.call(X, True)
    a.set_hyper(M2, EPS2)
    a.call(X2, True)
    mean = 0.5 * (0.1 * X.mean(0)) + 0.5 * X2.mean(0)
    var = 0.5 * (0.9 + 0.1 * X.var(0)) + 0.5 * X2.var(0)
    np.testing.assert_allclose(a.state()["moving_mean"], mean, rtol=1e-14)
    np.testing.assert_allclose(a.state()["moving_variance"], var, rtol=1e-14)
    np.testing.assert_allclose(a.predict(X), (X - mean) / np.sqrt(var + 0.25), rtol=1e-13)
    a.set_hyper("cumulative", None)
    a.call(X, True)  # the third batch: weight 1/3
    np.testing.assert_allclose(a.state()["moving_mean"], mean * 2 / 3 + X.mean(0) / 3,
                               rtol=1e-14)


# -------------------------------------------------------------------------------------- flax


def test_flax_linen_clone_with_the_same_variables():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    a = built("flax")
    m = nn.BatchNorm(axis=-1, momentum=0.9, epsilon=1e-3, dtype=jnp.float32,
                     param_dtype=jnp.float32)
    v = m.init(jax.random.key(0), jnp.zeros((1, 3)), use_running_average=True)
    a.call(X, True)
    _, upd = m.apply(v, jnp.asarray(X, jnp.float32), use_running_average=False,
                     mutable=["batch_stats"])
    a.set_hyper(M2, EPS2)
    m2 = m.clone(momentum=0.5, epsilon=0.25)
    v = {"params": v["params"], **upd}
    y, upd = m2.apply(v, jnp.asarray(X2, jnp.float32), use_running_average=False,
                      mutable=["batch_stats"])
    equal(a.call(X2, True), y)
    equal_state(a, {"moving_mean": upd["batch_stats"]["mean"],
                    "moving_variance": upd["batch_stats"]["var"]})
    # fit's jitted step is traced for the new module: momentum 0 keeps only the batch mean
    a.fit(X, X, SGD0, True)
    a.set_hyper(0.0, None)
    a.fit(X2, X2, SGD0, False)
    np.testing.assert_allclose(a.state()["moving_mean"], X2.mean(0), rtol=1e-6)


def test_flax_nnx_attributes_are_seen_by_nnx_jit():
    import jax.numpy as jnp
    from flax import nnx

    a = built("flax-nnx")
    bn = nnx.BatchNorm(3, momentum=0.9, epsilon=1e-3, rngs=nnx.Rngs(0))
    a.call(X, True)
    bn(jnp.asarray(X, jnp.float32), use_running_average=False)
    a.set_hyper(M2, EPS2)
    bn.momentum, bn.epsilon = 0.5, 0.25
    equal(a.call(X2, True), bn(jnp.asarray(X2, jnp.float32), use_running_average=False))
    equal_state(a, {"moving_mean": bn.mean[...], "moving_variance": bn.var[...]})

    @nnx.jit
    def train(model, x):  # traced once with momentum 0.5 ...
        return model(x, use_running_average=False)

    train(bn, jnp.asarray(X, jnp.float32))
    bn.momentum = 0.0  # ... and traced again: the attribute is part of the graphdef
    train(bn, jnp.asarray(X2, jnp.float32))
    np.testing.assert_allclose(bn.mean[...], X2.mean(0), rtol=1e-6)
    a.set_hyper(0.0, None)  # the adapter's fit, under nnx.jit, sees it the same way
    a.fit(X2, X2, SGD0, True)
    np.testing.assert_allclose(a.state()["moving_mean"], X2.mean(0), rtol=1e-6)


# ----------------------------------------------------------------------------- haiku, equinox


def test_haiku_rebuilt_transform_on_the_same_params_and_state():
    import haiku as hk
    import jax
    import jax.numpy as jnp

    def transformed(decay, eps):
        return hk.transform_with_state(
            lambda x, is_training: hk.BatchNorm(True, True, decay, eps=eps)(x, is_training))

    a = built("haiku")
    fn = transformed(0.9, 1e-3)
    params, state = fn.init(None, jnp.zeros((1, 3), jnp.float32), True)
    a.call(X, True)
    _, state = jax.jit(fn.apply, static_argnums=4)(params, state, None,
                                                   jnp.asarray(X, jnp.float32), True)
    a.set_hyper(M2, EPS2)
    fn = transformed(0.5, 0.25)
    apply = jax.jit(fn.apply, static_argnums=4)
    y, state = apply(params, state, None, jnp.asarray(X2, jnp.float32), True)
    np.testing.assert_allclose(a.call(X2, True), y, rtol=4e-7, atol=4e-7)
    np.testing.assert_allclose(a.predict(X), apply(params, state, None,
                                                   jnp.asarray(X, jnp.float32), False)[0],
                               rtol=4e-7, atol=4e-7)


def test_equinox_static_fields_rebuilt_layer_keeps_its_state():
    """tree_at refuses a static field; the rebuilt layer continues the EMA (written out:
    mode "ema" seeds with the first batch, then old*m + batch*(1 - m))."""
    import equinox as eqx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer, _ = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", momentum=0.9, mode="ema")
    with pytest.raises(TypeError, match="not a leaf"):
        eqx.tree_at(lambda m: m.momentum, layer, 0.5)
    a = built("equinox")
    a.call(X, True)
    a.set_hyper(M2, EPS2)
    a.call(X2, True)
    mean = 0.5 * X.mean(0) + 0.5 * X2.mean(0)
    var = 0.5 * X.var(0) + 0.5 * X2.var(0)
    np.testing.assert_allclose(a.state()["moving_mean"], mean, rtol=2e-6)
    np.testing.assert_allclose(a.state()["moving_variance"], var, rtol=2e-6)
    np.testing.assert_allclose(a.predict(X), (X - mean) / np.sqrt(var + 0.25), rtol=1e-5,
                               atol=1e-5)
    assert (a.model.momentum, a.model.eps) == (0.5, 0.25)


# -------------------------------------------------------------------------------------- keras


def test_tf_keras_eager_call_sees_it_traced_predict_does_not():
    import tf_keras

    a = built("tf-keras")
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input(shape=(3,))
    bn = tf_keras.layers.BatchNormalization(axis=1, momentum=0.9, epsilon=1e-3)
    model = tf_keras.Model(inputs, bn(inputs))
    x, x2 = X.astype(np.float32), X2.astype(np.float32)
    p0 = model.predict(x, batch_size=4, verbose=0)
    equal(a.predict(X), p0)
    a.call(X, True)
    model(x, training=True)
    a.set_hyper(M2, EPS2)
    bn.momentum, bn.epsilon = 0.5, 0.25
    equal(a.call(X2, True), model(x2, training=True))
    equal_state(a, {"moving_mean": bn.moving_mean.numpy(),
                    "moving_variance": bn.moving_variance.numpy()})
    p1 = model.predict(x, batch_size=4, verbose=0)  # the traced function: old epsilon
    equal(a.predict(X), p1)
    mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    np.testing.assert_allclose(p1, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(x, training=False).numpy(),  # eager: the new epsilon
                               (x - mean) / np.sqrt(var + 0.25), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("framework_id", ["keras"])
def test_keras3_eager_call_sees_it_traced_predict_does_not(framework_id: str) -> None:
    """Keras 3 fixes its backend at import: the check runs in a child process."""
    run_in_backend(__file__, framework_id)


def _keras3_child(framework_id: str) -> None:
    import keras
    from keras import ops

    a = built(framework_id)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(3,))
    bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    model = keras.Model(inputs, bn(inputs))
    x, x2 = X.astype(np.float32), X2.astype(np.float32)
    p0 = model.predict(x, batch_size=4, verbose=0)
    equal(a.predict(X), p0)
    a.call(X, True)
    model(x, training=True)
    a.set_hyper(M2, EPS2)
    bn.momentum, bn.epsilon = 0.5, 0.25
    equal(a.call(X2, True), ops.convert_to_numpy(model(x2, training=True)))
    equal_state(a, {"moving_mean": ops.convert_to_numpy(bn.moving_mean),
                    "moving_variance": ops.convert_to_numpy(bn.moving_variance)})
    p1 = model.predict(x, batch_size=4, verbose=0)
    equal(a.predict(X), p1)
    eager = ops.convert_to_numpy(model(x, training=False))  # the new epsilon
    assert not np.allclose(p1, eager, rtol=1e-4), "predict_function was traced anew"
    print(f"OK {framework_id}")


if __name__ == "__main__":
    _keras3_child(sys.argv[1])
