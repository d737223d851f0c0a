"""The tf-keras adapter against tf_keras driven by hand (no xbn in the loop).

Comparisons are bit-for-bit: the adapter must make exactly the calls a tf.keras user makes.
tf_keras is imported unconditionally: if it is missing these tests fail, they never skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from xbn.adapters.base import NotApplicable, run_scenario
from xbn.common.dtypes import round_to
from xbn.frameworks.registry import load_adapter
from xbn.scenario.loader import Layer, Optimizer, Step, channel_axis, parse

RNG = np.random.default_rng(0)


def data(shape, dtype="float32", mean=2.0, std=3.0):
    return round_to(RNG.normal(mean, std, size=shape), dtype)


def adapter(**layer):
    a = load_adapter("tf-keras")
    a.build(Layer(**{"features": 3, "momentum": 0.9, "epsilon": 1e-3, **layer}))
    return a


def by_hand(layout="NC", dtype="float32", features=3, policy=None, **kwargs):
    """The model a tf.keras user writes: Input -> BatchNormalization -> Model."""
    axis = channel_axis(layout)
    bn = tf_keras.layers.BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-3,
                                            dtype=policy or dtype, **kwargs)
    rank = {"NC": 2, "NHWC": 4, "NCHW": 4}[layout]
    shape = [None] * (rank - 1)
    shape[axis - 1] = features
    inputs = tf_keras.Input(shape=shape, dtype=dtype)
    return tf_keras.Model(inputs, bn(inputs)), bn


def same(value, expected):
    """The adapter's value equals the framework's exactly (bfloat16 comes back as a tuple)."""
    if isinstance(value, tuple):
        value = value[0]
    expected = expected.numpy() if isinstance(expected, tf.Tensor | tf.Variable) else expected
    np.testing.assert_array_equal(np.asarray(value, np.float64),
                                  np.asarray(expected).astype(np.float64))


def check_state(a, bn):
    state = a.state()
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        same(state[name], getattr(bn, name))


@pytest.mark.parametrize("layout", ["NC", "NHWC", "NCHW"])
def test_calls_match_by_hand(layout):
    shape = {"NC": (6, 3), "NHWC": (4, 2, 3, 3), "NCHW": (4, 3, 2, 3)}[layout]
    x, y = data(shape), data(shape, mean=-1.0)
    a = adapter(layout=layout)
    model, bn = by_hand(layout)
    for inp, training in [(x, True), (y, True), (x, False), (y, None)]:
        got = a.call(inp, training)
        want = model(inp.astype(np.float32)) if training is None else \
            model(inp.astype(np.float32), training=training)
        same(got, want)
        check_state(a, bn)
    same(a.predict(y), model.predict(y.astype(np.float32), batch_size=len(y), verbose=0))
    assert bn.fused == (layout != "NC") == a.bn.fused


def test_fused_moving_variance_is_bessel_corrected_and_2d_is_biased():
    for layout, shape in [("NHWC", (4, 2, 2, 3)), ("NCHW", (4, 3, 2, 2)), ("NC", (16, 3))]:
        a = adapter(layout=layout, momentum=0.5)
        x = data(shape)
        a.call(x, True)
        axes = tuple(i for i in range(x.ndim) if i != channel_axis(layout))
        n = x.size // 3
        factor = n / (n - 1) if layout != "NC" else 1.0
        expected = 0.5 + 0.5 * x.var(axis=axes) * factor
        np.testing.assert_allclose(a.state()["moving_variance"], expected, rtol=1e-5)


def test_grad_matches_tape_by_hand():
    x, w = data((4, 2, 2, 3)), data((4, 2, 2, 3), mean=0.0, std=1.0)
    a = adapter(layout="NHWC")
    model, bn = by_hand("NHWC")
    got = a.grad(x, True, w)
    xt = tf.constant(x.astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = model(xt, training=True)
        objective = tf.reduce_sum(out * w.astype(np.float32))
    gx, gg, gb = tape.gradient(objective, [xt, bn.gamma, bn.beta])
    same(got["output"], out)
    same(got["grad_input"], gx)
    same(got["grad_gamma"], gg)
    same(got["grad_beta"], gb)
    check_state(a, bn)  # the training forward pass updated the moving statistics


def test_fit_matches_compile_and_fit_by_hand():
    x, target = data((5, 3)), data((5, 3), mean=0.0, std=1.0)
    a = adapter()
    model, bn = by_hand()
    adam = Optimizer("adam", lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6)
    step = Step(index=0, op="fit", optimizer=adam, epochs=2, batch_size=2)
    losses = [a.fit(x, target, step, fresh_optimizer=True),
              a.fit(x, target, step, fresh_optimizer=False)]
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=0.01, beta_1=0.8,
                                                     beta_2=0.95, epsilon=1e-6),
                  loss="mean_squared_error")
    for loss in losses:  # the second fit keeps the optimizer state (no recompile)
        h = model.fit(x.astype(np.float32), target.astype(np.float32), batch_size=2, epochs=2,
                      shuffle=False, verbose=0)
        assert loss == np.float32(h.history["loss"][-1])
    check_state(a, bn)


def test_frozen_layer_runs_in_inference_and_reports_frozen_grads():
    x, w = data((6, 3)), data((6, 3), mean=0.0, std=1.0)
    a = adapter()
    model, bn = by_hand()
    a.set_trainable(False)
    bn.trainable = False
    same(a.call(x, True), model(x.astype(np.float32), training=True))
    same(a.call(x, True), model(x.astype(np.float32), training=False))
    got = a.grad(x, True, w)
    assert "grad_gamma" not in got and "frozen" in got["grad_gamma_reason"]
    assert a.state()["moving_mean"].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("param_dtype", ["float32", None])
def test_16bit_inputs_keep_float32_statistics_under_either_policy(dtype, param_dtype):
    """param_dtype float32 is the mixed_<dtype> policy; without it, the <dtype> policy, under
    which tf-keras raises a 16-bit layer's variables to float32 all the same (noted)."""
    x = data((4, 2, 2, 3), dtype)
    a = adapter(layout="NHWC", dtype=dtype, param_dtype=param_dtype)
    policy = f"mixed_{dtype}" if param_dtype else dtype
    assert a.bn.dtype_policy.name == policy
    assert any("not honoured" in n for n in a.notes) == (param_dtype is None)
    model, bn = by_hand("NHWC", dtype, policy=policy)
    got = a.call(x, True)
    want = model(tf.cast(tf.constant(x), dtype), training=True)
    same(got, want)
    check_state(a, bn)
    if dtype == "bfloat16":
        assert got[1] == "bfloat16"
    else:
        assert got.dtype == np.float16
    assert {v.dtype for v in a.state().values()} == {np.dtype(np.float32)}


def test_param_dtype_pairs_without_a_policy_are_not_applicable():
    with pytest.raises(NotApplicable, match="mixed_float16"):
        adapter(dtype="float32", param_dtype="float16")


@pytest.mark.slow  # 1000+ eager calls, a few seconds
def test_seed_example_reproduces_the_published_tf21_values():
    scenario = parse({
        "schema": 1, "name": "seed", "layer": {"features": 1}, "inputs": {"a": [[100.0]]},
        "steps": [{"op": "call", "input": "a", "training": True, "repeat": 1001},
                  {"op": "call", "input": "a", "training": True},
                  {"op": "call", "input": "a", "training": False},
                  {"op": "predict", "input": "a"}]})
    obs = {(o["step"], o["quantity"]): o["value"]
           for o in run_scenario(load_adapter("tf-keras"), scenario)}
    assert np.float32(obs[0, "moving_mean"][0]) == np.float32(99.99573)
    assert np.float32(obs[0, "moving_variance"][0]) == np.float32(4.273953e-05)
    assert obs[1, "output"] == [[0.0]]
    assert np.float32(obs[2, "output"][0][0]) == np.float32(0.13110352)
    assert np.float32(obs[3, "output"][0][0]) == np.float32(0.13110352)


def test_not_applicable_and_defaults():
    for layer in (Layer(features=2, momentum="cumulative"),
                  Layer(features=2, track_running_stats=False)):
        with pytest.raises(NotApplicable):
            load_adapter("tf-keras").build(layer)
    a = adapter(defaults=True, momentum=0.5, epsilon=0.1, native={"tf-keras": {"fused": False}})
    assert (a.bn.momentum, a.bn.epsilon, a.bn.fused) == (0.99, 1e-3, False)
    with pytest.raises(NotApplicable):
        a.set_mode("eval")
