"""``mask`` on replicas: the loader lifts its refusal; the replicated reference against a
derivation for each value of its switches; the Keras family on ``MirroredStrategy`` and Flax
under ``shard_map`` against the same engines driven by hand (a child process per framework,
started as the worker starts one with two replicas: ``XBN_REPLICAS=2`` and two XLA host
devices).

The facts measured (``xbn/scenarios/replicas-mask.toml``, rows [2, 2], 5 and 4 valid steps):
tf-keras all-reduces the mask-weighted sums and counts (global masked statistics); Flax pmeans
each replica's masked moments (equal weight); Keras 3's masked ``_moments`` never reaches its
synchronized ``ops.moments`` (each replica its own masked statistics: ``synchronized_mask =
"local"``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
X = np.array([[[1.0, 5.0], [2.0, 5.5], [0.0, 0.0]], [[3.0, 4.0], [0.5, 6.0], [7.0, 3.5]],
              [[-1.0, 4.5], [2.5, 5.0], [1.5, 6.5]], [[0.5, 4.0], [0.0, 0.0], [0.0, 0.0]]])
M = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]], np.float64)
MOMENTUM, EPS = 0.5, 1e-3
SPLIT = [2, 2]


def _layer(synchronized=True):
    from xbn.scenario.loader import Layer

    return Layer(features=2, layout="NLC", momentum=MOMENTUM, epsilon=EPS, replicas=SPLIT,
                 synchronized=synchronized)


def _moments(rows):
    v = X[rows][M[rows] != 0]
    return v.mean(0), v.var(0)


def derived(kind: str) -> dict:
    """Each replica's outputs and running statistics after one masked training call: the
    statistics of all valid steps ("global"), the mean of the replicas' masked means and mean
    squares ("equal_weight"), or each replica's own ("local")."""
    parts = [slice(0, 2), slice(2, 4)]
    local = [_moments(p) for p in parts]
    if kind == "global":
        stats = [_moments(slice(0, 4))] * 2
    elif kind == "equal_weight":
        mean = np.mean([m for m, _ in local], axis=0)
        square = np.mean([v + m * m for m, v in local], axis=0)
        stats = [(mean, square - mean * mean)] * 2
    else:
        stats = local
    out = np.concatenate([(X[p] - m) / np.sqrt(v + EPS) for p, (m, v) in zip(parts, stats,
                                                                               strict=True)])
    return {"output": out, "replica_moving_mean": np.stack([(1 - MOMENTUM) * m for m, _ in stats]),
            "replica_moving_variance": np.stack([MOMENTUM + (1 - MOMENTUM) * v for _, v in stats])}


def test_loader_takes_a_mask_with_replicas(write_scenario):
    from xbn.scenario.loader import ScenarioError, resolve
    from xbn.scenario.loader import load as load_file

    scenario = load_file(resolve("replicas-mask"))
    assert scenario.replicated and scenario.steps[0].mask == "m"
    text = (ROOT / "xbn" / "scenarios" / "replicas-mask.toml").read_text().replace(
        'op = "call"\ninput = "x"\ntraining = true\nmask = "m"',
        'op = "grad"\ninput = "x"\ntraining = true\nweights = "x"\nmask = "m"')
    with pytest.raises(ScenarioError, match="steps\\[0\\].op: grad is not supported with replicas"):
        load_file(write_scenario(text))


@pytest.mark.parametrize(("switches", "kind"), [
    ({}, "global"),  # the reference's defaults (Keras 3's switches otherwise, but "synchronized")
    ({"synchronized_statistics": "equal_weight", "mask": "weighted_nan"}, "equal_weight"),
    ({"synchronized_mask": "local"}, "local"),
])
def test_replicated_reference_matches_the_derivation(switches, kind):
    from xbn.adapters.numpy.replicas import ReplicatedNumpyAdapter
    from xbn.reference.batchnorm import Semantics

    ad = ReplicatedNumpyAdapter("numpy", Semantics(**switches))
    ad.build(_layer())
    got = ad.call_masked(X, True, M)
    want = derived(kind)
    np.testing.assert_allclose(got, want["output"], rtol=1e-12, atol=1e-12)
    state = ad.state()
    for q in ("replica_moving_mean", "replica_moving_variance"):
        np.testing.assert_allclose(state[q], want[q], rtol=1e-12, err_msg=q)


def test_a_wholly_masked_replica_makes_flax_statistics_nan():
    """pmean of a 0/0 local mean: every replica's statistics are NaN (Flax); the global
    count-weighted rule (tf-keras) still has the other replica's valid steps."""
    from xbn.adapters.numpy.replicas import ReplicatedNumpyAdapter
    from xbn.reference.batchnorm import Semantics

    mask = M.copy()
    mask[2:] = 0
    flax = ReplicatedNumpyAdapter("numpy", Semantics(synchronized_statistics="equal_weight",
                                                     mask="weighted_nan"))
    flax.build(_layer())
    flax.call_masked(X, True, mask)
    assert np.isnan(flax.state()["replica_moving_mean"]).all()
    tfk = ReplicatedNumpyAdapter("numpy", Semantics())
    tfk.build(_layer())
    tfk.call_masked(X, True, mask)
    np.testing.assert_allclose(tfk.state()["moving_mean"], (1 - MOMENTUM) * _moments(slice(0, 2))[0])


def test_frameworks_without_a_mask_are_not_applicable_on_replicas():
    from xbn.adapters.base import NotApplicable
    from xbn.adapters.numpy.replicas import ReplicatedNumpyAdapter
    from xbn.reference.batchnorm import Semantics

    ad = ReplicatedNumpyAdapter("numpy", Semantics(mask="none"))
    ad.build(_layer())
    with pytest.raises(NotApplicable, match="takes no mask"):
        ad.call_masked(X, True, M)


# ------------------------------------------------------------ the engines, by hand (slow)


def _run_child(framework_id: str) -> dict:
    from xbn.execution.environment import DETERMINISM_ENV
    from xbn.frameworks.registry import FRAMEWORKS

    env = {**os.environ, **DETERMINISM_ENV, **FRAMEWORKS[framework_id].env,
           "PYTHONPATH": str(ROOT), "XBN_REPLICAS": "2"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 " + env.get("XLA_FLAGS", "")
    proc = subprocess.run([sys.executable, __file__, framework_id], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a data-parallel engine in a child process per framework
@pytest.mark.parametrize(("framework_id", "kind"), [
    ("tf-keras", "global"), ("keras", "local"), ("flax", "equal_weight"),
    ("flax-nnx", "equal_weight")])
def test_engines_match_the_framework_by_hand(framework_id, kind):
    got = _run_child(framework_id)
    for q in ("output", "replica_moving_mean", "replica_moving_variance"):
        np.testing.assert_array_equal(np.asarray(got["xbn"][q]), np.asarray(got["hand"][q]),
                                      err_msg=q)
    want = derived(kind)
    for q, v in want.items():
        np.testing.assert_allclose(np.asarray(got["hand"][q]), v, rtol=2e-5, atol=1e-5,
                                   err_msg=q)


def _xbn(framework_id: str) -> dict:
    from xbn.frameworks.registry import load_adapter

    ad = load_adapter(framework_id).replicated()
    ad.build(_layer())
    out = ad.call_masked(X, True, M)
    state = ad.state()
    return {"output": np.asarray(out).tolist(),
            **{q: np.asarray(state[q]).tolist()
               for q in ("replica_moving_mean", "replica_moving_variance")}}


def _tf_by_hand(framework_id: str) -> dict:
    import tensorflow as tf

    if framework_id == "tf-keras":
        import tf_keras as keras
    else:
        import keras
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        inputs = keras.Input(shape=(None, 2))
        bn = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS, synchronized=True)
        model = keras.Model(inputs, bn(inputs))
    xs = [tf.constant(X[:2], tf.float32), tf.constant(X[2:], tf.float32)]
    ms = [tf.constant(M[:2] != 0), tf.constant(M[2:] != 0)]
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: xs[ctx.replica_id_in_sync_group])
    masks = strategy.experimental_distribute_values_from_function(
        lambda ctx: ms[ctx.replica_id_in_sync_group])

    @tf.function
    def step(v, m):
        return strategy.run(lambda t, mm: model(t, training=True, mask=mm), args=(v, m))

    y = np.concatenate([np.asarray(p) for p in strategy.experimental_local_results(step(values,
                                                                                        masks))])

    def copies(variable):
        inner = getattr(variable, "value", variable)
        inner = inner if isinstance(inner, tf.Variable) else variable
        return np.stack([np.asarray(c) for c in strategy.experimental_local_results(inner)])

    return {"output": y.tolist(), "replica_moving_mean": copies(bn.moving_mean).tolist(),
            "replica_moving_variance": copies(bn.moving_variance).tolist()}


def _flax_by_hand(framework_id: str) -> dict:
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
    x = jnp.asarray(X, jnp.float32)
    mask = jnp.asarray(M != 0)[..., None]
    if framework_id == "flax":
        import flax.linen as nn

        bn = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPS, axis_name="d")
        stats = bn.init(jax.random.key(0), x[:2], use_running_average=True)["batch_stats"]

        def body(xb, mb):
            y, mut = bn.apply({"params": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
                               "batch_stats": stats}, xb, use_running_average=False, mask=mb,
                              mutable=["batch_stats"])
            return y, mut["batch_stats"]["mean"][None], mut["batch_stats"]["var"][None]
    else:
        from flax import nnx

        model = nnx.BatchNorm(2, momentum=MOMENTUM, epsilon=EPS, axis_name="d",
                              rngs=nnx.Rngs(0))
        graphdef, stats = nnx.split(model)

        def body(xb, mb, st):
            m = nnx.merge(graphdef, st)
            y = m(xb, use_running_average=False, mask=mb)
            return y, m.mean[...][None], m.var[...][None]

    if framework_id == "flax":
        fn = jax.jit(jax.shard_map(lambda xb, mb, st: body(xb, mb), mesh=mesh,
                                   in_specs=(P("d"), P("d"), P()),
                                   out_specs=(P("d"), P("d"), P("d"))))
    else:
        fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("d"), P("d"), P()),
                                   out_specs=(P("d"), P("d"), P("d"))))
    y, mean, var = fn(x, mask, stats)
    return {"output": np.asarray(y).tolist(), "replica_moving_mean": np.asarray(mean).tolist(),
            "replica_moving_variance": np.asarray(var).tolist()}


def _child(framework_id: str) -> None:
    got = _xbn(framework_id)  # first: the adapter configures TensorFlow's logical devices
    hand = _flax_by_hand(framework_id) if framework_id.startswith("flax") else \
        _tf_by_hand(framework_id)
    print(json.dumps({"xbn": got, "hand": hand}))


if __name__ == "__main__":
    _child(sys.argv[1])
