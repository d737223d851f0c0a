"""The float64 reference against closed forms and finite differences (no framework involved)."""

from __future__ import annotations

import numpy as np
import pytest

from xbn.reference import ReferenceBatchNorm, Semantics
from xbn.scenario import Layer, Optimizer


def layer(**kw) -> Layer:
    return Layer(features=kw.pop("features", 2), **kw)


def test_seed_closed_form():
    """Feeding [[100]] n times: mean = 100 (1 - m^n), variance = m^n (batch variance is 0)."""
    bn = ReferenceBatchNorm(layer(features=1))
    x = np.array([[100.0]])
    for _ in range(1002):
        assert bn.call(x, True)[0, 0] == 0.0
    m = 0.99
    np.testing.assert_allclose(bn.moving_mean, [100 * (1 - m**1002)], rtol=1e-12)
    np.testing.assert_allclose(bn.moving_variance, [m**1002], rtol=1e-12)
    expected = 100 * m**1002 / np.sqrt(m**1002 + 1e-3)
    np.testing.assert_allclose(bn.call(x, False), [[expected]], rtol=1e-10)
    bn.trainable = False
    np.testing.assert_allclose(bn.call(x, True), [[expected]], rtol=1e-10)  # frozen: inference


def test_variance_update_switch():
    x = np.array([[1.0, 0.0], [3.0, 4.0], [5.0, 8.0]])
    biased = ReferenceBatchNorm(layer(momentum=0.0))
    unbiased = ReferenceBatchNorm(layer(momentum=0.0), Semantics(variance_update="unbiased"))
    biased.call(x, True)
    unbiased.call(x, True)
    np.testing.assert_allclose(biased.moving_variance, x.var(axis=0))
    np.testing.assert_allclose(unbiased.moving_variance, x.var(axis=0, ddof=1))


def test_cumulative_momentum_is_the_plain_average():
    rng = np.random.default_rng(0)
    bn = ReferenceBatchNorm(layer(momentum="cumulative"))
    batches = [rng.normal(size=(4, 2)) for _ in range(5)]
    for b in batches:
        bn.call(b, True)
    np.testing.assert_allclose(bn.moving_mean, np.mean([b.mean(0) for b in batches], axis=0))
    np.testing.assert_allclose(bn.moving_variance, np.mean([b.var(0) for b in batches], axis=0))


def test_bare_call_and_module_mode():
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    keras_like = ReferenceBatchNorm(layer())
    keras_like.call(x, None)
    np.testing.assert_array_equal(keras_like.moving_mean, [0, 0])  # inference, no update
    torch_like = ReferenceBatchNorm(layer(), Semantics(bare_call="module_mode"))
    torch_like.call(x, None)
    assert torch_like.moving_mean[0] != 0  # a fresh module trains
    torch_like.call(x, False)  # eval() from the flag, and it persists
    before = torch_like.moving_mean.copy()
    torch_like.call(x, None)
    np.testing.assert_array_equal(torch_like.moving_mean, before)


def test_batch_of_one_switch():
    x = np.array([[100.0, 1.0]])
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        ReferenceBatchNorm(layer(), Semantics(batch_of_one="error")).call(x, True)
    np.testing.assert_array_equal(ReferenceBatchNorm(layer()).call(x, True), [[0.0, 0.0]])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", ["NC", "NHWC", "NCHW"])
def test_backward_matches_finite_differences(training, layout):
    rng = np.random.default_rng(1)
    shape = {"NC": (5, 3), "NHWC": (2, 2, 3, 3), "NCHW": (2, 3, 2, 2)}[layout]
    axis = 1 if layout in ("NC", "NCHW") else -1
    lay = layer(features=3, layout=layout)
    x, w = rng.normal(size=shape), rng.normal(size=shape)
    bn = ReferenceBatchNorm(lay, axis=axis)
    bn.gamma = rng.normal(size=3)
    bn.beta = rng.normal(size=3)
    bn.moving_mean, bn.moving_variance = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    y, cache = bn.forward(x, training, update=False)
    grads = bn.backward(w, cache)

    def loss(xx=x, gamma=bn.gamma, beta=bn.beta):
        saved = bn.gamma, bn.beta
        bn.gamma, bn.beta = gamma, beta
        out = bn.forward(xx, training, update=False)[0]
        bn.gamma, bn.beta = saved
        return float(np.sum(out * w))

    h = 1e-6
    num_x = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        num_x[idx] = (loss(xx=x + e) - loss(xx=x - e)) / (2 * h)
    np.testing.assert_allclose(grads["grad_input"], num_x, rtol=1e-5, atol=1e-7)
    for name, key in (("gamma", "grad_gamma"), ("beta", "grad_beta")):
        base = getattr(bn, name)
        num = np.array([(loss(**{name: base + h * np.eye(3)[i]}) -
                         loss(**{name: base - h * np.eye(3)[i]})) / (2 * h) for i in range(3)])
        np.testing.assert_allclose(grads[key], num, rtol=1e-5, atol=1e-7)


def test_adam_first_step_moves_by_lr():
    """Adam's first step is lr * sign(g) (up to epsilon), in both epsilon placements."""
    for form in ("eps_hat", "paper"):
        bn = ReferenceBatchNorm(layer(features=1), Semantics(adam_form=form))
        x = np.array([[100.0]])
        bn.fit(x, x, Optimizer("adam", 0.001, 0.9, 0.999, 1e-7), 1, None, True)
        np.testing.assert_allclose(bn.beta, [0.001], rtol=1e-6)
        np.testing.assert_allclose(bn.moving_mean, [1.0])


def test_sgd_step_and_frozen_fit():
    x = np.array([[1.0], [3.0]])
    t = np.array([[0.0], [0.0]])
    bn = ReferenceBatchNorm(layer(features=1, epsilon=1e-3))
    loss = bn.fit(x, t, Optimizer("sgd", 0.5), 1, None, True)
    xhat = (x - 2) / np.sqrt(1 + 1e-3)
    np.testing.assert_allclose(loss, np.mean(xhat**2))
    np.testing.assert_allclose(bn.gamma, [1 - 0.5 * np.mean(2 * xhat * xhat)])
    frozen = ReferenceBatchNorm(layer(features=1))
    frozen.trainable = False
    frozen.fit(x, t, Optimizer("sgd", 0.5), 3, 1, True)
    np.testing.assert_array_equal(frozen.gamma, [1.0])
    np.testing.assert_array_equal(frozen.moving_mean, [0.0])  # Keras: frozen means inference


@pytest.mark.parametrize("steps_before", [0, 2])
def test_backward_through_running_statistics(steps_before):
    """Equinox-style EMA normalization: gradients flow through the batch share of the EMA."""
    import copy

    rng = np.random.default_rng(2)
    sem = Semantics(ema="seeded", training_normalization="running", initial_variance=0.0)
    bn = ReferenceBatchNorm(layer(features=2, momentum=0.8), sem, axis=1)
    for _ in range(steps_before):
        bn.call(rng.normal(size=(4, 2)), True)
    x, w = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))

    def loss(xx):
        return float(np.sum(copy.deepcopy(bn).forward(xx, True)[0] * w))

    grads = copy.deepcopy(bn)
    _, cache = grads.forward(x, True)
    analytic = grads.backward(w, cache)["grad_input"]
    h = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        numeric[idx] = (loss(x + e) - loss(x - e)) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rule", ["biased", "unbiased"])
def test_running_variance_is_the_layers_own_update(rule):
    from xbn.reference import running_variance

    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(n, 3)) for n in (5, 2, 9)]
    bn = ReferenceBatchNorm(layer(features=3, momentum=0.9, dtype="float64"),
                            Semantics(variance_update=rule))
    for x in xs:
        bn.call(x, True)
    got = running_variance([x.var(axis=0) for x in xs], [len(x) for x in xs], 0.9, rule)
    np.testing.assert_array_equal(got, bn.moving_variance)
    if rule == "unbiased":  # the Bessel factor's whole contribution, from a zero start
        excess = (running_variance([x.var(axis=0) for x in xs], [5, 2, 9], 0.9, rule, 0.0)
                  - running_variance([x.var(axis=0) for x in xs], [5, 2, 9], 0.9, "biased", 0.0))
        expected = np.zeros(3)
        for x in xs:
            expected = 0.9 * expected + 0.1 * x.var(axis=0) / (len(x) - 1)
        np.testing.assert_allclose(excess, expected, rtol=1e-12)
