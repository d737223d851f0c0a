"""PaddlePaddle's own BatchNorm op tests, restated as xbn scenarios and run through xbn.

Restates PaddlePaddle/Paddle test/legacy_test/test_batch_norm_op.py:

* ``_reference_training`` / ``_cal_mean_variance``: the batch mean and the *biased* variance
  ``E[x^2] - mean^2`` over N*H*W, ``y = (x - mean) / sqrt(var + epsilon) * scale + offset``;
* ``TestBatchNormOpTraining.test_forward_backward`` (shape [2, 3, 4, 5], momentum 0.9, epsilon
  1e-5, NCHW and NHWC): ``mean_out = saved_mean * (1 - momentum) + momentum * mean`` and
  ``variance_out = var_ref * (1 - momentum) + momentum * variance``, the running variance fed
  the biased variance (what Paddle#68159 reports against torch's unbiased one);
* ``TestBatchNormOpInference``: ``y = (x - mean) / sqrt(variance + epsilon) * scale + bias``
  with given running statistics (``_reference_testing``).

Each test asserts (a) what upstream asserts, computed here with numpy from Paddle's observed
values and the scenario's inputs, and (b) that xbn's verdict against its reference (Keras 3
semantics, biased variance: the same as Paddle's) is ``same`` for those rows. Upstream compares
with atol 1e-4 (``__assert_close(..., atol)``); so does this file.
"""

from __future__ import annotations

import numpy as np
import pytest

import xbn
from xbn.analysis.pipeline import analyze
from xbn.scenario.loader import parse

from ..frameworks import require_framework

pytestmark = pytest.mark.slow  # one Paddle worker (paddle's import alone is ~6 s)

SHAPE_NCHW = [2, 3, 4, 5]
RNG = np.random.default_rng(68159)
SCALE = RNG.uniform(0.5, 1.5, 3).round(3)
BIAS = RNG.uniform(-0.5, 0.5, 3).round(3)
MEAN = RNG.uniform(-1, 1, 3).round(3)
VAR = RNG.uniform(0.5, 2, 3).round(3)


def _scenario(layout: str):
    shape = SHAPE_NCHW if layout == "NCHW" else [2, 4, 5, 3]
    weights = {"gamma": SCALE.tolist(), "beta": BIAS.tolist()}
    stats = {**weights, "moving_mean": MEAN.tolist(), "moving_variance": VAR.tolist()}
    return parse({
        "schema": 1, "name": f"paddle-batch-norm-op-{layout.lower()}",
        "layer": {"features": 3, "layout": layout, "momentum": 0.9, "epsilon": 1e-5},
        "inputs": {"x": {"normal": {"mean": 0.0, "std": 1.0}, "shape": shape, "seed": 7}},
        "steps": [{"op": "set_weights", **weights},
                  {"op": "call", "input": "x", "training": True},
                  {"op": "set_weights", **stats},
                  {"op": "call", "input": "x", "training": False}]})


@pytest.fixture(scope="module")
def runs():
    require_framework("paddle")
    scenarios = [_scenario("NCHW"), _scenario("NHWC")]
    result = xbn.run(scenarios, ["numpy", "paddle"])
    diffs = analyze(result, "numpy", 16.0).diffs
    obs = {(o["scenario"], o["step"], o["quantity"]): o for o in result.observations
           if o["framework"] == "paddle"}
    verdicts = {(r.scenario, r.step, r.quantity): r.verdict
                for r in diffs.itertuples(index=False) if r.framework == "paddle"}
    return {s.name: s for s in scenarios}, obs, verdicts


def _value(obs, name, step, quantity):
    o = obs[(name, step, quantity)]
    assert o["status"] == "ok", o
    return np.asarray(o["value"], np.float64)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_training_forward_and_running_statistics(runs, layout):
    scenarios, obs, verdicts = runs
    name = f"paddle-batch-norm-op-{layout.lower()}"
    x = scenarios[name].inputs["x"]
    axes = (0, 2, 3) if layout == "NCHW" else (0, 1, 2)
    shape = (1, 3, 1, 1) if layout == "NCHW" else (1, 1, 1, 3)
    # _cal_mean_variance: E[x^2] - mean^2 over the reduced axes (biased)
    mean = x.mean(axis=axes)
    var = (x * x).sum(axis=axes) / (x.size / 3) - mean * mean
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) * \
        SCALE.reshape(shape) + BIAS.reshape(shape)
    np.testing.assert_allclose(_value(obs, name, 1, "output"), y, atol=1e-4)
    # mean_out = 0 * 0.1 + 0.9 * 0 ... upstream's momentum is Paddle's, the old value's weight
    np.testing.assert_allclose(_value(obs, name, 1, "moving_mean"), 0.9 * 0 + 0.1 * mean,
                               atol=1e-4)
    np.testing.assert_allclose(_value(obs, name, 1, "moving_variance"), 0.9 * 1 + 0.1 * var,
                               atol=1e-4)
    unbiased = 0.9 + 0.1 * var * x.size / 3 / (x.size / 3 - 1)
    assert np.all(np.abs(_value(obs, name, 1, "moving_variance") - unbiased) > 1e-4)
    for quantity in ("output", "moving_mean", "moving_variance"):
        assert verdicts[(name, 1, quantity)] == "same", quantity


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_inference_with_given_statistics(runs, layout):
    scenarios, obs, verdicts = runs
    name = f"paddle-batch-norm-op-{layout.lower()}"
    x = scenarios[name].inputs["x"]
    shape = (1, 3, 1, 1) if layout == "NCHW" else (1, 1, 1, 3)
    y = (x - MEAN.reshape(shape)) / np.sqrt(VAR.reshape(shape) + 1e-5) * \
        SCALE.reshape(shape) + BIAS.reshape(shape)
    np.testing.assert_allclose(_value(obs, name, 3, "output"), y, atol=1e-4)
    assert verdicts[(name, 3, "output")] == "same"
