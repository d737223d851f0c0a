"""The haiku and equinox adapters against their frameworks driven by hand (not through xbn)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import equinox as eqx
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xbn.adapters.base import NotApplicable, run_scenario, to_channels_first
from xbn.frameworks.registry import load_adapter
from xbn.scenario.loader import Layer, Optimizer, Scenario, Step

RNG = np.random.default_rng(0)
X = RNG.normal(2.0, 3.0, (4, 2, 2, 3)).astype(np.float32).astype(np.float64)  # NHWC
X2 = RNG.normal(-1.0, 1.0, (4, 2, 2, 3)).astype(np.float32).astype(np.float64)
W = RNG.uniform(-1.0, 1.0, (4, 2, 2, 3)).astype(np.float32).astype(np.float64)
ADAM = Optimizer("adam", lr=0.01, beta1=0.9, beta2=0.999, eps=1e-7)


def f32(a):
    return jnp.asarray(a, jnp.float32)


def fit_step(optimizer=ADAM, epochs=2, batch_size=3) -> Step:
    return Step(index=0, op="fit", input="x", target="w", optimizer=optimizer, epochs=epochs,
                batch_size=batch_size)


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=tol, atol=tol)


def assert_close(actual, desired, **kw):
    """The adapters jit their steps as Haiku and Equinox users do; XLA's fused kernels may
    round an ulp differently from the eager reference run here, never more."""
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(desired, np.float64),
                               rtol=4e-7, atol=4e-7, **kw)


# ------------------------------------------------------------------------------------- haiku


def haiku_by_hand(**kwargs):
    def forward(x, is_training):
        return hk.BatchNorm(**kwargs)(x, is_training)

    fn = hk.transform_with_state(forward)
    params, state = fn.init(None, jnp.zeros((1, 1, 1, 3), jnp.float32), True)
    # jitted, as Haiku users (and the adapter) run it
    jitted = SimpleNamespace(init=fn.init, apply=jax.jit(fn.apply, static_argnums=(4,)))
    return jitted, params, state


HK_KW = dict(create_scale=True, create_offset=True, decay_rate=0.9, eps=1e-3)


def haiku_adapter(**changes):
    ad = load_adapter("haiku")
    ad.build(Layer(**{"features": 3, "layout": "NHWC", "momentum": 0.9, "epsilon": 1e-3,
                      **changes}))
    return ad


def test_haiku_calls_and_state_match_by_hand():
    ad = haiku_adapter()
    fn, params, state = haiku_by_hand(**HK_KW)
    y1 = ad.call(X, True)
    e1, state = fn.apply(params, state, None, f32(X), True)
    ad.call(X2, True)
    _, state = fn.apply(params, state, None, f32(X2), True)
    assert_close(y1, e1)
    assert_close(ad.predict(X), fn.apply(params, state, None, f32(X), False)[0])
    got = ad.state()
    # moving stats are the debiased EMA 'average', which the layer uses at inference
    assert_close(got["moving_mean"],
                                  state["batch_norm/~/mean_ema"]["average"].reshape(-1))
    assert_close(got["moving_variance"],
                                  state["batch_norm/~/var_ema"]["average"].reshape(-1))
    # after one step the debiased average equals the first batch's statistics (float32)
    ad2 = haiku_adapter()
    ad2.call(X, True)
    x2d = X.reshape(-1, 3)
    close(ad2.state()["moving_mean"], x2d.mean(0), 1e-5)
    close(ad2.state()["moving_variance"], x2d.var(0), 1e-5)


def test_haiku_channels_first_uses_data_format():
    ad = load_adapter("haiku")
    ad.build(Layer(features=3, layout="NCHW", momentum=0.9, epsilon=1e-3))
    xc = to_channels_first(X, "NHWC")

    def forward(x, is_training):
        return hk.BatchNorm(data_format="channels_first", **HK_KW)(x, is_training)

    fn = hk.transform_with_state(forward)
    params, state = fn.init(None, jnp.zeros((1, 3, 1, 1), jnp.float32), True)
    assert_close(ad.call(xc, True),
                                  fn.apply(params, state, None, f32(xc), True)[0])


def test_haiku_fit_and_grad_match_by_hand():
    ad = haiku_adapter()
    fn, params, state = haiku_by_hand(**HK_KW)
    loss = ad.fit(X, W, fit_step(), fresh_optimizer=True)

    tx = optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-7)
    opt_state = tx.init(params)

    def loss_fn(p, s, xb, tb):
        y, s = fn.apply(p, s, None, xb, True)
        return jnp.mean((y - tb) ** 2), s

    for _ in range(2):
        losses = []
        for sl in (slice(0, 3), slice(3, 4)):
            (lv, state), g = jax.value_and_grad(loss_fn, has_aux=True)(
                params, state, f32(X[sl]), f32(W[sl]))
            updates, opt_state = tx.update(g, opt_state, params)
            params = optax.apply_updates(params, updates)
            losses.append(float(lv) * (sl.stop - sl.start))
    close(loss, sum(losses) / 4)
    assert_close(ad.state()["gamma"], params["batch_norm"]["scale"].reshape(-1))
    assert_close(ad.state()["moving_variance"],
                                  state["batch_norm/~/var_ema"]["average"].reshape(-1))

    out = ad.grad(X, True, W)

    def objective(p, x):
        y, _ = fn.apply(p, state, None, x, True)
        return jnp.sum(y * f32(W))

    gp, gx = jax.grad(objective, argnums=(0, 1))(params, f32(X))
    assert_close(out["grad_input"], gx)
    assert_close(out["grad_gamma"], gp["batch_norm"]["scale"].reshape(-1))
    assert_close(out["grad_beta"], gp["batch_norm"]["offset"].reshape(-1))


def test_haiku_frozen_bare_defaults_and_set_weights():
    ad = haiku_adapter()
    ad.set_trainable(False)
    before = ad.state()
    ad.fit(X, W, fit_step(Optimizer("sgd", lr=0.1)), fresh_optimizer=True)
    after = ad.state()
    assert_close(after["gamma"], before["gamma"])
    assert not np.array_equal(after["moving_mean"], before["moving_mean"])  # still training
    assert "grad_gamma_reason" in ad.grad(X, True, W)
    with pytest.raises(TypeError, match="is_training"):
        ad.call(X, None)  # haiku has no default for is_training
    with pytest.raises(NotApplicable):
        ad.set_mode("eval")
    with pytest.raises(NotApplicable, match="decay_rate"):
        haiku_adapter(defaults=True)
    for bad in (dict(track_running_stats=False), dict(momentum="cumulative")):
        with pytest.raises(NotApplicable):
            haiku_adapter(**bad)
    native = haiku_adapter(defaults=True, native={"haiku": {"decay_rate": 0.5}})
    assert native.kwargs == {"create_scale": True, "create_offset": True, "decay_rate": 0.5}

    ad = haiku_adapter()
    ad.call(X, True)
    ad.set_weights({"gamma": np.full(3, 2.0), "moving_mean": np.ones(3),
                    "moving_variance": np.full(3, 4.0)})
    assert ad.state()["moving_mean"].tolist() == [1.0] * 3
    close(ad.predict(X), (X - 1.0) / np.sqrt(4.0 + 1e-3) * 2.0, 1e-5)


def test_haiku_float16_stays_float16():
    ad = load_adapter("haiku")
    ad.build(Layer(features=3, layout="NHWC", momentum=0.9, epsilon=1e-3, dtype="float16"))
    assert ad.call(X, True).dtype == np.float16
    assert ad.state()["moving_variance"].dtype == np.float16


def test_haiku_mixed_precision_is_a_jmp_policy_for_batchnorm():
    """float16 inputs, param_dtype float32: Haiku's mixed-precision policy for hk.BatchNorm
    (float32 parameters and computations, float16 output), as built by hand."""
    import jmp

    x16 = np.asarray(X, np.float16).astype(np.float64)
    ad = haiku_adapter(dtype="float16", param_dtype="float32")
    got = ad.call(x16, True)
    state = ad.state()
    hk.mixed_precision.set_policy(hk.BatchNorm, jmp.Policy(
        param_dtype=jnp.float32, compute_dtype=jnp.float32, output_dtype=jnp.float16))
    try:
        fn, params, hstate = haiku_by_hand(**HK_KW)
        y, hstate = fn.apply(params, hstate, None, jnp.asarray(x16, jnp.float16), True)
    finally:
        hk.mixed_precision.clear_policy(hk.BatchNorm)
    assert got.dtype == np.float16 and y.dtype == jnp.float16
    assert_close(got, y)
    assert state["gamma"].dtype == state["moving_mean"].dtype == np.float32
    mean_ema = next(k for k in hstate if k.endswith("mean_ema"))
    assert_close(state["moving_mean"], hstate[mean_ema]["average"].reshape(-1))
    # the policy is the scenario's: a following float16 layer is float16 again
    assert haiku_adapter(dtype="float16").state()["moving_mean"].dtype == np.float16
    with pytest.raises(NotApplicable, match="input dtype"):
        haiku_adapter(dtype="float32", param_dtype="float16")


# ----------------------------------------------------------------------------------- equinox


def eqx_by_hand(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", **kwargs)

    def run(model, state, x, **call_kwargs):
        return jax.vmap(lambda a, s: model(a, s, **call_kwargs), axis_name="batch",
                        in_axes=(0, None), out_axes=(0, None))(x, state)

    return model, state, run


XC = f32(to_channels_first(X, "NHWC"))
X2C = f32(to_channels_first(X2, "NHWC"))
WC = f32(to_channels_first(W, "NHWC"))


def cl(y):  # channels-first result back to NHWC
    return np.moveaxis(np.asarray(y), 1, -1)


def eqx_adapter(**changes):
    ad = load_adapter("equinox")
    ad.build(Layer(**{"features": 3, "layout": "NHWC", "momentum": 0.9, "epsilon": 1e-3,
                      **changes}))
    return ad


@pytest.mark.parametrize("mode", [None, "batch"])
def test_equinox_calls_and_state_match_by_hand(mode):
    native = {"equinox": {"mode": mode}} if mode else {}
    ad = eqx_adapter(native=native)
    model, state, run = eqx_by_hand(eps=1e-3, momentum=0.9, **({"mode": mode} if mode else {}))
    assert model.mode == ad.model.mode == (mode or "ema")
    assert any("defaults to 'ema'" in n for n in ad.notes) == (mode is None)
    outs = []
    for x, xc in ((X, XC), (X2, X2C)):
        got = ad.call(x, True)
        want, state = run(model, state, xc, inference=False)
        outs.append((got, want))
    for got, want in outs:
        assert_close(got, cl(want))
    assert_close(ad.predict(X), cl(run(model, state, XC, inference=True)[0]))
    if mode is None:
        mean, var = state.get(model.ema_state_index)
    else:
        scale = 1 - 0.9 ** state.get(model.batch_counter)
        mean, var = (h / scale for h in state.get(model.batch_state_index))
    assert_close(ad.state()["moving_mean"], mean)
    assert_close(ad.state()["moving_variance"], var)


def test_equinox_mode_toggles_bare_calls():
    ad = eqx_adapter()
    model, state, run = eqx_by_hand(eps=1e-3, momentum=0.9)
    ad.call(X, True)
    _, state = run(model, state, XC)
    ad.set_mode("eval")
    assert ad.model.inference is True
    assert_close(ad.call(X, None),
                                  cl(run(eqx.nn.inference_mode(model), state, XC)[0]))
    ad.set_mode("train")
    assert_close(ad.call(X2, None), cl(run(model, state, X2C)[0]))


def test_equinox_fit_and_grad_match_by_hand():
    ad = eqx_adapter(native={"equinox": {"mode": "batch"}})
    model, state, run = eqx_by_hand(eps=1e-3, momentum=0.9, mode="batch")
    loss = ad.fit(X, W, fit_step(), fresh_optimizer=True)

    tx = optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-7)
    opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_value_and_grad(has_aux=True)
    def loss_fn(m, s, xb, tb):
        y, s = run(m, s, xb)
        return jnp.mean((y - tb) ** 2), s

    for _ in range(2):
        losses = []
        for sl in (slice(0, 3), slice(3, 4)):
            (lv, state), g = loss_fn(model, state, XC[sl], WC[sl])
            updates, opt_state = tx.update(g, opt_state, eqx.filter(model, eqx.is_inexact_array))
            model = eqx.apply_updates(model, updates)
            losses.append(float(lv) * (sl.stop - sl.start))
    close(loss, sum(losses) / 4)
    assert_close(ad.state()["gamma"], model.weight)
    assert_close(ad.state()["beta"], model.bias)

    out = ad.grad(X, True, W)

    def objective(m, x):
        y, _ = run(m, state, x, inference=False)
        return jnp.sum(y * WC)

    gm, gx = eqx.filter_grad(lambda mx: objective(*mx))((model, XC))
    assert_close(out["grad_input"], cl(gx))
    assert_close(out["grad_gamma"], gm.weight)
    assert_close(out["grad_beta"], gm.bias)


def test_equinox_not_applicable_frozen_and_set_weights():
    for bad in (dict(center=False), dict(track_running_stats=False),
                dict(momentum="cumulative")):
        with pytest.raises(NotApplicable):
            eqx_adapter(**bad)
    ad = eqx_adapter()
    ad.set_trainable(False)
    before = ad.state()["gamma"]
    ad.fit(X, W, fit_step(Optimizer("sgd", lr=0.1)), fresh_optimizer=True)
    assert_close(ad.state()["gamma"], before)
    assert "grad_gamma_reason" in ad.grad(X, True, W)
    ad.set_weights({"beta": np.full(3, 0.5), "moving_mean": np.ones(3),
                    "moving_variance": np.full(3, 4.0)})
    close(ad.predict(X), (X - 1.0) / np.sqrt(4.0 + 1e-3) + 0.5, 1e-5)


def test_equinox_ema_semantics_and_float16_error():
    """Documents the framework: mode="ema" normalizes training batches with the updated running
    statistics after the first call; with float16 inputs and float32 state (param_dtype, also
    its default dtype) its training call raises in lax.select; a float16 layer trains."""
    ad = eqx_adapter()
    ad.call(X, True)
    y = ad.call(X2, True)
    x1, x2 = X.reshape(-1, 3), X2.reshape(-1, 3)
    mean = 0.9 * x1.mean(0) + 0.1 * x2.mean(0)
    var = 0.9 * x1.var(0) + 0.1 * x2.var(0)
    close(y, (X2 - mean) / np.sqrt(var + 1e-3), 1e-5)

    x16 = np.asarray(X, np.float16).astype(np.float64)
    layer = Layer(features=3, layout="NHWC", momentum=0.9, dtype="float16",
                  param_dtype="float32")
    scenario = Scenario("f16", layer, {"x": x16}, [Step(index=0, op="call", input="x",
                                                        training=True)])
    rows = list(run_scenario(load_adapter("equinox"), scenario))
    assert rows[0]["status"] == "error" and "lax.select" in rows[0]["message"]
    assert rows[0]["origin"] not in ("xbn", "unknown")  # raised in equinox/jax, not by xbn
    model, state, run = eqx_by_hand(momentum=0.9, eps=1e-3, dtype=jnp.float32)
    with pytest.raises(TypeError, match="lax.select"):
        run(model, state, jnp.asarray(to_channels_first(x16, "NHWC"), jnp.float16),
            inference=False)
    # param_dtype float16 (dtype=float16 in Equinox): trains, as by hand
    ad = eqx_adapter(dtype="float16")
    got = ad.call(x16, True)
    model, state, run = eqx_by_hand(momentum=0.9, eps=1e-3, dtype=jnp.float16)
    y, state = eqx.filter_jit(run)(  # jitted, as Equinox users (and the adapter) run it
        model, state, jnp.asarray(to_channels_first(x16, "NHWC"), jnp.float16), inference=False)
    assert got.dtype == np.float16
    assert_close(got, cl(y))
    assert ad.state()["moving_mean"].dtype == np.float16
