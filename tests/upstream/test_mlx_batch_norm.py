"""MLX's own BatchNorm test, restated as an xbn scenario and run through xbn.

Restates ml-explore/mlx python/tests/test_nn.py::TestLayers::test_batch_norm (first part; lines
717-740 at 846d17622):
``mx.random.seed(42); x = mx.random.normal((5, 4))``, ``nn.BatchNorm(num_features=4,
affine=True)`` (MLX's defaults: momentum 0.1, eps 1e-5), fresh running statistics 0 and 1, one
training call, then ``running_mean`` ≈ [0.008929, 0.005680, -0.016092, 0.027778] and
``running_var`` ≈ [0.935544, 1.030691, 1.076463, 0.953224] (atol 1e-5; the unbiased values since
ml-explore/mlx#3817 "Fix BatchNorm running variance estimator": before it upstream expected the
biased [0.928435, 1.00455, 1.04117, 0.94258]), and in eval mode the
output normalized with those statistics. The input is drawn with MLX's own generator, as
upstream does, and handed to the scenario as literal values.

Each test asserts (a) upstream's values on MLX's observed rows, and (b) xbn's verdicts against
its reference (Keras 3 semantics, biased running variance): the output and running mean are
``same``; the running variance ``differs``, explained by ``variance_update=unbiased`` (MLX's
``mx.var(ddof=1)``), the switch MLX's profile declares.
"""

from __future__ import annotations

import numpy as np
import pytest

import xbn
from xbn.analysis.pipeline import analyze
from xbn.scenario.loader import parse

from ..frameworks import require_framework

pytestmark = pytest.mark.slow  # an MLX worker through xbn.run

EXPECTED_MEAN = [0.008929, 0.005680, -0.016092, 0.027778]
EXPECTED_VAR = [0.935544, 1.030691, 1.076463, 0.953224]


@pytest.fixture(scope="module")
def run():
    require_framework("mlx")
    import mlx.core as mx

    mx.random.seed(42)
    x = np.array(mx.random.normal((5, 4), dtype=mx.float32)).astype(np.float64)
    scenario = parse({
        "schema": 1, "name": "mlx-test-batch-norm",
        "layer": {"features": 4, "momentum": 0.9, "epsilon": 1e-5},  # MLX defaults 0.1, 1e-5
        "inputs": {"x": x.tolist()},
        "steps": [{"op": "call", "input": "x", "training": True},
                  {"op": "call", "input": "x", "training": False}]})
    result = xbn.run([scenario], ["numpy", "mlx"])
    diffs = analyze(result, "numpy", 16.0).diffs
    obs = {(o["step"], o["quantity"]): o for o in result.observations if o["framework"] == "mlx"}
    rows = {(r.step, r.quantity): r for r in diffs.itertuples(index=False)
            if r.framework == "mlx"}
    return x, obs, rows


def _value(obs, step, quantity):
    o = obs[(step, quantity)]
    assert o["status"] == "ok", o
    return np.asarray(o["value"], np.float64)


def test_running_statistics_after_one_training_call(run):
    _, obs, rows = run
    np.testing.assert_allclose(_value(obs, 0, "moving_mean"), EXPECTED_MEAN, atol=1e-5)
    np.testing.assert_allclose(_value(obs, 0, "moving_variance"), EXPECTED_VAR, atol=1e-5)
    assert rows[(0, "output")].verdict == "same"
    assert rows[(0, "moving_mean")].verdict == "same"
    variance = rows[(0, "moving_variance")]
    assert variance.verdict == "differs"
    assert "variance_update=unbiased" in variance.explanation


def test_running_variance_is_the_unbiased_estimate(run):
    """MLX#3817's point, on the same rows: 0.9 + 0.1 * var(x, ddof=1), not ddof=0."""
    x, obs, _ = run
    np.testing.assert_allclose(_value(obs, 0, "moving_variance"),
                               0.9 + 0.1 * x.var(axis=0, ddof=1), atol=1e-6)


def test_eval_mode_uses_the_running_statistics(run):
    x, obs, _ = run
    mean, var = _value(obs, 0, "moving_mean"), _value(obs, 0, "moving_variance")
    np.testing.assert_allclose(_value(obs, 1, "output"), (x - mean) / np.sqrt(var + 1e-5),
                               atol=1e-5)
