"""The float64 reference on replicas (xbn.reference.replicas) against the issue's ground truth
and against plain numpy derivations of every cross-replica switch; the loader's refusals; and
that the replica switches cost nothing in the explanation of a scenario without replicas."""

from __future__ import annotations

import numpy as np
import pytest

import xbn.explain.reruns as rerun_module
from xbn.adapters.base import run_scenario
from xbn.adapters.numpy.adapter import NumpyAdapter
from xbn.adapters.numpy.replicas import make_replicated
from xbn.comparison.diffs import DEFAULT_K, diff_table, observations_frame
from xbn.explain.search import explain_diffs
from xbn.profiles.facts import semantics_of
from xbn.reference.batchnorm import Semantics
from xbn.reference.semantics import REPLICA_SWITCHES
from xbn.scenario.loader import ScenarioError, builtin_paths, load

from .frameworks import require_framework

EPS, M = 1e-3, 0.9  # the built-in scenarios' epsilon and (Keras-convention) momentum
# the issue's input: arange(24).reshape(8, 3)**1.5 / 10 in float32, split [3, 5]
G = (np.arange(24).reshape(8, 3) ** 1.5 / 10).astype(np.float32).astype(np.float64)
A, B = G[:3], G[3:]


def _builtin(name: str):
    return load(next(p for p in builtin_paths() if p.stem == name))


def _run(name_or_scenario, **switches) -> dict:
    scenario = _builtin(name_or_scenario) if isinstance(name_or_scenario, str) \
        else name_or_scenario
    rows = run_scenario(NumpyAdapter("numpy", Semantics(**switches)), scenario)
    out = {}
    for o in rows:
        assert o["status"] in ("ok",), o
        out[(o["step"], o["quantity"])] = None if o["value"] is None else np.asarray(o["value"])
    return out


def _norm(x, mean, var):
    return (x - mean) / np.sqrt(var + EPS)


def _ema(old, new):
    return M * old + (1 - M) * new


def test_inputs_are_the_issues():
    assert np.array_equal(np.asarray(_builtin("replicas-unequal").inputs["g"]), G)


def test_synchronized_global_statistics_are_the_issues_ground_truth():
    mean, var = G.mean(axis=0), G.var(axis=0)  # count-weighted over all 8 rows, biased
    np.testing.assert_allclose(mean, [3.989484, 4.450293, 4.941774], atol=1e-6)
    np.testing.assert_allclose(var, [10.544021, 11.704893, 12.828873], atol=1e-6)
    got = _run("replicas-unequal")  # defaults: Keras 3 on TensorFlow, synchronized
    np.testing.assert_allclose(got[(0, "output")], _norm(G, mean, var), rtol=1e-12)
    np.testing.assert_allclose(got[(0, "moving_mean")], _ema(0.0, mean), rtol=1e-12)
    np.testing.assert_allclose(got[(0, "moving_variance")], _ema(1.0, var), rtol=1e-12)
    assert abs(got[(0, "moving_variance")][0] - 1.954402) < 1e-6  # the issue's, biased
    for q in ("replica_moving_mean", "replica_moving_variance"):  # both copies alike
        assert got[(0, q)].shape == (2, 3)
        np.testing.assert_array_equal(got[(0, q)][0], got[(0, q)][1])
    # predict: each replica normalizes its rows with its copy (here the same one)
    np.testing.assert_allclose(got[(1, "output")],
                               _norm(G, _ema(0.0, mean), _ema(1.0, var)), rtol=1e-12)


def test_equal_weight_is_the_mean_of_the_replicas_moments():
    mean = (A.mean(axis=0) + B.mean(axis=0)) / 2
    square = ((A**2).mean(axis=0) + (B**2).mean(axis=0)) / 2
    var = square - mean**2
    np.testing.assert_allclose(mean, [3.324207, 3.743703, 4.197660], atol=1e-6)
    got = _run("replicas-unequal", synchronized_statistics="equal_weight")
    np.testing.assert_allclose(got[(0, "output")], _norm(G, mean, var), rtol=1e-10)
    np.testing.assert_allclose(got[(0, "moving_mean")], _ema(0.0, mean), rtol=1e-12)
    np.testing.assert_allclose(got[(0, "moving_variance")], _ema(1.0, var), rtol=1e-10)
    # "output 0.23 away from the global one"
    away = np.abs(got[(0, "output")] - _norm(G, G.mean(axis=0), G.var(axis=0))).max()
    assert round(away, 2) == 0.23
    # equal shards: the two weightings coincide
    equal = _builtin("replicas-equal")
    a, b = _run(equal), _run(equal, synchronized_statistics="equal_weight")
    np.testing.assert_allclose(a[(0, "output")], b[(0, "output")], rtol=1e-9)


def test_synchronized_local_ignores_the_flag():
    got = _run("replicas-unequal", synchronized_statistics="local")
    want = np.concatenate([_norm(A, A.mean(0), A.var(0)), _norm(B, B.mean(0), B.var(0))])
    np.testing.assert_allclose(got[(0, "output")], want, rtol=1e-12)


@pytest.mark.parametrize("count", ["global", "local"])
def test_unbiased_running_variance_counts(count):
    got = _run("replicas-unequal", variance_update="unbiased", replica_variance_count=count)
    var = G.var(axis=0)
    n = {"global": (8, 8), "local": (3, 5)}[count]  # replica 0's and replica 1's n
    want = [_ema(1.0, var * k / (k - 1)) for k in n]
    np.testing.assert_allclose(got[(0, "replica_moving_variance")], want, rtol=1e-12)
    np.testing.assert_allclose(got[(0, "moving_variance")], want[0], rtol=1e-12)  # replica 0


def _unsynchronized_copies():
    """Each replica's own statistics after two training calls on its rows (no broadcast)."""
    copies = []
    for part in (A, B):
        mean, var = part.mean(axis=0), part.var(axis=0)
        copies.append((_ema(_ema(0.0, mean), mean), _ema(_ema(1.0, var), var)))
    return copies


def test_unsynchronized_first_replica_reads_replica_0s_diverged_copy():
    got = _run("replicas-unsynchronized")
    (m0, v0), (m1, v1) = _unsynchronized_copies()
    np.testing.assert_allclose(got[(1, "replica_moving_mean")], [m0, m1], rtol=1e-12)
    np.testing.assert_allclose(got[(1, "moving_mean")], m0, rtol=1e-12)
    np.testing.assert_allclose(got[(1, "moving_variance")], v0, rtol=1e-12)
    # inference: each replica's rows with that replica's own copy
    want = np.concatenate([_norm(A, m0, v0), _norm(B, m1, v1)])
    np.testing.assert_allclose(got[(2, "output")], want, rtol=1e-12)


def test_unsynchronized_mean_of_replicas():
    got = _run("replicas-unsynchronized", replica_readback="mean_of_replicas")
    (m0, v0), (m1, v1) = _unsynchronized_copies()
    np.testing.assert_allclose(got[(1, "moving_mean")], (m0 + m1) / 2, rtol=1e-12)
    np.testing.assert_allclose(got[(1, "moving_variance")], (v0 + v1) / 2, rtol=1e-12)
    np.testing.assert_allclose(got[(1, "replica_moving_variance")], [v0, v1], rtol=1e-12)
    want = np.concatenate([_norm(A, m0, v0), _norm(B, m1, v1)])  # copies used in replicas
    np.testing.assert_allclose(got[(2, "output")], want, rtol=1e-12)


def test_unsynchronized_broadcast_from_first():
    got = _run("replicas-unsynchronized", replica_readback="broadcast_from_first")
    a_mean, a_var, b_mean, b_var = A.mean(0), A.var(0), B.mean(0), B.var(0)
    # step 0: every copy starts from the same initial values, then its own rows
    np.testing.assert_allclose(got[(0, "replica_moving_mean")],
                               [_ema(0.0, a_mean), _ema(0.0, b_mean)], rtol=1e-12)
    # step 1: rank 0's buffers overwrite rank 1's before the forward, then each updates
    m0, v0 = _ema(0.0, a_mean), _ema(1.0, a_var)
    np.testing.assert_allclose(got[(1, "replica_moving_mean")],
                               [_ema(m0, a_mean), _ema(m0, b_mean)], rtol=1e-12)
    np.testing.assert_allclose(got[(1, "replica_moving_variance")],
                               [_ema(v0, a_var), _ema(v0, b_var)], rtol=1e-12)
    np.testing.assert_allclose(got[(1, "moving_mean")], _ema(m0, a_mean), rtol=1e-12)
    # predict: broadcast again, every row normalized with rank 0's statistics
    want = _norm(G, _ema(m0, a_mean), _ema(v0, a_var))
    np.testing.assert_allclose(got[(2, "output")], want, rtol=1e-12)
    np.testing.assert_array_equal(got[(2, "replica_moving_mean")][0],
                                  got[(2, "replica_moving_mean")][1])


def test_unsynchronized_global_readback_and_global_statistics():
    got = _run("replicas-unsynchronized", replica_readback="global")
    mean = np.mean([_ema(0.0, A.mean(0)), _ema(0.0, B.mean(0))], axis=0)  # one copy: the mean
    np.testing.assert_allclose(got[(0, "replica_moving_mean")], [mean, mean], rtol=1e-12)
    np.testing.assert_allclose(got[(0, "moving_mean")], mean, rtol=1e-12)
    # an engine that computes over the global batch anyway (a jit over a sharded array)
    got = _run("replicas-unsynchronized", unsynchronized_statistics="global")
    np.testing.assert_allclose(got[(0, "output")], _norm(G, G.mean(0), G.var(0)), rtol=1e-12)


REPLICATED = """
schema = 1
name = "rw"
[layer]
features = 3
momentum = 0.9
replicas = [3, 5]
[inputs]
g = { normal = { mean = 2.0, std = 3.0 }, shape = [8, 3], seed = 7 }
[[steps]]
op = "call"
input = "g"
training = true
[[steps]]
op = "set_weights"
moving_mean = [1.0, 2.0, 3.0]
moving_variance = 4.0
gamma = 2.0
[[steps]]
op = "predict"
input = "g"
[[steps]]
op = "call"
input = "g"
training = true
[[steps]]
op = "reset"
"""


def test_set_weights_and_reset_apply_to_every_replica(write_scenario):
    scenario = load(write_scenario(REPLICATED))
    x = np.asarray(scenario.inputs["g"])
    got = _run(scenario)
    mean, var = np.array([1.0, 2.0, 3.0]), np.full(3, 4.0)
    np.testing.assert_array_equal(got[(1, "replica_moving_mean")], [mean, mean])
    np.testing.assert_array_equal(got[(1, "replica_moving_variance")], [var, var])
    np.testing.assert_allclose(got[(2, "output")], 2 * _norm(x, mean, var), rtol=1e-6)
    # after a training call the copies differ; reset (torch's) zeroes them all
    assert not np.array_equal(*got[(3, "replica_moving_mean")])
    np.testing.assert_array_equal(got[(4, "replica_moving_mean")], np.zeros((2, 3)))
    np.testing.assert_array_equal(got[(4, "replica_moving_variance")], np.ones((2, 3)))
    np.testing.assert_array_equal(got[(4, "num_batches_tracked")], 0)


@pytest.mark.parametrize("replicas, step, key", [
    ("[3, 4]", "", "steps[0].input: a batch of 8 rows cannot be split as replicas [3, 4]"),
    ("[1, 1, 1, 1, 1, 1, 1, 1]", "", "steps[0].input: a batch of 4 rows cannot be split"),
    ("[4, 4]", 'op = "fit"\ntarget = "g"\noptimizer = { name = "sgd", lr = 0.1 }',
     "steps[0].op: fit is not supported with replicas"),
    ("[4, 4]", 'op = "grad"\nweights = "g"', "steps[0].op: grad is not supported with replicas"),
])
def test_loader_refuses(write_scenario, replicas, step, key):
    rows = 4 if replicas.count("1,") == 7 else 8
    text = f"""
schema = 1
name = "bad"
[layer]
features = 3
replicas = {replicas}
[inputs]
g = {{ constant = 1.0, shape = [{rows}, 3] }}
[[steps]]
{step or 'op = "call"'}
input = "g"
"""
    path = write_scenario(text, "bad.toml")
    with pytest.raises(ScenarioError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and key in message


def _explained(scenario, framework: str, semantics: Semantics):
    rows = list(run_scenario(NumpyAdapter("numpy"), scenario))
    # a pretend framework: the replicated reference under other switches, made directly
    # (Adapter.replicated() finds engines by the framework's family)
    theirs = list(run_scenario(make_replicated(NumpyAdapter(framework, semantics)), scenario))
    obs = observations_frame(rows + theirs)
    diffs = diff_table(obs, "numpy", DEFAULT_K)
    out = explain_diffs(diffs, obs, [scenario], "numpy", DEFAULT_K)
    return out[out["verdict"] != "same"]


def test_a_read_back_rule_is_explained_on_replicas():
    d = _explained(_builtin("replicas-unsynchronized"), "someframework",
                   Semantics(replica_readback="mean_of_replicas"))
    assert not d.empty
    assert set(d["explanation"]) == {"replica_readback=mean_of_replicas (bit-exact)"}
    d = _explained(_builtin("replicas-unequal"), "someframework",
                   Semantics(synchronized_statistics="equal_weight"))
    assert set(d["explanation"]) == {"synchronized_statistics=equal_weight (bit-exact)"}


class _Counting(NumpyAdapter):
    tried: list = []

    def __init__(self, framework_id, semantics=None):
        super().__init__(framework_id, semantics)
        _Counting.tried.append(self.semantics)


@pytest.mark.parametrize("framework, name", [("torch", "momentum-mapping"),
                                             ("flax", "framework-defaults"),
                                             ("tf-keras", "variance-update-spatial")])
def test_replica_switches_cost_nothing_without_replicas(monkeypatch, framework, name):
    """Every setting the search reruns for a scenario without replicas leaves the replica
    switches at their defaults: the search (and its cost) is the one it was before them,
    although these frameworks' profiles set a replica switch."""
    assert any(getattr(semantics_of(framework), s) != getattr(Semantics(), s)
               for s in REPLICA_SWITCHES)
    scenario = _builtin(name)
    assert not scenario.replicated
    _Counting.tried = []
    monkeypatch.setattr(rerun_module, "NumpyAdapter", _Counting)
    rows = list(run_scenario(NumpyAdapter("numpy"), scenario))
    theirs = list(run_scenario(NumpyAdapter(framework, semantics_of(framework)), scenario))
    obs = observations_frame(rows + theirs)
    explain_diffs(diff_table(obs, "numpy", DEFAULT_K), obs, [scenario], "numpy", DEFAULT_K)
    assert _Counting.tried, "nothing was searched: the test shows nothing"
    moved = [s for s in _Counting.tried
             if any(getattr(s, k) != getattr(Semantics(), k) for k in REPLICA_SWITCHES)]
    assert not moved


@pytest.mark.slow  # imports Keras on JAX in a fresh process: about 20 s
def test_keras_off_tensorflow_refuses_synchronized_as_its_profile_declares(tmp_path):
    """Keras 3 driven by hand on the JAX backend refuses synchronized=True; the reference under
    keras-jax's profile refuses the layer, and the profile's declared exception is Keras' own."""
    import os
    import subprocess
    import sys

    from xbn.profiles.refusals import error_mismatch

    require_framework("keras-jax")
    code = ("import keras\ntry:\n    keras.layers.BatchNormalization(synchronized=True)\n"
            "except Exception as exc:\n    print(f'{type(exc).__name__}: {exc}')\n")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    message = done.stdout.strip().splitlines()[-1]
    assert message.startswith("ValueError: "), done.stdout + done.stderr
    rows = list(run_scenario(NumpyAdapter("numpy", semantics_of("keras-jax")),
                             _builtin("replicas-unequal")))
    assert rows and all(o["status"] == "error" for o in rows)
    got = {"status": "error", "origin": "keras", "message": f"layer not built: {message}"}
    assert error_mismatch("keras-jax", got, rows[0]) is None
    # the TensorFlow backend's profile computes the global statistics instead
    assert all(o["status"] == "ok" for o in run_scenario(
        NumpyAdapter("numpy", semantics_of("keras")), _builtin("replicas-unequal")))


SPATIAL = """
schema = 1
name = "sp"
[layer]
features = 2
layout = "NCHW"
momentum = 0.5
replicas = [1, 2]
synchronized = {sync}
[inputs]
x = {{ normal = {{ mean = 1.0, std = 2.0 }}, shape = [3, 2, 2, 2], seed = 3 }}
[[steps]]
op = "call"
input = "x"
training = true
"""


@pytest.mark.parametrize("sync", [True, False])
def test_fused_variance_on_replicas(write_scenario, sync):
    """tf-keras' fused kernel (unbiased for 4-D float32) is off when synchronized: the
    running variance is then biased over all 12 values per channel; unsynchronized, each
    replica's fused kernel corrects over its own 4 or 8 values."""
    scenario = load(write_scenario(SPATIAL.format(sync=str(sync).lower())))
    x = np.moveaxis(np.asarray(scenario.inputs["x"]), 1, -1).reshape(3, -1, 2)
    got = _run(scenario, variance_update="fused")[(0, "replica_moving_variance")]
    if sync:
        var = x.reshape(-1, 2).var(axis=0)
        want = [0.5 + 0.5 * var] * 2
    else:
        parts = [x[:1].reshape(-1, 2), x[1:].reshape(-1, 2)]
        want = [0.5 + 0.5 * p.var(axis=0) * len(p) / (len(p) - 1) for p in parts]
    np.testing.assert_allclose(got, want, rtol=1e-10)
