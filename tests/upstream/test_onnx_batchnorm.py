"""ONNX's own BatchNormalization reference, restated and run in ONNX Runtime's CPU provider.

Sources (expectations below are these formulas and numbers computed here, never xbn code):

- onnx/onnx at f7546912001bc31e92a238b17068a21b373d882e,
  onnx/backend/test/case/node/batch_normalization.py (the file was
  onnx/backend/test/case/node/batchnorm.py in older releases): lines 13-20
  ``_batchnorm_test_mode``: ``s * (x - mean) / np.sqrt(var + epsilon) + bias``; lines 23-30
  ``_batchnorm_training_mode``: ``saved_var = x.var(axis=axis)`` (numpy's population variance,
  no Bessel correction), ``output_mean = mean * momentum + saved_mean * (1 - momentum)`` (the
  Keras direction of momentum: the weight of the old value), and the output normalized with
  the batch's mean and population variance; onnx/defs/nn/defs.cc lines 1656-1668 (the
  operator's text: "ReduceVar refers to the population variance ... does not use sample size
  N - 1") and 1674 (inference).
- microsoft/onnxruntime, onnxruntime/test/providers/cpu/nn/batch_norm_op_test.cc,
  ``TEST(BatchNormTest, ForwardTrainingTestOpset14)`` (the file's last test; line numbers not
  available: the stored copy is read by offset and the repository is too large to fetch here):
  training_mode=1, momentum 0.1, epsilon 1e-5 on a 2x2x2x2 input, running statistics (1, 2)
  and (1, 2) -> running_mean (-0.1754, 0.303106), running_var (0.696052, 1.41316), restated in
  ``test_onnxruntime_forward_training_opset14`` with the test's own numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks import require_framework

EPS, MOMENTUM = 1e-2, 0.9


def _graph(opset: int, training: int):
    onnx = require_framework("onnx", module="onnx")
    h, T = onnx.helper, onnx.TensorProto
    outs = ["y"] + (["running_mean", "running_var"] if training else [])
    node = h.make_node("BatchNormalization", ["x", "s", "bias", "mean", "var"], outs,
                       epsilon=EPS, momentum=MOMENTUM, training_mode=training)
    inputs = [h.make_tensor_value_info("x", T.FLOAT, [2, 3, 2, 1])] + [
        h.make_tensor_value_info(n, T.FLOAT, [3]) for n in ("s", "bias", "mean", "var")]
    graph = h.make_graph([node], "bn", inputs,
                         [h.make_tensor_value_info(o, T.FLOAT, None) for o in outs])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def _run(model, feed):
    ort = require_framework("onnxruntime", module="onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _feed():
    rng = np.random.RandomState(0)
    return {"x": rng.randn(2, 3, 2, 1).astype(np.float32),
            "s": rng.randn(3).astype(np.float32), "bias": rng.randn(3).astype(np.float32),
            "mean": rng.randn(3).astype(np.float32),
            "var": rng.rand(3).astype(np.float32) + 0.5}


@pytest.mark.parametrize("opset", [15, 20])
def test_inference_mode_is_the_reference_formula(opset):
    f = _feed()
    (y,) = _run(_graph(opset, 0), f)
    c = (1, -1, 1, 1)
    expected = f["s"].reshape(c) * (f["x"] - f["mean"].reshape(c)) / np.sqrt(
        f["var"].reshape(c) + EPS) + f["bias"].reshape(c)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_training_mode_uses_population_variance_and_keras_momentum():
    f = _feed()
    y, running_mean, running_var = _run(_graph(15, 1), f)
    x = f["x"].astype(np.float64)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))  # population variance
    np.testing.assert_allclose(running_mean, f["mean"] * MOMENTUM + mean * (1 - MOMENTUM),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(running_var, f["var"] * MOMENTUM + var * (1 - MOMENTUM),
                               rtol=1e-5)
    bessel = var * 6 / 5  # torch's running variance would take this one: it must differ
    assert not np.allclose(running_var, f["var"] * MOMENTUM + bessel * (1 - MOMENTUM),
                           rtol=1e-5)
    c = (1, -1, 1, 1)
    expected = f["s"].reshape(c) * (x - mean.reshape(c)) / np.sqrt(var.reshape(c) + EPS) + \
        f["bias"].reshape(c)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_onnxruntime_forward_training_opset14():
    """ORT's own ForwardTrainingTestOpset14, its numbers as written there (tolerance: the
    test's 4-6 significant digits)."""
    onnx = require_framework("onnx", module="onnx")
    h, T = onnx.helper, onnx.TensorProto
    outs = ["Y", "running_mean", "running_var"]
    node = h.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], outs,
                       epsilon=1e-5, momentum=0.1, training_mode=1)
    inputs = [h.make_tensor_value_info("X", T.FLOAT, [2, 2, 2, 2])] + [
        h.make_tensor_value_info(n, T.FLOAT, [2]) for n in ("scale", "B", "mean", "var")]
    graph = h.make_graph([node], "bn", inputs,
                         [h.make_tensor_value_info(o, T.FLOAT, None) for o in outs])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 14)])
    x = np.array([-0.2953, 0.1180, 1.0973, -0.1931, -0.1999, -0.0237, 1.5181, 0.0076, -1.0830,
                  -1.5433, 0.4327, -0.9813, 0.7875, -0.4080, -2.3144, 1.5493],
                 np.float32).reshape(2, 2, 2, 2)
    feed = {"X": x, "scale": np.ones(2, np.float32), "B": np.zeros(2, np.float32),
            "mean": np.array([1, 2], np.float32), "var": np.array([1, 2], np.float32)}
    y, running_mean, running_var = _run(model, feed)
    np.testing.assert_allclose(y.ravel(), [0.0131, 0.5210, 1.7244, 0.1387, -0.2708, -0.1191,
                                           1.2089, -0.0922, -0.9548, -1.5203, 0.9077, -0.8298,
                                           0.5796, -0.4501, -2.0921, 1.2358], atol=1e-4)
    np.testing.assert_allclose(running_mean, [-0.1754, 0.303106], atol=1e-5)
    np.testing.assert_allclose(running_var, [0.696052, 1.41316], atol=1e-5)
    # the same numbers from the population variance (ORT's momentum 0.1 weighs the old value)
    population = x.astype(np.float64).var(axis=(0, 2, 3))
    np.testing.assert_allclose(running_var, 0.1 * feed["var"] + 0.9 * population, rtol=1e-5)
