"""JAX replicas (flax, flax-nnx, haiku, equinox ``replicas.py``) against the frameworks by hand.

The expectation is each framework driven the classic data-parallel way with no xbn code:
``jax.pmap`` with the framework's axis argument over the batch reshaped to [R, rows, C]
(state replicated with a leading device axis, as ``flax.jax_utils.replicate`` does), unequal
splits padded with zeros plus Flax's ``mask``, the padded rows' outputs dropped. xbn's engine
(``jax.shard_map`` over a Mesh) must give the same numbers through ``run_scenario``.

JAX fixes its device count when it is imported, and this pytest process already has one
device: everything that needs two host devices runs in one child process (``_child``), started
with ``--xla_force_host_platform_device_count=2``, which prints JSON.
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
STEPS = ("train", "train", "predict")
# (framework, split, synchronized, native options)
CASES = {
    "flax-sync-44": ("flax", [4, 4], True, {}),
    "flax-unsync-44": ("flax", [4, 4], False, {}),
    "flax-sync-35": ("flax", [3, 5], True, {}),
    "flax-unsync-35": ("flax", [3, 5], False, {}),
    "flax-jit-35": ("flax", [3, 5], True, {"replicas_engine": "jit"}),
    "nnx-sync-44": ("flax-nnx", [4, 4], True, {}),
    "nnx-unsync-44": ("flax-nnx", [4, 4], False, {}),
    "nnx-sync-35": ("flax-nnx", [3, 5], True, {}),
    "haiku-sync-44": ("haiku", [4, 4], True, {}),
    "haiku-unsync-44": ("haiku", [4, 4], False, {}),
    "haiku-sync-35": ("haiku", [3, 5], True, {}),
    "equinox-sync-44": ("equinox", [4, 4], True, {"mode": "batch"}),
    "equinox-unsync-44": ("equinox", [4, 4], False, {"mode": "batch"}),
    "equinox-ema-44": ("equinox", [4, 4], True, {"mode": "ema"}),
    "equinox-unsync-35": ("equinox", [3, 5], False, {"mode": "batch"}),
    "equinox-jit-ema-44": ("equinox", [4, 4], True, {"replicas_engine": "jit", "mode": "ema"}),
}


# ------------------------------------------------------------- by hand (in the child only)


def _pad(split):
    """[R, width, C] shards, zero-padded, and the [R, width, 1] mask of real rows."""
    width = max(split)
    xs = np.zeros((len(split), width, 3), np.float32)
    mask = np.zeros((len(split), width, 1), bool)
    start = 0
    for i, n in enumerate(split):
        xs[i, :n], mask[i, :n] = G[start:start + n], True
        start += n
    return xs, mask


def _unpad(y, split):
    return np.concatenate([np.asarray(y[i, :n]) for i, n in enumerate(split)])


def _replicate(tree, count):
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * count), tree)


def _record(y, mean, var):
    """One step: output, replica 0's statistics, every replica's ([R, C])."""
    mean, var = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (mean, var))
    return {"output": np.asarray(y, np.float64).tolist(), "moving_mean": mean[0].tolist(),
            "moving_variance": var[0].tolist(), "replica_moving_mean": mean.tolist(),
            "replica_moving_variance": var.tolist()}


def _hand_flax(split, sync, native):
    import flax.linen as nn
    import jax

    xs, mask = _pad(split)
    masked = len(set(split)) > 1
    count = len(split)
    init = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPS).init(
        jax.random.key(0), np.zeros((1, 3), np.float32), use_running_average=True)
    params, stats = init["params"], _replicate(init["batch_stats"], count)
    records = []
    if native.get("replicas_engine") == "jit":  # SPMD: a sharded batch, no axis name
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        bn = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPS)
        mesh = Mesh(np.array(jax.devices()[:count]), ("d",))
        flat = jax.device_put(xs.reshape(-1, 3), NamedSharding(mesh, P("d")))
        flat_mask = jax.device_put(mask.reshape(-1, 1), NamedSharding(mesh, P("d")))
        variables = {"params": params, "batch_stats": init["batch_stats"]}

        @jax.jit
        def train(variables, x, m):
            y, new = bn.apply(variables, x, use_running_average=False, mask=m,
                              mutable=["batch_stats"])
            return y, {"params": variables["params"], **new}

        for kind in STEPS:
            if kind == "train":
                y, variables = train(variables, flat, flat_mask)
            else:
                y = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=True))(variables, flat)
            s = variables["batch_stats"]
            records.append(_record(_unpad(np.asarray(y).reshape(xs.shape), split),
                                   [s["mean"]] * count, [s["var"]] * count))
        return records
    bn = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPS, axis_name="d" if sync else None)

    def train(stats, x, m):
        y, new = bn.apply({"params": params, "batch_stats": stats}, x,
                          use_running_average=False, mutable=["batch_stats"],
                          **({"mask": m} if masked else {}))
        return y, new["batch_stats"]

    def predict(stats, x):
        return bn.apply({"params": params, "batch_stats": stats}, x, use_running_average=True)

    for kind in STEPS:
        if kind == "train":
            y, stats = jax.pmap(train, axis_name="d")(stats, xs, mask)
        else:
            y = jax.pmap(predict, axis_name="d")(stats, xs)
        records.append(_record(_unpad(y, split), stats["mean"], stats["var"]))
    return records


def _hand_nnx(split, sync, native):
    import jax
    from flax import nnx

    xs, mask = _pad(split)
    masked = len(set(split)) > 1
    model = nnx.BatchNorm(3, momentum=MOMENTUM, epsilon=EPS, axis_name="d" if sync else None,
                          rngs=nnx.Rngs(0))
    graphdef, stats, params = nnx.split(model, nnx.BatchStat, ...)
    stats = _replicate(stats, len(split))

    def step(stats, x, m, training):
        bn = nnx.merge(graphdef, stats, params)
        y = bn(x, use_running_average=not training, **({"mask": m} if masked else {}))
        return y, nnx.state(bn, nnx.BatchStat)

    records = []
    for kind in STEPS:
        y, new = jax.pmap(lambda s, x, m, t=kind == "train": step(s, x, m, t), axis_name="d")(
            stats, xs, mask)
        if kind == "train":
            stats = new
        records.append(_record(_unpad(y, split), stats["mean"][...], stats["var"][...]))
    return records


def _hand_haiku(split, sync, native):
    import haiku as hk
    import jax
    import jax.numpy as jnp

    xs, _ = _pad(split)
    kwargs = {"create_scale": True, "create_offset": True, "decay_rate": MOMENTUM, "eps": EPS}

    def forward(x, is_training, axis):
        return hk.BatchNorm(**kwargs, cross_replica_axis=axis)(x, is_training=is_training)

    init_fn = hk.transform_with_state(lambda x: forward(x, True, None))
    params, state = init_fn.init(None, jnp.zeros((1, 3), jnp.float32))
    state = _replicate(state, len(split))
    fn = hk.transform_with_state(lambda x, t: forward(x, t, "d" if sync else None))
    records = []
    for kind in STEPS:
        y, new = jax.pmap(lambda s, x, t=kind == "train": fn.apply(params, s, None, x, t),
                          axis_name="d")(state, xs)
        if kind == "train":
            state = new
        records.append(_record(_unpad(y, split), state["batch_norm/~/mean_ema"]["average"],
                               state["batch_norm/~/var_ema"]["average"]))
    return records


def _hand_equinox_jit(split, native):
    """Equinox's own multi-device recipe: filter_jit over a batch sharded with NamedSharding
    (no second axis name); the state is one copy."""
    import equinox as eqx
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:len(split)]), ("d",))
    x = jax.device_put(G, NamedSharding(mesh, P("d")))
    model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        3, axis_name="batch", eps=EPS, momentum=MOMENTUM, mode=native.get("mode", "ema"))

    @eqx.filter_jit
    def step(model, state, x):
        return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)

    records = []
    for kind in STEPS:
        if kind == "train":
            y, state = step(model, state, x)
        else:
            y, _ = step(eqx.nn.inference_mode(model), state, x)
        mean, var = state.get(model.ema_state_index)  # mode "ema": the statistics themselves
        records.append(_record(y, [mean] * len(split), [var] * len(split)))
    return records


def _hand_equinox(split, sync, native):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    if native.get("replicas_engine") == "jit":
        return _hand_equinox_jit(split, native)
    xs, _ = _pad(split)
    axis = ("batch", "d") if sync else "batch"
    model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        3, axis_name=axis, eps=EPS, momentum=MOMENTUM, mode=native["mode"])
    state = _replicate(state, len(split))

    def step(s, x, inference):
        return jax.vmap(lambda e, st: model(e, st, inference=inference), axis_name="batch",
                        in_axes=(0, None), out_axes=(0, None))(x, s)

    records = []
    for kind in STEPS:
        y, new = jax.pmap(lambda s, x, i=kind != "train": step(s, x, i), axis_name="d")(state, xs)
        if kind == "train":
            state = new
        hidden_mean, hidden_var = state.get(model.batch_state_index)
        counter = state.get(model.batch_counter)[:, None]
        scale = jnp.where(counter == 0, 1, 1 - MOMENTUM ** counter)  # Equinox's inference rule
        records.append(_record(_unpad(y, split), hidden_mean / scale, hidden_var / scale))
    return records


HAND = {"flax": _hand_flax, "flax-nnx": _hand_nnx, "haiku": _hand_haiku,
        "equinox": _hand_equinox}


def _by_hand(fw, split, sync, native):
    try:
        return {"records": HAND[fw](split, sync, native)}
    except Exception as exc:  # a framework's own refusal, compared with xbn's error row
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                "module": type(exc).__module__}


def _through_xbn(fw, split, sync, native):
    import time

    from xbn.adapters.base import run_scenario
    from xbn.frameworks.registry import load_adapter
    from xbn.scenario.loader import parse

    layer = {"features": 3, "layout": "NC", "momentum": MOMENTUM, "epsilon": EPS,
             "replicas": split, "synchronized": sync, "native": {fw: native}}
    steps = [{"op": "call", "input": "g", "training": True}] * 2 + [{"op": "predict",
                                                                     "input": "g"}]
    scenario = parse({"schema": 1, "name": "t", "layer": layer,
                      "inputs": {"g": G.astype(np.float64).tolist()}, "steps": steps})
    adapter = _ADAPTERS.setdefault(fw, load_adapter(fw))
    started = time.perf_counter()
    rows = list(run_scenario(adapter, scenario))
    return {"rows": rows, "seconds": time.perf_counter() - started}


_ADAPTERS: dict = {}


def _child() -> None:
    out = {}
    for name, (fw, split, sync, native) in CASES.items():
        out[name] = {"hand": _by_hand(fw, split, sync, native),
                     "xbn": _through_xbn(fw, split, sync, native)}
    print(json.dumps(out))


# ------------------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ)
    # first: XLA stops reading XLA_FLAGS at a token without "--"
    env["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 " +
                        env.get("XLA_FLAGS", "")).strip()
    env["JAX_PLATFORMS"] = "cpu"
    code = "import tests.adapters.test_replicas_jax as t; t._child()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _steps(rows):
    """run_scenario's rows as {step: {quantity: row}}."""
    out: dict = {}
    for row in rows:
        out.setdefault(row["step"], {})[row["quantity"]] = row
    return out


QUANTITIES = ("output", "moving_mean", "moving_variance", "replica_moving_mean",
              "replica_moving_variance")


@pytest.mark.parametrize("case", [c for c in CASES if c not in
                                  ("haiku-sync-35", "equinox-unsync-35", "equinox-ema-44")])
def test_replicas_match_the_framework_by_hand(results, case):
    hand, xbn = results[case]["hand"], _steps(results[case]["xbn"]["rows"])
    assert "records" in hand, hand
    for step, record in enumerate(hand["records"]):
        for q in QUANTITIES:
            row = xbn[step][q]
            assert row["status"] == "ok", (case, step, q, row)
            np.testing.assert_allclose(row["value"], record[q], rtol=1e-6, atol=1e-6,
                                       err_msg=f"{case} step {step} {q}")


def test_flax_pad_and_mask_gives_equal_weighted_statistics(results):
    """The issue's ground truth: Flax axis_name with pad+mask weights replicas equally."""
    equal = np.mean([G[:3].mean(0, dtype=np.float64), G[3:].mean(0, dtype=np.float64)], 0)
    np.testing.assert_allclose(equal, [3.324207, 3.743703, 4.197660], atol=1e-6)
    for case in ("flax-sync-35", "nnx-sync-35"):
        first = _steps(results[case]["xbn"]["rows"])[0]
        # Flax's running mean starts at 0: after one step it is (1 - momentum) * batch mean
        np.testing.assert_allclose(np.asarray(first["moving_mean"]["value"]) / (1 - MOMENTUM),
                                   equal, rtol=1e-5)
        g = G.astype(np.float64)
        glob = (g - g.mean(0)) / np.sqrt(g.var(0) + EPS)
        gap = np.abs(np.asarray(first["output"]["value"]) - glob).max()
        assert round(gap, 2) == 0.23, gap  # "output 0.23 away from the global one"


def test_flax_jit_engine_gives_global_statistics(results):
    """A jit over the sharded batch (no axis name) reduces over every real row."""
    first = _steps(results["flax-jit-35"]["xbn"]["rows"])[0]
    np.testing.assert_allclose(np.asarray(first["moving_mean"]["value"]) / (1 - MOMENTUM),
                               [3.989484, 4.450293, 4.941774], rtol=1e-6)
    # Flax's running variance starts at 1 and takes the biased global variance
    assert abs(first["moving_variance"]["value"][0] - 1.954402) < 1e-6


def test_jit_engine_runs_equinox_default_mode_with_global_statistics(results):
    """Where shard_map/pmap refuse Equinox's "ema" state, a jit over the sharded batch runs
    it: the first training call takes the global batch's statistics (biased variance)."""
    first = _steps(results["equinox-jit-ema-44"]["xbn"]["rows"])[0]
    np.testing.assert_allclose(first["moving_mean"]["value"], [3.989484, 4.450293, 4.941774],
                               rtol=1e-6)
    np.testing.assert_allclose(first["moving_variance"]["value"],
                               [10.544021, 11.704893, 12.828873], rtol=1e-6)


def test_without_mask_an_unequal_split_is_not_applicable(results):
    for case in ("haiku-sync-35", "equinox-unsync-35"):
        rows = results[case]["xbn"]["rows"]
        assert rows and all(r["status"] == "n/a" and "mask" in r["message"] for r in rows)


def test_equinox_ema_mode_refuses_mapped_state_as_equinox_does(results):
    """Equinox's default mode ("ema") writes a fresh flag into State, whose abstract type
    differs from the mapped old one's: Equinox's own ValueError by hand and in xbn."""
    hand, xbn = results["equinox-ema-44"]["hand"], _steps(results["equinox-ema-44"]["xbn"]["rows"])
    assert hand.get("error", "").startswith("ValueError: Old and new values"), hand
    row = xbn[0]["output"]
    assert row["status"] == "error" and row["origin"] == "equinox", row
    assert row["message"] == hand["error"]
