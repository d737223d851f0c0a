"""PyTorch's own inductor BatchNorm tests, restated as xbn scenarios and run through xbn's
``torch+compile`` adapter (issue 23).

Restates pytorch/pytorch test/inductor/test_torchinductor.py (commit 00082dc2f, the version the
code index holds), class ``CommonTemplate``:

- ``test_batch_norm_2d``: ``nn.Sequential(nn.BatchNorm2d(10), nn.ReLU())``, ``m.eval()``,
  ``self.common(m, (torch.randn([2, 10, 8, 8]),), check_lowp=False)`` and the same on
  ``torch.randn([3, 10, 16, 16])``. ``common`` is ``check_model``: the module run eagerly and
  through ``compile_fx`` (inductor) must agree under ``self.assertEqual`` with no tolerance
  given, which for float32 is torch.testing's default, rtol 1.3e-6 and atol 1e-5. The ReLU
  after it is not a BatchNorm's and is left out: it maps values that agree within a tolerance
  to values that agree within it.
- ``test_batch_norm_2d_2`` ("From yolov3"): ``Conv2d(64, 128, 3, stride 2, padding 1,
  bias=False)`` then ``BatchNorm2d(128, eps=0.0001, momentum=0.03)`` in training mode, input
  ``randn(4, 64, 192, 256)``, ``self.assertEqual(mod(inp), torch.compile(mod)(inp))``. Upstream
  skips it on CPU ("requires CUDA"); here its BatchNorm alone runs on CPU, on an input of the
  convolution's output shape scaled down to [4, 128, 12, 16] (two cores), drawn normal; xbn's
  momentum is Keras' convention, so torch's 0.03 is written 0.97.

Each test asserts (a) upstream's assertion, computed here with numpy from the rows of the two
xbn runs (``torch`` eager and ``torch+compile``), and (b) that xbn's verdicts for
``torch+compile`` against its reference are ``same`` (both programs are accurate to a few
float32 ulps on these inputs), but for the running variance, which torch feeds the unbiased
batch variance (explained by ``variance_update=unbiased``), compiled as eager. ``torch.compile`` takes ~15 s cold per program: slow tier.
"""

from __future__ import annotations

import numpy as np
import pytest

import xbn
from xbn.analysis.pipeline import analyze
from xbn.scenario.loader import parse

from ..frameworks import require_framework

pytestmark = pytest.mark.slow  # torch.compile programs through an xbn worker

RTOL, ATOL = 1.3e-6, 1e-5  # torch.testing.assert_close's float32 defaults (self.assertEqual)


def _scenarios() -> list:
    rng = np.random.default_rng(2023)
    eval_2d = parse({
        "schema": 1, "name": "torch-inductor-batch-norm-2d",
        "layer": {"features": 10, "layout": "NCHW", "epsilon": 1e-5, "momentum": 0.9},
        "inputs": {"a": rng.standard_normal((2, 10, 8, 8)).astype(np.float32).tolist(),
                   "b": rng.standard_normal((3, 10, 16, 16)).astype(np.float32).tolist()},
        "steps": [{"op": "call", "input": "a", "training": False},
                  {"op": "call", "input": "b", "training": False}]})
    yolo = parse({
        "schema": 1, "name": "torch-inductor-batch-norm-2d-2",
        "layer": {"features": 128, "layout": "NCHW", "epsilon": 1e-4, "momentum": 0.97},
        "inputs": {"x": rng.standard_normal((4, 128, 12, 16)).astype(np.float32).tolist()},
        "steps": [{"op": "call", "input": "x", "training": True}]})
    return [eval_2d, yolo]


@pytest.fixture(scope="module")
def runs():
    require_framework("torch")
    scenarios = _scenarios()
    result = xbn.run(scenarios, ["numpy", "torch", "torch+compile"])
    diffs = analyze(result, "numpy", 16.0).diffs
    obs = {(o["framework"], o["scenario"], o["step"], o["quantity"]): o
           for o in result.observations}
    rows = {(r.scenario, r.step, r.quantity): r for r in diffs.itertuples(index=False)
            if r.framework == "torch+compile"}
    return obs, rows


def _value(obs, fid, scenario, step, quantity):
    o = obs[(fid, scenario, step, quantity)]
    assert o["status"] == "ok", o
    return np.asarray(o["value"], np.float64)


def _assert_equal_upstream(obs, scenario, step, quantity):
    """check_model's assertEqual: compiled (actual) against eager (expected)."""
    np.testing.assert_allclose(_value(obs, "torch+compile", scenario, step, quantity),
                               _value(obs, "torch", scenario, step, quantity),
                               rtol=RTOL, atol=ATOL)


def test_batch_norm_2d_eval_compiled_equals_eager(runs):
    obs, rows = runs
    name = "torch-inductor-batch-norm-2d"
    for step in (0, 1):
        _assert_equal_upstream(obs, name, step, "output")
        assert rows[(name, step, "output")].verdict == "same"


def test_batch_norm_2d_2_training_compiled_equals_eager(runs):
    obs, rows = runs
    name = "torch-inductor-batch-norm-2d-2"
    for quantity in ("output", "moving_mean", "moving_variance"):
        _assert_equal_upstream(obs, name, 0, quantity)
    for quantity in ("output", "moving_mean"):
        assert rows[(name, 0, quantity)].verdict == "same", quantity
    # torch feeds the running variance the unbiased batch variance, compiled as eager
    variance = rows[(name, 0, "moving_variance")]
    assert variance.verdict == "differs" and "variance_update=unbiased" in variance.explanation
