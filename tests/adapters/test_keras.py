"""The Keras 3 adapter against Keras driven by hand, on each backend.

Keras fixes its backend when it is first imported, so each backend runs in its own Python
subprocess (this file run as a script with KERAS_BACKEND set); the parent test only checks
that the child passed. Nothing is skipped: a missing framework fails the child.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.adapters.keras_child import run_in_backend

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("framework_id", ["keras", "keras-jax", "keras-torch"])
def test_keras_backend(framework_id: str) -> None:
    run_in_backend(__file__, framework_id)


# ---------------------------------------------------------------------------------------
# the child: runs under one backend


def _scenario(layer: dict, steps: list[dict]):
    from xbn.scenario.loader import parse

    inputs = {"x": {"normal": {"mean": 2.0, "std": 3.0}, "shape": [4, 3, 2, 2], "seed": 0},
              "w": {"uniform": {"low": -1.0, "high": 1.0}, "shape": [4, 3, 2, 2], "seed": 1}}
    return parse({"schema": 1, "name": "t", "layer": {"features": 3, "layout": "NCHW", **layer},
                  "inputs": inputs, "steps": steps})


def _by_hand(keras, **kwargs):
    """The model a Keras user writes: Input -> BatchNormalization, channels first."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(3, None, None))
    bn = keras.layers.BatchNormalization(axis=1, **kwargs)
    return keras.Model(inputs, bn(inputs)), bn


def _np(value):
    from keras import ops

    return ops.convert_to_numpy(value)


def _state(bn) -> dict:
    return {name: _np(getattr(bn, name))
            for name in ("gamma", "beta", "moving_mean", "moving_variance")}


def _same_state(adapter, bn) -> None:
    got, want = adapter.state(), _state(bn)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _child(framework_id: str) -> None:
    import keras

    from xbn.adapters.base import NotApplicable, run_scenario
    from xbn.frameworks.registry import load_adapter
    from xbn.scenario.loader import Optimizer, Step

    adapter = load_adapter(framework_id)
    assert adapter.backend == keras.backend.backend()
    assert adapter.versions()["keras"] == keras.__version__

    # -- calls, predict, state: bit-for-bit against the same model built by hand
    sc = _scenario({"momentum": 0.9, "epsilon": 0.01}, [{"op": "predict", "input": "x"}])
    x, w = sc.inputs["x"], sc.inputs["w"]
    xf = x.astype(np.float32)
    adapter.build(sc.layer)
    model, bn = _by_hand(keras, momentum=0.9, epsilon=0.01)
    _same_state(adapter, bn)
    for training in (True, True, None, False):
        kwargs = {} if training is None else {"training": training}
        np.testing.assert_array_equal(adapter.call(x, training), _np(model(xf, **kwargs)))
        _same_state(adapter, bn)
    np.testing.assert_array_equal(adapter.predict(x), model.predict(xf, verbose=0, batch_size=4))

    # -- grad: gradients match the float64 reference; a training forward moves the statistics
    # exactly as a training call does, and no parameter changes
    ref = load_adapter("numpy")
    ref.build(sc.layer)
    ref.set_weights({k: v.astype(np.float64) for k, v in adapter.state().items()})
    got = adapter.grad(x, True, w)
    want = ref.grad(x, True, w)
    for q in ("output", "grad_input", "grad_gamma", "grad_beta"):
        np.testing.assert_allclose(got[q], want[q], rtol=1e-5, atol=1e-5, err_msg=q)
        assert got[q].dtype == np.float32, q
    model(xf, training=True)
    _same_state(adapter, bn)

    # -- fit: Keras' compile + fit with the optimizer kept between fits, then a fresh one
    adam = Optimizer("adam", lr=0.01, beta1=0.8, beta2=0.99, eps=1e-3)
    step = Step(index=0, op="fit", optimizer=adam, epochs=2, batch_size=3)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.99,
                                                  epsilon=1e-3), loss="mse")
    for fresh in (True, False):
        loss = adapter.fit(x, w, step, fresh_optimizer=fresh)
        history = model.fit(xf, w.astype(np.float32), epochs=2, batch_size=3, shuffle=False,
                            verbose=0)
        assert loss == np.float32(history.history["loss"][-1])
        assert loss.dtype == np.float32
        _same_state(adapter, bn)
    sgd = Step(index=0, op="fit", optimizer=Optimizer("sgd", lr=0.1), epochs=1)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    adapter.fit(x, w, sgd, fresh_optimizer=True)
    model.fit(xf, w.astype(np.float32), epochs=1, batch_size=4, shuffle=False, verbose=0)
    _same_state(adapter, bn)

    # -- trainable=False: inference in training calls, nothing to differentiate or fit
    adapter.set_trainable(False)
    bn.trainable = False
    np.testing.assert_array_equal(adapter.call(x, True), _np(model(xf, training=False)))
    frozen = adapter.grad(x, True, w)
    assert "grad_gamma" not in frozen and "grad_gamma_reason" in frozen
    before = adapter.state()
    adapter.fit(x, w, sgd, fresh_optimizer=True)
    for name, value in adapter.state().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    _same_state(adapter, bn)

    # -- set_weights, then inference uses the loaded statistics
    values = {"gamma": np.array([1.5, 0.5, 2.0]), "moving_mean": np.array([1.0, -1.0, 0.5]),
              "moving_variance": np.array([2.0, 3.0, 4.0])}
    adapter.set_weights(values)
    for name, value in values.items():
        bn_var = getattr(bn, name)
        bn_var.assign(value.astype(np.float32))
    _same_state(adapter, bn)
    np.testing.assert_array_equal(adapter.predict(x), model.predict(xf, verbose=0, batch_size=4))

    # -- what Keras cannot express, and a wrong backend
    for layer in ({"momentum": "cumulative"}, {"track_running_stats": False}):
        with pytest.raises(NotApplicable):
            adapter.build(_scenario(layer, [{"op": "predict", "input": "x"}]).layer)
    with pytest.raises(NotApplicable):
        adapter.set_mode("eval")
    other = next(f for f in ("keras", "keras-jax", "keras-torch") if f != framework_id)
    with pytest.raises(RuntimeError, match="KERAS_BACKEND"):
        load_adapter(other)

    # -- defaults and native kwargs reach the layer
    adapter.build(_scenario({"defaults": True, "momentum": 0.5, "epsilon": 0.1,
                             "native": {framework_id: {"center": False}}},
                            [{"op": "predict", "input": "x"}]).layer)
    assert (adapter.bn.momentum, adapter.bn.epsilon, adapter.bn.axis) == (0.99, 1e-3, 1)
    assert adapter.bn.beta is None and "beta" not in adapter.state()

    # -- half precision: param_dtype float32 is the mixed policy (outputs in the input dtype,
    # variables float32); without it, the 16-bit policy (16-bit variables too)
    for dtype in ("float16", "bfloat16"):
        for param_dtype, policy in (("float32", f"mixed_{dtype}"), (dtype, dtype)):
            sc = _scenario({"dtype": dtype, "param_dtype": param_dtype}, [
                {"op": "call", "input": "x", "training": True},
                {"op": "grad", "input": "x", "training": True, "weights": "w"}])
            obs = {(o["step"], o["quantity"]): o for o in run_scenario(adapter, sc)}
            assert all(o["status"] == "ok" for o in obs.values()), obs
            assert adapter.model.dtype_policy.name == policy
            assert adapter.bn.moving_mean.dtype == param_dtype  # what Keras created
            assert obs[0, "output"]["dtype"] == dtype
            assert obs[1, "grad_input"]["dtype"] == dtype
            assert obs[0, "moving_mean"]["dtype"] == param_dtype
            assert obs[1, "grad_gamma"]["dtype"] == param_dtype
            mean = np.asarray(obs[0, "moving_mean"]["value"])
            np.testing.assert_allclose(
                mean, 0.01 * x.transpose(0, 2, 3, 1).reshape(-1, 3).mean(0), rtol=2e-2)

    # -- keras' test_large_value_within_autocast_scope: 70000 (beyond float16) loads into the
    # float32 moving variance of a mixed_float16 layer and reads back, as by hand
    sc = _scenario({"dtype": "float16", "param_dtype": "float32"},
                   [{"op": "set_weights", "moving_variance": 70000.0}])
    obs = {(o["step"], o["quantity"]): o for o in run_scenario(adapter, sc)}
    assert obs[0, "moving_variance"]["value"] == [70000.0] * 3
    keras.config.set_dtype_policy("mixed_float16")
    hand = keras.layers.BatchNormalization()
    hand.build((1, 4, 4, 3))
    hand.moving_variance.assign(keras.ops.full(hand.moving_variance.shape, 70000))
    assert _np(hand.moving_variance).tolist() == obs[0, "moving_variance"]["value"]
    keras.config.set_dtype_policy("float32")
    with pytest.raises(NotApplicable, match="mixed_float16"):  # no policy names this pair
        adapter.build(_scenario({"dtype": "float32", "param_dtype": "float16"},
                                [{"op": "predict", "input": "x"}]).layer)

    # -- "@N": the model fed its own output again (out = model(out)), as by hand; Keras has no
    # reset of the statistics: n/a, and they carry on
    sc = _scenario({"momentum": 0.9}, [{"op": "call", "input": "x", "training": True},
                                       {"op": "call", "input": "@0", "training": True},
                                       {"op": "reset"},
                                       {"op": "call", "input": "@1", "training": False}])
    obs = {(o["step"], o["quantity"]): o for o in run_scenario(adapter, sc)}
    model, bn = _by_hand(keras, momentum=0.9)
    out = sc.inputs["x"].astype(np.float32)
    for step, training in ((0, True), (1, True), (3, False)):
        out = _np(model(out, training=training))
        np.testing.assert_array_equal(obs[step, "output"]["value"], out)
    assert obs[2, "step"]["status"] == "n/a" and "no reset" in obs[2, "step"]["message"]
    assert obs[3, "num_batches_tracked"]["status"] == "n/a"
    np.testing.assert_array_equal(obs[3, "moving_mean"]["value"], _np(bn.moving_mean))

    # -- float64: float64 variables and outputs everywhere
    sc = _scenario({"dtype": "float64"}, [{"op": "call", "input": "x", "training": True}])
    obs = {o["quantity"]: o for o in run_scenario(adapter, sc)}
    assert obs["output"]["dtype"] == "float64" and obs["moving_mean"]["dtype"] == "float64"
    print(f"OK {framework_id}")


if __name__ == "__main__":
    _child(sys.argv[1])
