"""The edge switches (``empty_batch``, ``empty_gradient``, ``empty_predict``,
``traced_functions``; xbn/reference/edges.py): the reference under each value against a
derivation written out here in plain numpy, and the behaviours the profiles declare
(xbn/profiles/edges.py) checked on the frameworks driven by hand (torch in-process; Keras 3
on TensorFlow and tf-keras each in a subprocess, as tests/adapters/test_keras.py does), with
no xbn code in any expectation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from xbn.reference.batchnorm import ReferenceBatchNorm, Semantics
from xbn.scenario.loader import Layer, Optimizer

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(5)
A = RNG.normal(1.0, 2.0, (6, 2))
B = RNG.normal(-0.5, 1.5, (6, 2))
T = RNG.uniform(-1.0, 1.0, (6, 2))
EMPTY = np.zeros((0, 3))
STILL = Optimizer(name="sgd", lr=0.0)  # gamma and beta stay 1 and 0: only the EMA moves


def _bn(features=3, momentum=0.9, epsilon=1e-3, **switches) -> ReferenceBatchNorm:
    layer = Layer(features=features, momentum=momentum, epsilon=epsilon, dtype="float64")
    return ReferenceBatchNorm(layer, Semantics(**switches))


def _quiet(f, *args):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return f(*args)


# -------------------------------------------------------------- the reference, by derivation


def test_empty_batch_nan_averages_the_mean_of_no_rows():
    bn = _bn(empty_batch="nan")
    y = _quiet(bn.call, EMPTY, True)
    assert y.shape == (0, 3)
    # 0.9 * 0 + 0.1 * mean(no rows) = NaN; 0.9 * 1 + 0.1 * NaN = NaN
    assert np.isnan(bn.moving_mean).all() and np.isnan(bn.moving_variance).all()
    assert int(bn.batches_tracked()) == 1


def test_empty_batch_skip_keeps_the_statistics_and_counts_the_batch():
    bn = _bn(empty_batch="skip")
    _quiet(bn.call, EMPTY, True)
    assert bn.moving_mean.tolist() == [0.0] * 3 and bn.moving_variance.tolist() == [1.0] * 3
    assert int(bn.batches_tracked()) == 1
    x = RNG.normal(0.0, 1.0, (4, 3))  # a real batch afterwards is averaged in as usual
    bn.call(x, True)
    np.testing.assert_allclose(bn.moving_mean, 0.1 * x.mean(axis=0), rtol=1e-15)
    assert int(bn.batches_tracked()) == 2


@pytest.mark.parametrize("rule, expected", [("zero", 0.0), ("nan", np.nan)])
def test_empty_gradient(rule, expected):
    bn = _bn(empty_gradient=rule)
    out = _quiet(bn.grad, EMPTY, True, EMPTY)
    # gamma's gradient: sum over no rows of dy * x_hat = 0 ("zero"); that sum times the
    # per-channel factor rsqrt(NaN + eps) = NaN ("nan"); beta's: sum of no dy = 0 either way
    np.testing.assert_array_equal(out["grad_gamma"], np.full(3, expected))
    np.testing.assert_array_equal(out["grad_beta"], np.zeros(3))
    assert out["grad_input"].shape == (0, 3)


def test_empty_gradient_nan_with_finite_statistics_is_zero():
    bn = _bn(empty_gradient="nan")  # inference: running statistics 0 and 1, a finite factor
    out = _quiet(bn.grad, EMPTY, False, EMPTY)
    np.testing.assert_array_equal(out["grad_gamma"], np.zeros(3))


def test_empty_predict():
    assert _bn(empty_predict="runs").predict(EMPTY).shape == (0, 3)
    with pytest.raises(ValueError, match="empty batch"):
        _bn(empty_predict="error").predict(EMPTY)
    x = RNG.normal(0.0, 1.0, (2, 3))  # rows: predict runs under either value
    np.testing.assert_allclose(_bn(empty_predict="error").predict(x), x / np.sqrt(1.001))



def test_empty_batches_and_masks_warn_nothing():
    """The reference's NaN statistics of no rows are a modelled answer, not an accident: run
    under every framework's profile (and the rounding-bound corners, ``mean_error``/
    ``variance_error``), the built-in scenarios with an empty batch or a mask emit no
    RuntimeWarning ("Mean of empty slice", "invalid value encountered in divide"), which the
    conformance suite printed from xbn/reference/numerics.py and batchnorm.py."""
    from xbn.adapters.base import run_scenario
    from xbn.adapters.numpy.adapter import NumpyAdapter
    from xbn.frameworks.registry import FRAMEWORK_IDS
    from xbn.profiles.facts import semantics_of
    from xbn.scenario.loader import load

    profiles = {semantics_of(fid) for fid in FRAMEWORK_IDS} | {Semantics()}
    corners = {p.with_(mean_error=m, variance_error=v) for p in profiles
               for m, v in ((-1.0, 1.0), (1.0, -1.0))}
    for name in ("zero-size-batch", "mask-fully-masked", "mask-statistics"):
        scenario = load(f"builtin:{name}")
        for semantics in profiles | corners:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                list(run_scenario(NumpyAdapter("numpy", semantics), scenario))
            assert not caught, (name, semantics, [str(w.message) for w in caught])
    bn = _bn()  # and the values are still the NaN of no rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn.call(EMPTY, True)
        assert np.isnan(bn.moving_mean).all() and np.isnan(bn.moving_variance).all()
        assert bn.magnitudes()["moving_mean"] is None  # no finite term: no floor

def _normalized(x, mean, var, eps):
    return (x - mean) / np.sqrt(var + eps)


def _biased(x):
    return x.mean(axis=0), x.var(axis=0)


@pytest.mark.parametrize("rule", ["none", "until_compile", "until_compile_per_shape"])
def test_traced_functions(rule):
    """fit(a) [compile], predict(a), set 0.5/0.1, eager call(b), fit(b) [no compile],
    predict(a), fit(b) with a fresh optimizer [compile], predict(a); then new batch shapes:
    set epsilon 10, predict 4 rows (a new trace), set 1000, predict 3 rows (tf.function:
    the relaxed trace of the 4 rows; jax.jit: a new trace), predict 6 rows (its own trace)."""
    bn = _bn(features=2, traced_functions=rule)
    mean_a, var_a = _biased(A)
    mean_b, var_b = _biased(B)
    bn.fit(A, T, STILL, 1, None, True)
    mm, mv = 0.1 * mean_a, 0.9 + 0.1 * var_a
    np.testing.assert_allclose(bn.predict(A), _normalized(A, mm, mv, 1e-3), rtol=1e-13)
    bn.set_hyper(0.5, 0.1)
    bn.call(B, True)  # eager: the new momentum
    mm, mv = 0.5 * mm + 0.5 * mean_b, 0.5 * mv + 0.5 * var_b
    loss = bn.fit(B, T, STILL, 1, None, False)
    m, eps = (0.5, 0.1) if rule == "none" else (0.9, 1e-3)  # traced at the first fit
    np.testing.assert_allclose(loss, np.mean((_normalized(B, mean_b, var_b, eps) - T) ** 2),
                               rtol=1e-13)
    mm, mv = m * mm + (1 - m) * mean_b, m * mv + (1 - m) * var_b
    np.testing.assert_allclose(bn.moving_mean, mm, rtol=1e-13)
    np.testing.assert_allclose(bn.predict(A), _normalized(A, mm, mv, eps), rtol=1e-13)
    assert bn.epsilon == 0.1 and bn.momentum == 0.5  # the layer's own values are kept
    np.testing.assert_allclose(bn.call(A, False), _normalized(A, mm, mv, 0.1), rtol=1e-13)
    bn.fit(B, T, STILL, 1, None, True)  # a fresh optimizer compiles: the new values
    mm, mv = 0.5 * mm + 0.5 * mean_b, 0.5 * mv + 0.5 * var_b
    np.testing.assert_allclose(bn.moving_mean, mm, rtol=1e-13)
    np.testing.assert_allclose(bn.predict(A), _normalized(A, mm, mv, 0.1), rtol=1e-13)
    bn.set_hyper(None, 10.0)
    np.testing.assert_allclose(bn.predict(A[:4]), _normalized(A[:4], mm, mv, 10.0), rtol=1e-13)
    bn.set_hyper(None, 1000.0)
    eps = 10.0 if rule == "until_compile" else 1000.0
    np.testing.assert_allclose(bn.predict(A[:3]), _normalized(A[:3], mm, mv, eps), rtol=1e-13)
    eps = 1000.0 if rule == "none" else 0.1
    np.testing.assert_allclose(bn.predict(A), _normalized(A, mm, mv, eps), rtol=1e-13)


# ------------------------------------------------------------------ the frameworks, by hand


def test_torch_empty_batch_by_hand():
    """torch: statistics kept, the batch counted, grad of the weight 0, eval on it runs."""
    import torch

    bn = torch.nn.BatchNorm1d(3, momentum=0.1)
    e = torch.zeros(0, 3, requires_grad=True)
    y = bn(e)
    (y * torch.ones(0, 3)).sum().backward()
    assert bn.running_mean.tolist() == [0.0] * 3 and bn.running_var.tolist() == [1.0] * 3
    assert int(bn.num_batches_tracked) == 1
    assert bn.weight.grad.tolist() == [0.0] * 3 and bn.bias.grad.tolist() == [0.0] * 3
    bn.eval()
    with torch.no_grad():
        assert tuple(bn(torch.zeros(0, 3)).shape) == (0, 3)


def test_torch_sees_a_set_at_once_by_hand():
    import torch

    bn = torch.nn.BatchNorm1d(2, momentum=0.1, eps=1e-3).double()
    bn(torch.tensor(A))
    bn.momentum, bn.eps = 0.5, 0.1  # torch's momentum: the weight of the batch value
    bn(torch.tensor(B))
    mean_a, var_a = A.mean(axis=0), A.var(axis=0, ddof=1)  # torch feeds n/(n-1)
    mean_b, var_b = B.mean(axis=0), B.var(axis=0, ddof=1)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.5 * 0.1 * mean_a + 0.5 * mean_b,
                               rtol=1e-13)
    bn.eval()
    mv = 0.5 * (0.9 + 0.1 * var_a) + 0.5 * var_b
    y = bn(torch.tensor(A)).detach().numpy()
    np.testing.assert_allclose(y, (A - bn.running_mean.numpy()) / np.sqrt(mv + 0.1), rtol=1e-12)


_KERAS3 = """
import numpy as np, keras, tensorflow as tf
A, B, T = (np.asarray(v, np.float32) for v in ({A}, {B}, {T}))
inp = keras.Input(shape=(3,))
bn = keras.layers.BatchNormalization(momentum=0.9)
model = keras.Model(inp, bn(inp))
e = tf.zeros((0, 3))
with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(e, training=True) * tf.ones((0, 3)))
g = tape.gradient(loss, [bn.gamma, bn.beta])
assert np.isnan(bn.moving_mean.numpy()).all() and np.isnan(bn.moving_variance.numpy()).all()
assert np.isnan(g[0].numpy()).all() and (g[1].numpy() == 0).all(), g
try:
    model.predict(np.zeros((0, 3), np.float32), batch_size=0, verbose=0)
    raise SystemExit("Keras 3 predicted on an empty batch")
except UnboundLocalError as exc:
    assert "batch_outputs" in str(exc)
# set momentum/epsilon: predict and fit keep the traced values until compile()
inp = keras.Input(shape=(2,))
bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
model = keras.Model(inp, bn(inp))
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
model.fit(A, T, batch_size=6, epochs=1, shuffle=False, verbose=0)
model.predict(A, batch_size=6, verbose=0)
bn.momentum, bn.epsilon = 0.5, 0.1
mm, mv = bn.moving_mean.numpy().astype(np.float64), bn.moving_variance.numpy().astype(np.float64)
model.fit(B, T, batch_size=6, epochs=1, shuffle=False, verbose=0)
mb, vb = B.astype(np.float64).mean(0), B.astype(np.float64).var(0)
np.testing.assert_allclose(bn.moving_mean.numpy(), 0.9 * mm + 0.1 * mb, atol=1e-5)
mm, mv = 0.9 * mm + 0.1 * mb, 0.9 * mv + 0.1 * vb
y = model.predict(A, batch_size=6, verbose=0)
np.testing.assert_allclose(y, (A - mm) / np.sqrt(mv + 1e-3), rtol=1e-4, atol=1e-5)
y = model(A, training=False).numpy()  # eager: the new epsilon
np.testing.assert_allclose(y, (A - mm) / np.sqrt(mv + 0.1), rtol=1e-4, atol=1e-5)
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
model.fit(B, T, batch_size=6, epochs=1, shuffle=False, verbose=0)
np.testing.assert_allclose(bn.moving_mean.numpy(), 0.5 * mm + 0.5 * mb, atol=1e-5)
mm, mv = 0.5 * mm + 0.5 * mb, 0.5 * mv + 0.5 * vb
model.predict(A, batch_size=6, verbose=0)  # the first shape since compile: epsilon 0.1
bn.epsilon = 10.0  # a new batch shape traces again (tf.function: one relaxed trace)
y = model.predict(A[:4], batch_size=4, verbose=0)
np.testing.assert_allclose(y, (A[:4] - mm) / np.sqrt(mv + 10.0), rtol=1e-4, atol=1e-5)
bn.epsilon = 1000.0
y = model.predict(A[:3], batch_size=3, verbose=0)  # reuses the relaxed trace
np.testing.assert_allclose(y, (A[:3] - mm) / np.sqrt(mv + 10.0), rtol=1e-4, atol=1e-5)
y = model.predict(A, batch_size=6, verbose=0)  # its own trace
np.testing.assert_allclose(y, (A - mm) / np.sqrt(mv + 0.1), rtol=1e-4, atol=1e-5)
print("ok")
"""

_KERAS3_JAX = """
import numpy as np, keras
A = np.asarray({A}, np.float32)
inp = keras.Input(shape=(2,))
bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
model = keras.Model(inp, bn(inp))
model.predict(A, batch_size=6, verbose=0)
mm, mv = bn.moving_mean.numpy().astype(np.float64), bn.moving_variance.numpy().astype(np.float64)
for rows, eps in ((4, 10.0), (3, 1000.0)):  # jax.jit: a trace per shape, each at its values
    bn.epsilon = eps
    y = model.predict(A[:rows], batch_size=rows, verbose=0)
    np.testing.assert_allclose(y, (A[:rows] - mm) / np.sqrt(mv + eps), rtol=1e-4, atol=1e-5)
y = model.predict(A, batch_size=6, verbose=0)  # the first shape's trace: epsilon 0.001
np.testing.assert_allclose(y, (A - mm) / np.sqrt(mv + 1e-3), rtol=1e-4, atol=1e-5)
print("ok")
"""

_TF_KERAS = """
import numpy as np, tensorflow as tf, tf_keras
inp = tf_keras.Input(shape=(3,))
bn = tf_keras.layers.BatchNormalization(momentum=0.9)
model = tf_keras.Model(inp, bn(inp))
e = tf.zeros((0, 3))
with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(e, training=True) * tf.ones((0, 3)))
g = tape.gradient(loss, [bn.gamma, bn.beta])
assert np.isnan(bn.moving_mean.numpy()).all() and np.isnan(g[0].numpy()).all(), g
try:
    model.predict(e, batch_size=0, verbose=0)
    raise SystemExit("tf-keras predicted on an empty batch")
except ValueError as exc:
    assert "Expected batch_size to be positive" in str(exc), exc
print("ok")
"""

# virtual_batch_size 2 on a batch of 5 (xbn/profiles/edges.py ghost_batch_remainder = "error"):
# the exception and the first line of its message, as xbn's error rows keep it
# (xbn/adapters/errors.py describe_exception), where tf-keras meets the reshape
_TF_KERAS_GHOSTS = """
import numpy as np, tensorflow as tf, tf_keras
A = np.asarray({A}, np.float32)[:5]
def model():
    tf_keras.backend.clear_session()
    inp = tf_keras.Input(shape=(2,))
    bn = tf_keras.layers.BatchNormalization(momentum=0.5, virtual_batch_size=2)
    m = tf_keras.Model(inp, bn(inp))
    m.compile(optimizer=tf_keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    return m, bn
def refused(f):
    try:
        f()
    except Exception as exc:
        lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
        return type(exc).__name__, lines[0], " ".join(lines)
    raise SystemExit("no error")
m, bn = model()
eager = refused(lambda: m(tf.constant(A), training=True))
assert eager[0] == "InvalidArgumentError" and "Input to reshape is a tensor with 10 values, but " \
    "the requested shape requires a multiple of 4" in eager[2], eager
x = tf.constant(A)
with tf.GradientTape() as tape:
    tape.watch(x)
    taped = refused(lambda: m(x, training=True))
assert taped[0] == "InvalidArgumentError" and "Input to reshape is a tensor with" in taped[2]
assert (bn.moving_mean.numpy() == 0).all()
y = m(tf.constant(A), training=False).numpy()  # inference: [-1, 1, ...] reshapes anything
np.testing.assert_allclose(y, A / np.sqrt(1.001), rtol=1e-6)
assert m.predict(A, batch_size=5, verbose=0).shape == (5, 2)
traced = refused(lambda: m.fit(A, A, batch_size=5, epochs=1, shuffle=False, verbose=0))
assert traced[0] == "ValueError" and traced[1] == "in user code:", traced
assert "Dimension size must be evenly divisible by 4 but is 10" in traced[2], traced
m, bn = model()  # batches of 4 and 1: the trace made for 4 rows fails on the last row
ran = refused(lambda: m.fit(A, A, batch_size=4, epochs=1, shuffle=False, verbose=0))
assert ran[0] == "InvalidArgumentError" and "batch_normalization/Reshape" in ran[2], ran
ghosts = A[:4].astype(np.float64)[[0, 2]], A[:4].astype(np.float64)[[1, 3]]
np.testing.assert_allclose(bn.moving_mean.numpy().reshape(-1),  # the first batch's update
                           0.5 * np.mean([g.mean(axis=0) for g in ghosts], axis=0), rtol=1e-5)
print("ok")
"""


def _script(code: str, **env) -> None:
    arrays = {k: repr(v.tolist()) for k, v in (("A", A), ("B", B), ("T", T))}
    done = subprocess.run([sys.executable, "-c", code.replace("{A}", arrays["A"]).replace(
        "{B}", arrays["B"]).replace("{T}", arrays["T"])], capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.slow  # Keras and TensorFlow driven by hand in a process of their own
def test_keras3_tensorflow_by_hand():
    _script(_KERAS3, KERAS_BACKEND="tensorflow")


@pytest.mark.slow  # Keras and TensorFlow driven by hand in a process of their own
def test_tf_keras_by_hand():
    _script(_TF_KERAS)


@pytest.mark.slow  # Keras and TensorFlow driven by hand in a process of their own
def test_tf_keras_refuses_ghost_batches_that_do_not_divide_by_hand():
    """What xbn/profiles/edges.py declares for tf-keras' ghost_batch_remainder = "error", and
    that the forms it declares (type, fragment) are those of the messages measured here."""
    from xbn.profiles.refusals import declared_error

    _script(_TF_KERAS_GHOSTS)
    forms = declared_error("tf-keras", "ghost_batch_remainder").forms()
    assert forms == (("InvalidArgumentError", "Input to reshape is a tensor with"),
                     ("InvalidArgumentError", "batch_normalization/Reshape"),
                     ("ValueError", "in user code"))


@pytest.mark.slow  # Keras and TensorFlow driven by hand in a process of their own
def test_keras3_jax_retraces_per_shape_by_hand():
    _script(_KERAS3_JAX, KERAS_BACKEND="jax")
