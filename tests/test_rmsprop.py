"""``optimizer = { name = "rmsprop", lr, rho, eps }`` on ``fit``.

The loader's keys; the reference's two forms (``rmsprop_form``) against a derivation written
out here in numpy; each framework's adapter against that framework's own RMSprop driven by hand
(torch and optax in-process, tf-keras in-process, Keras 3 in a subprocess per backend).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.adapters.keras_child import run_in_backend
from tests.conftest import MINIMAL
from xbn.scenario.loader import ScenarioError, load

X = np.random.default_rng(75).normal(1.0, 2.0, (8, 3)).astype(np.float32).astype(np.float64)
T = np.random.default_rng(76).uniform(-1.0, 1.0, (8, 3)).astype(np.float32).astype(np.float64)
LR, RHO, EPS, MOMENTUM, BN_EPS = 0.01, 0.9, 1e-4, 0.9, 1e-3
FIT = """
[inputs]
x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]
t = [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]
[[steps]]
op = "fit"
input = "x"
target = "t"
optimizer = OPT
"""


def _fit_scenario(write_scenario, optimizer: str):
    text = MINIMAL.split("[inputs]")[0] + FIT.replace("OPT", optimizer)
    return write_scenario(text)


# ------------------------------------------------------------------------------ loading


def test_rmsprop_defaults_and_explicit_values(write_scenario):
    opt = load(_fit_scenario(write_scenario, '{ name = "rmsprop", lr = 0.1 }')).steps[0].optimizer
    assert (opt.name, opt.lr, opt.rho, opt.eps) == ("rmsprop", 0.1, 0.9, 1e-7)
    opt = load(_fit_scenario(write_scenario, '{ name = "rmsprop", lr = 0.1, rho = 0.5, eps = 1e-3 }')
               ).steps[0].optimizer
    assert (opt.rho, opt.eps) == (0.5, 1e-3)


@pytest.mark.parametrize(("optimizer", "fragment"), [
    ('{ name = "adam", lr = 0.1, rho = 0.9 }', "steps[0].optimizer.rho: only meaningful for rmsprop"),
    ('{ name = "rmsprop", lr = 0.1, beta1 = 0.9 }', "steps[0].optimizer.beta1: only meaningful for adam"),
    ('{ name = "sgd", lr = 0.1, eps = 1e-3 }', "steps[0].optimizer.eps: only meaningful for adam and rmsprop"),
    ('{ name = "rmsprop", lr = 0.1, rho = 1.0 }', "steps[0].optimizer.rho: must be in (0, 1), got 1.0"),
    ('{ name = "rmsprop", lr = 0.1, rho = 0.0 }', "steps[0].optimizer.rho: must be > 0"),
    ('{ name = "rmsprop", lr = 0.1, momentum = 0.9 }', "steps[0].optimizer.momentum: rmsprop momentum is not supported yet"),
    ('{ name = "rmsprop", lr = 0.1, centered = true }', "steps[0].optimizer.centered: unknown key"),
    ('{ name = "rmsprp", lr = 0.1 }', "steps[0].optimizer.name: must be one of sgd, adam, rmsprop"),
])
def test_loader_errors_name_file_step_and_key(write_scenario, optimizer, fragment):
    path = _fit_scenario(write_scenario, optimizer)
    with pytest.raises(ScenarioError) as info:
        load(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_rho_is_kept_out_of_other_optimizers_definitions(write_scenario):
    s = load(_fit_scenario(write_scenario, '{ name = "adam", lr = 0.1 }'))
    assert "rho" not in s.to_dict()["steps"][0]["optimizer"]
    r = load(_fit_scenario(write_scenario, '{ name = "rmsprop", lr = 0.1 }'))
    assert r.to_dict()["steps"][0]["optimizer"]["rho"] == 0.9
    from xbn.scenario.loader import Scenario

    assert Scenario.from_dict(r.to_dict()).steps[0].optimizer == r.steps[0].optimizer


# ------------------------------------------------------------------ the reference's forms


def _derived(form: str, batch_size: int = 4, epochs: int = 2) -> dict:
    """Keras-convention BatchNorm (NC, gamma 1, beta 0 to start) trained on MSE by RMSprop in
    numpy: the gradient of mean((y - t)^2) with respect to gamma and beta through the batch
    statistics' x_hat, then v = rho v + (1 - rho) g^2 and g / sqrt(v + eps) or
    g / (sqrt(v) + eps)."""
    gamma, beta = np.ones(3), np.zeros(3)
    v = {"gamma": np.zeros(3), "beta": np.zeros(3)}
    for _ in range(epochs):
        for start in range(0, len(X), batch_size):
            xb, tb = X[start:start + batch_size], T[start:start + batch_size]
            xhat = (xb - xb.mean(0)) / np.sqrt(xb.var(0) + BN_EPS)
            dy = 2 * (xhat * gamma + beta - tb) / tb.size
            grads = {"gamma": (dy * xhat).sum(0), "beta": dy.sum(0)}
            for p, g in grads.items():
                v[p] = RHO * v[p] + (1 - RHO) * g * g
                denominator = np.sqrt(v[p] + EPS) if form == "eps_in_sqrt" else np.sqrt(v[p]) + EPS
                step = LR * g / denominator
                gamma, beta = (gamma - step, beta) if p == "gamma" else (gamma, beta - step)
    return {"gamma": gamma, "beta": beta}


def _step():
    from xbn.scenario.loader import Optimizer, Step

    return Step(index=0, op="fit", input="x", target="t", epochs=2, batch_size=4,
                optimizer=Optimizer(name="rmsprop", lr=LR, eps=EPS, rho=RHO))


def _layer(dtype="float64"):
    from xbn.scenario.loader import Layer

    return Layer(features=3, momentum=MOMENTUM, epsilon=BN_EPS, dtype=dtype)


@pytest.mark.parametrize("form", ["eps_in_sqrt", "eps_outside"])
def test_reference_forms_match_the_derivation(form):
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.reference.batchnorm import Semantics

    ad = NumpyAdapter("numpy", Semantics(rmsprop_form=form))
    ad.build(_layer())
    ad.fit(X, T, _step(), True)
    want = _derived(form)
    for q in ("gamma", "beta"):
        np.testing.assert_allclose(ad.state()[q], want[q], rtol=1e-12, atol=1e-15, err_msg=q)
    # the two placements really differ here (gradients ~0.1: v ~ 1e-3, against eps 1e-4)
    other = _derived("eps_outside" if form == "eps_in_sqrt" else "eps_in_sqrt")
    assert np.max(np.abs(other["beta"] - want["beta"])) > 1e-4


# ----------------------------------------------------------------- frameworks, by hand


def test_torch_adapter_is_torch_rmsprop_by_hand():
    import torch

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter("torch")
    ad.build(_layer("float32"))
    ad.fit(X, T, _step(), True)
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(3, eps=BN_EPS, momentum=1 - MOMENTUM)
    opt = torch.optim.RMSprop(bn.parameters(), lr=LR, alpha=RHO, eps=EPS)
    xt, tt = torch.tensor(X, dtype=torch.float32), torch.tensor(T, dtype=torch.float32)
    for _ in range(2):
        for start in (0, 4):
            opt.zero_grad()
            torch.nn.functional.mse_loss(bn(xt[start:start + 4]), tt[start:start + 4]).backward()
            opt.step()
    np.testing.assert_array_equal(ad.state()["gamma"], bn.weight.detach().numpy())
    np.testing.assert_array_equal(ad.state()["beta"], bn.bias.detach().numpy())
    # eps outside the square root (torch/optim/rmsprop.py), within float32 of the derivation
    np.testing.assert_allclose(bn.bias.detach().numpy(), _derived("eps_outside")["beta"],
                               atol=2e-6)


def test_make_optax_is_optax_rmsprop_with_eps_in_the_square_root():
    import jax.numpy as jnp

    from xbn.adapters._jax.common import make_optax

    tx = make_optax(_step().optimizer)
    g = {"p": jnp.asarray([0.1, -0.02, 3.0], jnp.float32)}
    params = {"p": jnp.zeros(3, jnp.float32)}
    state = tx.init(params)
    updates, state = tx.update(g, state, params)
    gn = np.asarray(g["p"], np.float64)
    v = (1 - RHO) * gn * gn
    np.testing.assert_allclose(np.asarray(updates["p"]), -LR * gn / np.sqrt(v + EPS), rtol=1e-6)


@pytest.mark.slow  # importing TensorFlow: over 10 s
def test_tf_keras_adapter_is_tf_keras_rmsprop_by_hand():
    import tensorflow as tf
    import tf_keras

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter("tf-keras")
    ad.build(_layer("float32"))
    ad.fit(X, T, _step(), True)
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(0)
    bn = tf_keras.layers.BatchNormalization(axis=1, momentum=MOMENTUM, epsilon=BN_EPS)
    inputs = tf_keras.Input(shape=[3])
    model = tf_keras.Model(inputs, bn(inputs))
    model.compile(optimizer=tf_keras.optimizers.RMSprop(learning_rate=LR, rho=RHO, epsilon=EPS),
                  loss="mean_squared_error")
    model.fit(tf.constant(X, tf.float32), tf.constant(T, tf.float32), batch_size=4, epochs=2,
              shuffle=False, verbose=0)
    np.testing.assert_array_equal(ad.state()["gamma"], bn.gamma.numpy())
    np.testing.assert_array_equal(ad.state()["beta"], bn.beta.numpy())
    np.testing.assert_allclose(bn.beta.numpy(), _derived("eps_in_sqrt")["beta"], atol=2e-6)


@pytest.mark.slow  # Keras on three backends, each in a process of its own
@pytest.mark.parametrize("framework_id", ["keras", "keras-jax", "keras-torch"])
def test_keras3_adapter_is_keras_rmsprop_by_hand(framework_id: str) -> None:
    run_in_backend(__file__, framework_id)


def _child(framework_id: str) -> None:
    import keras

    from xbn.frameworks.registry import load_adapter

    ad = load_adapter(framework_id)
    ad.build(_layer("float32"))
    ad.fit(X, T, _step(), True)
    keras.utils.set_random_seed(0)
    bn = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=BN_EPS)
    model = keras.Sequential([keras.Input(shape=(3,)), bn])
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=LR, rho=RHO, epsilon=EPS),
                  loss="mse")
    model.fit(X.astype(np.float32), T.astype(np.float32), batch_size=4, epochs=2, shuffle=False,
              verbose=0)
    for q in ("gamma", "beta"):
        np.testing.assert_allclose(ad.state()[q], keras.ops.convert_to_numpy(getattr(bn, q)),
                                   rtol=1e-6, atol=1e-7, err_msg=q)
    np.testing.assert_allclose(ad.state()["beta"], _derived("eps_in_sqrt")["beta"], atol=2e-6)
    print(f"OK {framework_id}")


if __name__ == "__main__":
    _child(sys.argv[1])
