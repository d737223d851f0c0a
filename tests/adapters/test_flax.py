"""The flax (linen) and flax-nnx adapters against Flax driven by hand, without xbn."""

from __future__ import annotations

import warnings
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from xbn.adapters.base import NotApplicable, run_scenario
from xbn.frameworks.registry import load_adapter
from xbn.scenario.loader import Layer, Optimizer, Step, load

RNG = np.random.default_rng(0)
X = RNG.normal(2.0, 3.0, (4, 2, 2, 3)).astype(np.float32).astype(np.float64)  # NHWC
T = RNG.uniform(-1.0, 1.0, X.shape).astype(np.float32).astype(np.float64)
ADAM = Optimizer("adam", lr=0.01, beta1=0.9, beta2=0.999, eps=1e-7)


@pytest.fixture(autouse=True)
def _restore_x64():
    """The adapters switch jax_enable_x64 per scenario; leave it as we found it."""
    before = bool(jax.config.jax_enable_x64)
    yield
    jax.config.update("jax_enable_x64", before)


def adapter(fid: str, **layer):
    ad = load_adapter(fid)
    ad.build(Layer(**{"features": 3, "layout": "NHWC", "momentum": 0.9, "epsilon": 1e-3,
                      **layer}))
    return ad


def fit_step(batch_size=3, epochs=2, optimizer=ADAM) -> Step:
    return Step(index=0, op="fit", input="x", target="t", optimizer=optimizer, epochs=epochs,
                batch_size=batch_size)


def same(a, b):
    np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))


# ---------------------------------------------------------------------------------- linen


def linen_by_hand(axis=3, dtype=jnp.float32, **kw):
    bn = nn.BatchNorm(axis=axis, momentum=0.9, epsilon=1e-3, **kw)
    x = jnp.asarray(X, dtype)
    variables = bn.init(jax.random.key(0), jnp.zeros((1, 1, 1, 3), dtype),
                        use_running_average=True)
    return bn, x, variables


def test_linen_call_predict_and_stats_match_hand():
    ad = adapter("flax")
    bn, x, v = linen_by_hand()
    y, mut = bn.apply(v, x, use_running_average=False, mutable=["batch_stats"])
    v = {"params": v["params"], **mut}
    same(ad.call(X, True), y)
    st = ad.state()
    same(st["moving_mean"], v["batch_stats"]["mean"])
    same(st["moving_variance"], v["batch_stats"]["var"])
    y_eval = bn.apply(v, x, use_running_average=True)
    same(ad.call(X, False), y_eval)
    same(ad.predict(X), y_eval)
    same(ad.state()["moving_mean"], v["batch_stats"]["mean"])  # inference changes nothing


def test_linen_channels_first_uses_axis():
    ad = adapter("flax", layout="NCHW")
    xc = np.moveaxis(X, -1, 1)
    bn = nn.BatchNorm(axis=1, momentum=0.9, epsilon=1e-3)
    v = bn.init(jax.random.key(0), jnp.zeros((1, 3, 1, 1)), use_running_average=True)
    y, _ = bn.apply(v, jnp.asarray(xc, jnp.float32), use_running_average=False,
                    mutable=["batch_stats"])
    same(ad.call(xc, True), y)


def test_linen_bare_call_raises_like_linen():
    ad = adapter("flax")
    with pytest.raises(ValueError, match="must be passed to the constructor or at call time"):
        ad.call(X, None)
    with pytest.raises(NotApplicable):
        ad.set_mode("eval")


def test_linen_fit_matches_optax_loop_and_keeps_state():
    ad = adapter("flax")
    losses = [ad.fit(X, T, fit_step(), True), ad.fit(X, T, fit_step(epochs=1), False)]

    bn, x, v = linen_by_hand()
    t = jnp.asarray(T, jnp.float32)
    tx = optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-7)
    params, stats = v["params"], v["batch_stats"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state, xb, tb):
        def loss_fn(p):
            y, mut = bn.apply({"params": p, "batch_stats": stats}, xb,
                              use_running_average=False, mutable=["batch_stats"])
            return jnp.mean((y - tb) ** 2), mut["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    hand = []
    for epochs in (2, 1):  # the second fit continues the same optimizer state
        for _ in range(epochs):
            batch = []
            for sl in (slice(0, 3), slice(3, 4)):
                params, stats, opt_state, loss = step(params, stats, opt_state, x[sl], t[sl])
                batch.append((float(loss), sl.stop - sl.start))
        hand.append(sum(lo * n for lo, n in batch) / 4)
    np.testing.assert_allclose([float(v) for v in losses], hand, rtol=1e-6)
    st = ad.state()
    np.testing.assert_allclose(st["gamma"], params["scale"], rtol=1e-6)
    np.testing.assert_allclose(st["beta"], params["bias"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(st["moving_variance"], stats["var"], rtol=1e-6)


def test_linen_grad_matches_jax_grad():
    ad = adapter("flax")
    out = ad.grad(X, True, T)
    bn, x, v = linen_by_hand()
    w = jnp.asarray(T, jnp.float32)

    def f(xv, p):
        y, _ = bn.apply({"params": p, "batch_stats": v["batch_stats"]}, xv,
                        use_running_average=False, mutable=["batch_stats"])
        return jnp.sum(y * w)

    gx, gp = jax.grad(f, argnums=(0, 1))(x, v["params"])
    same(out["grad_input"], gx)
    same(out["grad_gamma"], gp["scale"])
    same(out["grad_beta"], gp["bias"])
    assert ad.state()["moving_mean"].any()  # the training forward updated the statistics


def test_linen_frozen_only_in_optimizer_no_inference_coupling():
    ad = adapter("flax")
    ad.set_trainable(False)
    before = ad.state()
    ad.fit(X, T, fit_step(), True)
    after = ad.state()
    same(after["gamma"], before["gamma"])
    same(after["beta"], before["beta"])
    assert not np.array_equal(after["moving_mean"], before["moving_mean"])
    out = ad.grad(X, True, T)
    assert "grad_gamma" not in out and "frozen" in out["grad_gamma_reason"]


@pytest.mark.parametrize("param_dtype", ["float16", "float32"])
def test_linen_half_precision_is_dtype_and_param_dtype(param_dtype):
    """dtype = float16 is Flax's dtype=float16; param_dtype its param_dtype (scale, bias);
    the batch statistics are float32 either way (linen creates them so)."""
    x16 = np.asarray(X, np.float16).astype(np.float64)
    ad = adapter("flax", dtype="float16", param_dtype=param_dtype)
    bn = nn.BatchNorm(axis=3, momentum=0.9, epsilon=1e-3, dtype=jnp.float16,
                      param_dtype=jnp.dtype(param_dtype))
    x = jnp.asarray(x16, jnp.float16)
    v = bn.init(jax.random.key(0), jnp.zeros((1, 1, 1, 3), jnp.float16),
                use_running_average=True)
    y, mut = bn.apply(v, x, use_running_average=False, mutable=["batch_stats"])
    got = ad.call(x16, True)
    assert got.dtype == np.float16 and y.dtype == jnp.float16
    same(got, y)
    st = ad.state()
    assert st["gamma"].dtype == np.dtype(param_dtype)
    assert st["moving_mean"].dtype == np.float32 == mut["batch_stats"]["mean"].dtype
    same(st["moving_variance"], mut["batch_stats"]["var"])
    assert any("stay float32" in n for n in ad.notes) == (param_dtype == "float16")
    ad = adapter("flax", dtype="bfloat16", center=False, scale=False)
    y = ad.call(X, True)
    assert isinstance(y, tuple) and y[1] == "bfloat16"
    assert ad.state()["moving_variance"].dtype == np.float32


def test_nnx_mixed_precision_casts_the_statistics_to_dtype():
    """nnx.BatchNorm(dtype=float16, param_dtype=float32) promotes its float32 statistics to
    float16 before normalizing (flax/nnx/nn/normalization.py:382-387): a moving variance of
    70000 is inf there and the output is beta, by hand as through the adapter."""
    x16 = np.asarray(X, np.float16).astype(np.float64)
    ad = adapter("flax-nnx", dtype="float16", param_dtype="float32")
    ad.set_weights({"moving_variance": np.full(3, 70000.0)})
    assert ad.state()["moving_variance"].tolist() == [70000.0] * 3  # kept float32
    bn = nnx.BatchNorm(3, momentum=0.9, epsilon=1e-3, dtype=jnp.float16,
                       param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    bn.var[...] = jnp.full((3,), 70000.0, jnp.float32)
    want = bn(jnp.asarray(x16, jnp.float16), use_running_average=True)
    got = ad.call(x16, False)
    same(got, want)
    assert not np.any(got)  # beta = 0 everywhere: 1/sqrt(inf) scales x to 0
    linen = adapter("flax", dtype="float16", param_dtype="float32")
    linen.set_weights({"moving_variance": np.full(3, 70000.0)})
    assert np.all(np.abs(linen.call(x16, False)) > 0)  # linen normalizes in float32


def test_linen_float64_and_not_applicable():
    ad = adapter("flax", dtype="float64")
    assert any("jax_enable_x64" in n for n in ad.notes)
    assert ad.state()["moving_mean"].dtype == np.float32  # created float32 by linen
    assert ad.call(X, True).dtype == np.float64
    assert ad.state()["moving_mean"].dtype == np.float64  # promoted by the first update
    for layer in ({"momentum": "cumulative"}, {"track_running_stats": False}):
        with pytest.raises(NotApplicable):
            adapter("flax", **layer)


def test_linen_defaults_and_native():
    ad = adapter("flax", defaults=True, native={"flax": {"use_fast_variance": False}})
    assert ad.module.momentum == 0.99 and ad.module.epsilon == 1e-5
    assert ad.module.use_fast_variance is False
    ad = adapter("flax", native={"flax": {"use_running_average": False}})
    ad.call(X, None)  # bare call works once the attribute is set
    with pytest.raises(ValueError, match="passed to the constructor and at call time"):
        ad.call(X, True)


# ---------------------------------------------------------------------------------- nnx


def nnx_by_hand(**kw):
    return nnx.BatchNorm(3, axis=3, momentum=0.9, epsilon=1e-3, rngs=nnx.Rngs(0), **kw)


def test_nnx_calls_modes_and_stats_match_hand():
    ad = adapter("flax-nnx")
    bn = nnx_by_hand()
    x = jnp.asarray(X, jnp.float32)
    same(ad.call(X, True), bn(x, use_running_average=False))
    same(ad.call(X, False), bn(x, use_running_average=True))
    same(ad.call(X, None), bn(x))  # constructor default: batch statistics
    same(ad.state()["moving_mean"], bn.mean[...])
    ad.set_mode("eval")
    bn.eval()
    same(ad.call(X, None), bn(x))
    same(ad.predict(X), bn(x, use_running_average=True))
    same(ad.state()["moving_variance"], bn.var[...])
    ad.set_mode("train")
    assert ad.bn.use_running_average is False


def test_nnx_fit_matches_optimizer_loop():
    ad = adapter("flax-nnx")
    losses = [ad.fit(X, T, fit_step(), True), ad.fit(X, T, fit_step(epochs=1), False)]

    bn = nnx_by_hand()
    opt = nnx.Optimizer(bn, optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-7), wrt=nnx.Param)
    x, t = jnp.asarray(X, jnp.float32), jnp.asarray(T, jnp.float32)

    @nnx.jit
    def step(model, opt, xb, tb):
        def loss_fn(m):
            return jnp.mean((m(xb, use_running_average=False) - tb) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    hand = []
    for epochs in (2, 1):
        for _ in range(epochs):
            batch = [(float(step(bn, opt, x[sl], t[sl])), sl.stop - sl.start)
                     for sl in (slice(0, 3), slice(3, 4))]
        hand.append(sum(lo * n for lo, n in batch) / 4)
    np.testing.assert_allclose([float(v) for v in losses], hand, rtol=1e-6)
    np.testing.assert_allclose(ad.state()["gamma"], bn.scale[...], rtol=1e-6)
    np.testing.assert_allclose(ad.state()["moving_mean"], bn.mean[...], rtol=1e-6)


def test_nnx_grad_and_frozen():
    ad = adapter("flax-nnx")
    bn = nnx_by_hand()
    x, w = jnp.asarray(X, jnp.float32), jnp.asarray(T, jnp.float32)
    out = ad.grad(X, True, T)
    gp, gx = nnx.grad(lambda m, xv: jnp.sum(m(xv, use_running_average=False) * w),
                      argnums=(0, 1))(bn, x)
    same(out["grad_input"], gx)
    same(out["grad_gamma"], gp["scale"][...])
    same(out["grad_beta"], gp["bias"][...])
    same(ad.state()["moving_mean"], bn.mean[...])

    ad.set_trainable(False)
    before = ad.state()
    ad.fit(X, T, fit_step(optimizer=Optimizer("sgd", lr=0.1)), True)
    after = ad.state()
    same(after["gamma"], before["gamma"])
    assert not np.array_equal(after["moving_mean"], before["moving_mean"])
    assert "frozen" in ad.grad(X, True, T)["grad_beta_reason"]


def test_nnx_dtypes():
    ad = adapter("flax-nnx", dtype="bfloat16", center=False, scale=False)
    y = ad.call(X, True)
    assert isinstance(y, tuple) and y[1] == "bfloat16"  # dtype=bfloat16: the result's dtype
    assert ad.state()["moving_mean"].dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ad = adapter("flax-nnx", dtype="float64")
        assert ad.call(X, True).dtype == np.float64
    assert ad.state()["moving_mean"].dtype == np.float32  # cast back by the in-place update
    assert ad.state()["gamma"].dtype == np.float64


def test_smoke_scenario_runs_through_the_driver():
    scenario = load(str(Path(__file__).parents[1] / "smoke_scenario.toml"))
    for fid in ("flax", "flax-nnx"):
        rows = list(run_scenario(load_adapter(fid), scenario))
        assert all(r["status"] == "ok" for r in rows if r["quantity"] != "step"), fid


def test_linen_chained_steps_feed_its_own_output_and_reset_is_not_applicable():
    """"@N" through the driver is ``out = bn.apply(v, out)`` by hand; linen has no reset (the
    statistics are the batch_stats collection), so the step is n/a and the statistics stay."""
    from xbn.scenario.loader import parse

    scenario = parse({
        "schema": 1, "name": "t",
        "layer": {"features": 3, "layout": "NHWC", "momentum": 0.9, "epsilon": 1e-3},
        "inputs": {"x": X.tolist()},
        "steps": [{"op": "call", "input": "x", "training": True},
                  {"op": "call", "input": "@0", "training": True},
                  {"op": "reset"},
                  {"op": "call", "input": "@1", "training": False}],
    })
    rows = {(o["step"], o["quantity"]): o for o in run_scenario(load_adapter("flax"), scenario)}
    bn, x, v = linen_by_hand()
    y0, mut = bn.apply(v, x, use_running_average=False, mutable=["batch_stats"])
    y1, mut = bn.apply({"params": v["params"], **mut}, y0, use_running_average=False,
                       mutable=["batch_stats"])
    v = {"params": v["params"], **mut}
    same(rows[(0, "output")]["value"], y0)
    same(rows[(1, "output")]["value"], y1)
    assert rows[(2, "step")]["status"] == "n/a" and "no reset" in rows[(2, "step")]["message"]
    same(rows[(2, "moving_mean")]["value"], v["batch_stats"]["mean"])
    assert rows[(2, "num_batches_tracked")]["status"] == "n/a"
    same(rows[(3, "output")]["value"], bn.apply(v, y1, use_running_average=True))
