"""Keras-family replicas (``xbn/adapters/keras/replicas*.py``) against Keras driven by hand.

By hand, with no xbn code: ``tf.distribute.MirroredStrategy`` over two logical CPU devices,
the model built under ``strategy.scope()``, each replica fed its own rows by
``experimental_distribute_values_from_function``, ``strategy.run`` in a ``tf.function``;
keras-jax: ``keras.distribution.DataParallel`` and a batch sharded with its data layout. xbn's
engine must give the same numbers through ``run_scenario``; the issue's ground truth (G split
[3, 5], one training call: moving variance 1.954402 for channel 0 when synchronized; Keras 3
reads back replica 0's copy, tf-keras the mean of the copies) is checked on the by-hand runs.

TensorFlow fixes its logical devices and JAX its device count at start, and Keras its backend
at import, so each framework runs in a child process (this file as a script) started with
``XBN_REPLICAS=2`` as ``xbn.execution.worker.prepare_replicas`` sets it. The same child runs ordinary
scenarios, which must be bit-identical to a child without ``XBN_REPLICAS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a data-parallel engine per case

ROOT = Path(__file__).resolve().parents[2]
# the G: arange(24).reshape(8, 3)**1.5 / 10 in float32
G = (np.arange(24, dtype=np.float64).reshape(8, 3) ** 1.5 / 10).astype(np.float32)
MOMENTUM, EPS = 0.9, 1e-3
GLOBAL_MEAN = np.array([3.989484, 4.450293, 4.941774])  # the numbers
PLAIN = ("layout-nchw", "variance-update-n5")  # ordinary scenarios for the identity check
LOADED = {"gamma": [2.0, 0.5, 1.0], "beta": [0.25, -1.0, 0.0],
          "moving_mean": [1.0, 2.0, 3.0], "moving_variance": [4.0, 0.5, 2.0]}


def _child(framework_id: str, replicas: bool) -> dict:
    from xbn.execution.environment import DETERMINISM_ENV
    from xbn.frameworks.registry import FRAMEWORKS

    env = {**os.environ, **DETERMINISM_ENV, **FRAMEWORKS[framework_id].env,
           "PYTHONPATH": str(ROOT)}
    env.pop("XBN_REPLICAS", None)
    if replicas:
        env["XBN_REPLICAS"] = "2"
        # first, as the worker puts it (xbn.execution.worker.prepare_replicas)
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 " + env["XLA_FLAGS"]
    mode = "replicas" if replicas else "plain"
    proc = subprocess.run([sys.executable, __file__, framework_id, mode], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def replicated_children() -> dict:
    return {}


def _replicated(cache: dict, framework_id: str) -> dict:
    if framework_id not in cache:
        cache[framework_id] = _child(framework_id, replicas=True)
    return cache[framework_id]


@pytest.mark.parametrize("framework_id", ["keras", "tf-keras", "keras-jax", "keras-torch"])
def test_replicas_match_keras_by_hand(replicated_children, framework_id: str) -> None:
    result = _replicated(replicated_children, framework_id)
    assert result["ok"] == framework_id


@pytest.mark.parametrize("framework_id", ["keras", "tf-keras"])
def test_logical_devices_change_no_ordinary_scenario(replicated_children,
                                                    framework_id: str) -> None:
    """Two logical CPU devices (XBN_REPLICAS=2) leave unreplicated scenarios bit-identical,
    before and after a MirroredStrategy ran in the same worker."""
    plain = _child(framework_id, replicas=False)["plain_before"]
    result = _replicated(replicated_children, framework_id)
    assert result["plain_before"] == plain
    assert result["plain_after"] == plain


# ---------------------------------------------------------------------------------------
# the child


def _scenario(split: list[int], synchronized: bool, load: bool = False):
    from xbn.scenario.loader import parse

    steps = [{"op": "set_weights", **LOADED}] if load else []
    steps += [{"op": "call", "input": "g", "training": True},
              {"op": "call", "input": "g", "training": True},
              {"op": "predict", "input": "g"}]
    layer = {"features": 3, "momentum": MOMENTUM, "epsilon": EPS, "replicas": split}
    if synchronized:
        layer["synchronized"] = True
    return parse({"schema": 1, "name": "t", "layer": layer,
                  "inputs": {"g": G.astype(np.float64).tolist()}, "steps": steps})


def _observed(adapter, scenario) -> dict:
    """{(step, quantity): observation} of xbn's run."""
    from xbn.adapters.base import run_scenario

    return {(o["step"], o["quantity"]): o for o in run_scenario(adapter, scenario)}


def _plain(adapter) -> str:
    from xbn.adapters.base import run_scenario
    from xbn.scenario.loader import load, resolve

    return json.dumps([list(run_scenario(adapter, load(resolve(n)))) for n in PLAIN])


def _tf_by_hand(module, devices, split, synchronized, load=False) -> dict:
    """A MirroredStrategy custom loop: two training calls, then inference on every replica's
    rows; the statistics read on the host and per replica after each step."""
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(devices[:len(split)])
    with strategy.scope():
        inputs = module.Input(shape=(3,))
        bn = module.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS,
                                              synchronized=synchronized)
        model = module.Model(inputs, bn(inputs))
    if load:
        bn.set_weights([np.asarray(LOADED[k], np.float32) for k in
                        ("gamma", "beta", "moving_mean", "moving_variance")])
    bounds = np.cumsum([0, *split])
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(G[bounds[ctx.replica_id_in_sync_group]:
                                  bounds[ctx.replica_id_in_sync_group + 1]]))

    def run(training):
        @tf.function
        def step(v):
            return strategy.run(lambda t: model(t, training=training), args=(v,))
        return np.concatenate([o.numpy() for o in
                               strategy.experimental_local_results(step(values))])

    def copies(variable):
        # Keras 3 wraps the tf variable (.value); tf-keras weights are tf variables
        inner = variable if isinstance(variable, tf.Variable) else variable.value
        return np.stack([c.numpy() for c in strategy.experimental_local_results(inner)])

    steps = []
    for training in (True, True, False):
        output = run(training)
        steps.append({"output": output, "moving_mean": bn.moving_mean.numpy(),
                      "moving_variance": bn.moving_variance.numpy(),
                      "replica_moving_mean": copies(bn.moving_mean),
                      "replica_moving_variance": copies(bn.moving_variance)})
    return steps


def _compare(observed: dict, expected: list[dict], first: int = 0) -> None:
    for i, values in enumerate(expected):
        for quantity, want in values.items():
            obs = observed[(first + i, quantity)]
            assert obs["status"] == "ok", obs
            np.testing.assert_allclose(np.asarray(obs["value"]), want, rtol=2e-7, atol=1e-7,
                                       err_msg=f"step {first + i} {quantity}")


def _child_tf(framework_id: str) -> dict:
    from xbn.frameworks.registry import load_adapter

    adapter = load_adapter(framework_id)  # configures the logical devices (XBN_REPLICAS)
    import tensorflow as tf

    if framework_id == "tf-keras":
        import tf_keras as module
    else:
        import keras as module
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    plain_before = _plain(adapter)
    replicated = adapter  # run_scenario takes the worker's adapter to its replicated engine
    for synchronized in (True, False):
        expected = _tf_by_hand(module, devices, [3, 5], synchronized)
        _compare(_observed(replicated, _scenario([3, 5], synchronized)), expected)
        first = expected[0]
        if synchronized:  # the ground truth: count-weighted global statistics
            np.testing.assert_allclose(first["moving_mean"], 0.1 * GLOBAL_MEAN, atol=1e-6)
            assert abs(first["moving_variance"][0] - 1.954402) < 1e-6
            assert np.array_equal(first["replica_moving_variance"][0],
                                  first["replica_moving_variance"][1])
        else:
            own = first["replica_moving_mean"]
            assert not np.allclose(own[0], own[1])  # the copies diverged
            host = first["moving_mean"]
            if framework_id == "tf-keras":  # ON_READ, aggregation MEAN
                np.testing.assert_allclose(host, own.mean(axis=0), rtol=1e-6)
            else:  # MirroredVariable: the primary copy, replica 0's
                assert np.array_equal(host, own[0])
    # weights loaded on the strategy-scoped layer before training reach every replica
    expected = _tf_by_hand(module, devices, [3, 5], False, load=True)
    _compare(_observed(replicated, _scenario([3, 5], False, load=True)), expected, first=1)
    return {"plain_before": plain_before, "plain_after": _plain(adapter)}


def _child_jax() -> dict:
    import jax
    import keras

    from xbn.frameworks.registry import load_adapter

    replicated = load_adapter("keras-jax")  # run_scenario takes it to its engine
    refused = _observed(replicated, _scenario([4, 4], True))[(0, "output")]
    assert refused["status"] == "error" and refused["origin"] == "keras", refused
    assert "synchronized=True is only supported" in refused["message"]
    uneven = _observed(replicated, _scenario([3, 5], False))[(0, "output")]
    assert uneven["status"] == "n/a" and "evenly" in uneven["message"], uneven

    distribution = keras.distribution.DataParallel(devices=jax.devices()[:2])
    with distribution.scope():
        inputs = keras.Input(shape=(3,))
        bn = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS)
        model = keras.Model(inputs, bn(inputs))
        x = keras.distribution.distribute_tensor(G, distribution.get_data_layout(G.shape))
        expected = []
        for training in (True, True, None):
            output = model(x, training=True) if training else \
                model.predict(G, batch_size=8, verbose=0)
            shards = [np.asarray(s.data) for s in bn.moving_mean.value.addressable_shards]
            expected.append({"output": np.asarray(output),
                             "moving_mean": np.asarray(bn.moving_mean),
                             "replica_moving_mean": np.stack(shards)})
    # global statistics without any synchronization: the sharded batch's mean, on every device
    np.testing.assert_allclose(expected[0]["moving_mean"], 0.1 * G.mean(axis=0), rtol=1e-6)
    assert len(expected[0]["replica_moving_mean"]) == 2
    _compare(_observed(replicated, _scenario([4, 4], False)), expected)
    return {}


def _child_torch() -> dict:
    from xbn.frameworks.registry import load_adapter

    replicated = load_adapter("keras-torch")  # run_scenario takes it to its engine
    for synchronized, message in ((True, "ValueError: Argument synchronized=True"),
                                  (False, "AttributeError")):
        obs = _observed(replicated, _scenario([4, 4], synchronized))[(0, "output")]
        assert obs["status"] == "error" and obs["origin"] == "keras", obs
        assert message in obs["message"], obs
    return {}


def _main(framework_id: str, mode: str) -> None:
    if mode == "plain":
        from xbn.frameworks.registry import load_adapter

        result = {"plain_before": _plain(load_adapter(framework_id))}
    elif framework_id in ("keras", "tf-keras"):
        result = _child_tf(framework_id)
    elif framework_id == "keras-jax":
        result = _child_jax()
    else:
        result = _child_torch()
    print(json.dumps({"ok": framework_id, **result}))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
