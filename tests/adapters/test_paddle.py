"""The Paddle adapter against ``paddle.nn.BatchNorm*D`` driven by hand (no xbn in the loop).

Paddle runs in a child process (``keras_child.run_in_backend``): importing paddle after
TensorFlow in one interpreter crashes it (SIGSEGV, paddlepaddle 3.3.1 with tensorflow 2.21,
measured), and the suite imports TensorFlow elsewhere. The child runs this file as a script and
prints ``OK paddle`` when every check held. Comparisons are bit for bit: the adapter must make
exactly the calls a Paddle user makes. The biased running variance (Paddle#68159) is checked
against its derivation, 0.9 * 1 + 0.1 * var(x, ddof=0), in float64 from the float32 batch.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from tests.frameworks import require_framework

if __name__ != "__main__":
    require_framework("paddle")

X = np.random.default_rng(26).normal(2.0, 3.0, size=(6, 4, 5, 3)).astype(np.float32)
W = np.random.default_rng(27).uniform(-1, 1, size=X.shape).astype(np.float32)


@pytest.mark.slow  # imports paddle in a fresh interpreter (~10 s on a loaded 2-core machine)
def test_paddle_adapter_in_child() -> None:
    from tests.adapters.keras_child import run_in_backend

    run_in_backend(__file__, "paddle")


def _checks() -> None:
    import paddle

    from xbn.adapters.base import NotApplicable
    from xbn.frameworks.registry import load_adapter
    from xbn.scenario.loader import Layer, Optimizer, Step

    warnings.simplefilter("ignore")

    def same(a, b) -> None:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # 1. NHWC train then eval: the adapter passes data_format and Keras-direction momentum
    adapter = load_adapter("paddle")
    adapter.build(Layer(features=3, momentum=0.9, epsilon=1e-3, layout="NHWC"))
    y_train, y_eval = adapter.call(X, True), adapter.call(X, False)
    paddle.seed(0)
    bn = paddle.nn.BatchNorm2D(3, momentum=0.9, epsilon=1e-3, data_format="NHWC")
    bn.train()
    want_train = bn(paddle.to_tensor(X)).numpy()
    bn.eval()
    want_eval = bn(paddle.to_tensor(X)).numpy()
    same(y_train, want_train)
    same(y_eval, want_eval)
    state = adapter.state()
    same(state["moving_mean"], bn._mean.numpy())
    same(state["moving_variance"], bn._variance.numpy())

    # 2. Paddle#68159: the running variance takes the biased batch variance (n = 6*4*5 = 120)
    x64 = X.astype(np.float64)
    biased = 0.9 + 0.1 * x64.var(axis=(0, 1, 2))
    unbiased = 0.9 + 0.1 * x64.var(axis=(0, 1, 2), ddof=1)
    np.testing.assert_allclose(state["moving_variance"], biased, rtol=1e-6)
    assert np.all(np.abs(state["moving_variance"] - unbiased) > 1e-3)

    # 3. a batch of one value per channel: Paddle's kernel copies x and skips the update
    one = np.array([[4.0, -2.0, 0.5]])
    adapter.build(Layer(features=3, momentum=0.9, epsilon=1e-3))
    same(adapter.call(one, True), one.astype(np.float32))
    same(adapter.state()["moving_mean"], np.zeros(3, np.float32))

    # 4. weight_attr=False: a bias without a weight; bias_attr=False: the other way round
    adapter.build(Layer(features=3, center=True, scale=False))
    assert set(adapter.state()) == {"beta", "moving_mean", "moving_variance"}
    adapter.build(Layer(features=3, center=False, scale=True))
    assert set(adapter.state()) == {"gamma", "moving_mean", "moving_variance"}

    # 5. 16-bit layers: n/a (the CPU kernel is registered for float32/float64 only)
    try:
        adapter.build(Layer(features=3, dtype="float16"))
    except NotApplicable as exc:
        assert "float32 and float64" in str(exc)
    else:
        raise AssertionError("float16 built")

    # 6. gradient of sum(y * w) in training mode, against paddle's autograd by hand
    flat, wflat = X.reshape(-1, 3)[:10], W.reshape(-1, 3)[:10]
    adapter.build(Layer(features=3, momentum=0.9, epsilon=1e-3))
    got = adapter.grad(flat, True, wflat)
    paddle.seed(0)
    bn = paddle.nn.BatchNorm1D(3, momentum=0.9, epsilon=1e-3)
    xt = paddle.to_tensor(flat)
    xt.stop_gradient = False
    y = bn(xt)
    (y * paddle.to_tensor(wflat)).sum().backward()
    same(got["output"], y.numpy())
    same(got["grad_input"], xt.grad.numpy())
    same(got["grad_gamma"], bn.weight.grad.numpy())
    same(got["grad_beta"], bn.bias.grad.numpy())

    # 7. fit: the dygraph loop with SGD, two mini-batches
    adapter.build(Layer(features=3, momentum=0.9, epsilon=1e-3))
    step = Step(index=0, op="fit", input="x", target="t", epochs=1, batch_size=5,
                optimizer=Optimizer(name="sgd", lr=0.1))
    adapter.fit(flat, wflat, step, True)
    paddle.seed(0)
    bn = paddle.nn.BatchNorm1D(3, momentum=0.9, epsilon=1e-3)
    opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=[bn.weight, bn.bias])
    for sl in (slice(0, 5), slice(5, 10)):
        loss = paddle.nn.functional.mse_loss(bn(paddle.to_tensor(flat[sl])),
                                             paddle.to_tensor(wflat[sl]))
        loss.backward()
        opt.step()
        opt.clear_grad()
    state = adapter.state()
    same(state["gamma"], bn.weight.numpy())
    same(state["moving_mean"], bn._mean.numpy())


if __name__ == "__main__":
    _checks()
    print(f"OK {sys.argv[1]}")
