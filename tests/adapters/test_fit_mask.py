"""``mask = "m"`` on ``fit``: every training batch's statistics masked, and the loss masked as
Keras masks it (the output's mask: the mean over the valid positions).

The reference against a derivation in numpy; Keras 3 (a subprocess per backend) and tf-keras
against the upstream idiom driven by hand, ``Input -> Masking -> BatchNormalization`` compiled
and fit (the adapters hand the mask in as a second model input: the two must agree); Flax
linen against an optax loop written out here. torch, Haiku and Equinox take no mask: n/a.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.adapters.keras_child import run_in_backend

PAD = 7.0  # what Masking(mask_value=PAD) finds and zeroes
T = np.array([[[1.0, 5.0], [2.0, 5.5], [PAD, PAD], [PAD, PAD]],
              [[3.0, 4.0], [0.5, 6.0], [7.5, 3.5], [PAD, PAD]],
              [[-1.0, 4.5], [2.5, 5.0], [1.5, 6.5], [4.0, 5.0]],
              [[0.5, 4.0], [1.5, 5.0], [PAD, PAD], [PAD, PAD]]])
M = np.any(T != PAD, axis=-1).astype(np.float64)  # Masking's mask
X = np.where(M[..., None] != 0, T, 0.0)  # Masking's output: the padding zeroed
LR, EPS, MOMENTUM, EPOCHS, BATCH = 0.01, 1e-3, 0.5, 2, 2


def _layer():
    from xbn.scenario.loader import Layer

    return Layer(features=2, layout="NLC", momentum=MOMENTUM, epsilon=EPS)


def _step(name="sgd"):
    from xbn.scenario.loader import Optimizer, Step

    opt = Optimizer(name=name, lr=LR, rho=0.9 if name == "rmsprop" else None)
    return Step(index=0, op="fit", input="x", target="t", mask="m", epochs=EPOCHS,
                batch_size=BATCH, optimizer=opt)


def _derived():
    """SGD on gamma and beta through a masked BatchNorm (float64 numpy): masked statistics per
    batch, every position normalized, the loss the mean over valid positions of (y - t)^2
    (its gradient 2 (y - t) / (valid * C) there, 0 at masked positions)."""
    gamma, beta, mean_run, var_run = np.ones(2), np.zeros(2), np.zeros(2), np.ones(2)
    for _ in range(EPOCHS):
        losses = []
        for s in range(0, 4, BATCH):
            xb, tb, vb = X[s:s + BATCH], T[s:s + BATCH], M[s:s + BATCH] != 0
            v = xb[vb]
            mu, var = v.mean(0), v.var(0)
            xhat = (xb - mu) / np.sqrt(var + EPS)
            y = xhat * gamma + beta
            diff = np.where(vb[..., None], y - tb, 0.0)
            losses.append((diff**2).sum() / (vb.sum() * 2) * BATCH)
            dy = 2 * diff / (vb.sum() * 2)
            gamma, beta = gamma - LR * (dy * xhat).sum((0, 1)), beta - LR * dy.sum((0, 1))
            mean_run = MOMENTUM * mean_run + (1 - MOMENTUM) * mu
            var_run = MOMENTUM * var_run + (1 - MOMENTUM) * var
    return {"loss": sum(losses) / 4, "gamma": gamma, "beta": beta, "moving_mean": mean_run,
            "moving_variance": var_run}


def test_reference_masked_fit_matches_the_derivation():
    from xbn.adapters.numpy.adapter import NumpyAdapter

    ad = NumpyAdapter("numpy")
    ad.build(_layer())
    loss = ad.fit_masked(X, T, _step(), True, M)
    want = _derived()
    np.testing.assert_allclose(loss, want["loss"], rtol=1e-12)
    for q in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_allclose(ad.state()[q], want[q], rtol=1e-12, err_msg=q)


def test_frameworks_without_a_mask_are_not_applicable_and_untouched():
    from xbn.adapters.base import NotApplicable
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.frameworks.registry import load_adapter
    from xbn.reference.batchnorm import Semantics

    for ad in (load_adapter("torch"), NumpyAdapter("numpy", Semantics(mask="none"))):
        ad.build(_layer())
        with pytest.raises(NotApplicable, match="mask"):
            ad.fit_masked(X, T, _step(), True, M)
        np.testing.assert_array_equal(ad.state()["moving_mean"], [0.0, 0.0])


def test_loader_takes_a_mask_on_fit(write_scenario):
    from xbn.scenario.loader import load

    text = """
schema = 1
name = "f"
[layer]
features = 2
layout = "NLC"
[inputs]
x = [[[1.0, 2.0], [3.0, 5.0]], [[0.5, -1.0], [2.0, 2.0]]]
m = [[1, 1], [1, 0]]
[[steps]]
op = "fit"
input = "x"
target = "x"
mask = "m"
optimizer = { name = "sgd", lr = 0.1 }
"""
    assert load(write_scenario(text)).steps[0].mask == "m"


@pytest.fixture
def _restore_x64():
    import jax

    before = bool(jax.config.jax_enable_x64)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.usefixtures("_restore_x64")
def test_flax_linen_masked_fit_is_an_optax_loop_by_hand():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter("flax")
    ad.build(_layer())
    loss = ad.fit_masked(X, T, _step(), True, M)
    bn = nn.BatchNorm(axis=2, momentum=MOMENTUM, epsilon=EPS)
    x, t = jnp.asarray(X, jnp.float32), jnp.asarray(T, jnp.float32)
    variables = bn.init(jax.random.key(0), x, use_running_average=True)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.sgd(LR)
    opt_state = tx.init(params)

    def loss_fn(p, st, xb, tb, mb):
        y, mut = bn.apply({"params": p, "batch_stats": st}, xb, use_running_average=False,
                          mask=mb[..., None], mutable=["batch_stats"])
        w = jnp.where(mb, mb.size / jnp.sum(mb), 0.0)[..., None]  # Keras' masked loss
        return jnp.mean((y - tb) ** 2 * w), mut["batch_stats"]

    for _ in range(EPOCHS):
        total = 0.0
        for s in range(0, 4, BATCH):
            mb = jnp.asarray(M[s:s + BATCH] != 0)
            (value, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, stats, x[s:s + BATCH], t[s:s + BATCH], mb)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            total += float(value) * BATCH
    np.testing.assert_allclose(loss, total / 4, rtol=1e-6)
    np.testing.assert_array_equal(ad.state()["gamma"], np.asarray(params["scale"]))
    np.testing.assert_array_equal(ad.state()["moving_mean"], np.asarray(stats["mean"]))
    want = _derived()
    np.testing.assert_allclose(ad.state()["beta"], want["beta"], rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # importing TensorFlow: over 10 s
def test_tf_keras_masked_fit_is_the_masking_layer_pipeline():
    import tf_keras

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter("tf-keras")
    ad.build(_layer())
    loss = ad.fit_masked(X, T, _step("rmsprop"), True, M)
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((None, 2))
    bn = tf_keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS)
    model = tf_keras.Model(inputs, bn(tf_keras.layers.Masking(mask_value=PAD)(inputs)))
    model.compile(tf_keras.optimizers.RMSprop(learning_rate=LR, rho=0.9, epsilon=1e-7), "mse")
    history = model.fit(T.astype(np.float32), T.astype(np.float32), batch_size=BATCH,
                        epochs=EPOCHS, shuffle=False, verbose=0)
    assert loss == np.float32(history.history["loss"][-1])
    for q in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(ad.state()[q], getattr(bn, q).numpy(), err_msg=q)


@pytest.mark.slow  # Keras on three backends, each in a process of its own
@pytest.mark.parametrize("framework_id", ["keras", "keras-jax", "keras-torch"])
def test_keras3_masked_fit_is_the_masking_layer_pipeline(framework_id: str) -> None:
    run_in_backend(__file__, framework_id)


def _child(framework_id: str) -> None:
    import keras

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter(framework_id)
    ad.build(_layer())
    loss = ad.fit_masked(X, T, _step("rmsprop"), True, M)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, 2))
    bn = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS)
    model = keras.Model(inputs, bn(keras.layers.Masking(mask_value=PAD)(inputs)))
    model.compile(keras.optimizers.RMSprop(learning_rate=LR, rho=0.9, epsilon=1e-7), "mse")
    history = model.fit(T.astype(np.float32), T.astype(np.float32), batch_size=BATCH,
                        epochs=EPOCHS, shuffle=False, verbose=0)
    np.testing.assert_allclose(loss, history.history["loss"][-1], rtol=1e-6)
    for q in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_allclose(ad.state()[q], keras.ops.convert_to_numpy(getattr(bn, q)),
                                   rtol=1e-6, atol=1e-7, err_msg=q)
    print(f"OK {framework_id}")


if __name__ == "__main__":
    _child(sys.argv[1])
