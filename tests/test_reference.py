"""The float64 reference against closed forms and finite differences (no framework involved)."""

from __future__ import annotations

import numpy as np
import pytest

from xbn.reference.batchnorm import ReferenceBatchNorm, Semantics
from xbn.scenario.loader import Layer, Optimizer


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
@pytest.mark.parametrize("layout", ["NC", "NHWC", "NCHW", "NC/3", "NCHW/2"])
def test_backward_matches_finite_differences(training, layout):
    """``/N``: ghost batches of virtual_batch_size N that does not divide the batch (7 rows in
    ghost batches of 3, 2 and 2; 3 items of 4 values in ghost batches of 2 and 1)."""
    rng = np.random.default_rng(1)
    layout, _, virtual = layout.partition("/")
    shape = {"NC": (7, 3) if virtual else (5, 3), "NHWC": (2, 2, 3, 3),
             "NCHW": (3, 3, 2, 2) if virtual else (2, 3, 2, 2)}[layout]
    axis = 1 if layout in ("NC", "NCHW") else -1
    lay = layer(features=3, layout=layout)
    lay.virtual_batch_size = int(virtual) if virtual else None
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


def test_ghost_batches_that_do_not_divide_the_batch():
    """virtual_batch_size 2 on 5 rows. "uneven": tf-keras' strided layout over ceil(5/2) = 3
    ghost batches, rows {0, 3}, {1, 4}, {2}, each normalized with its own moments, the running
    statistics fed the mean of the three means and biased variances. "error": refused, as
    tf-keras' reshape to [2, -1] fails; only in training (inference reshapes to [-1, 1])."""
    x = np.array([[1.0, -2.0], [4.0, 0.5], [2.0, 3.0], [7.0, 1.5], [-3.0, 2.5]])
    lay = layer(momentum=0.5, epsilon=1e-3)
    lay.virtual_batch_size = 2
    bn = ReferenceBatchNorm(lay)
    y = bn.call(x, True)
    groups = [[0, 3], [1, 4], [2]]
    expected = np.zeros_like(x)
    for rows in groups:
        g = x[rows]
        expected[rows] = (g - g.mean(axis=0)) / np.sqrt(g.var(axis=0) + 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-14)
    means = np.mean([x[r].mean(axis=0) for r in groups], axis=0)
    variances = np.mean([x[r].var(axis=0) for r in groups], axis=0)
    np.testing.assert_allclose(bn.moving_mean, 0.5 * means, rtol=1e-14)
    np.testing.assert_allclose(bn.moving_variance, 0.5 + 0.5 * variances, rtol=1e-14)

    refusing = ReferenceBatchNorm(lay, Semantics(ghost_batch_remainder="error"))
    with pytest.raises(ValueError, match="does not divide the batch size 5: ghost batches refused"):
        refusing.call(x, True)
    assert refusing.moving_mean.tolist() == [0.0, 0.0]  # refused before anything moved
    np.testing.assert_allclose(refusing.call(x, False), x / np.sqrt(1.001), rtol=1e-14)
    divided = ReferenceBatchNorm(lay, Semantics(ghost_batch_remainder="error"))
    np.testing.assert_array_equal(divided.call(x[:4], True), ReferenceBatchNorm(lay).call(x[:4], True))


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
    from xbn.reference.batchnorm import running_variance

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


# ---------------------------------------------------------------------------------------
# term magnitudes and rounding-error bounds (xbn.reference.numerics)


def test_magnitudes_of_a_gradient_that_cancels_to_zero():
    """grad with all-ones output weights: the exact input and gamma gradients are 0, and the
    magnitudes of the terms behind them are what the README derives."""
    x = np.array([[0.3, 5.0], [0.9, 1.0], [0.1, 2.5], [0.6, 4.0]])
    eps = 1e-3
    bn = ReferenceBatchNorm(layer(epsilon=eps, dtype="float64"))
    out = bn.grad(x, True, np.ones_like(x))
    assert np.max(np.abs(out["grad_input"])) < 1e-14 and np.max(np.abs(out["grad_gamma"])) < 1e-14
    inv = 1 / np.sqrt(x.var(axis=0) + eps)
    xhat = (x - x.mean(axis=0)) * inv
    got = bn.magnitudes()
    np.testing.assert_allclose(got["output"], np.max(np.abs(xhat)), rtol=1e-12)
    np.testing.assert_allclose(got["grad_input"],
                               np.max(inv * (1 + 1 + np.abs(xhat) * np.abs(xhat).mean(axis=0))),
                               rtol=1e-12)
    np.testing.assert_allclose(got["grad_gamma"], np.max(np.abs(xhat).sum(axis=0)), rtol=1e-12)
    assert got["grad_beta"] == 4.0


def test_the_floor_keeps_float32_rounding_of_a_zero_gradient_same():
    """The same gradient computed in float32 (the reference's native arithmetic) is off by
    rounding noise: beyond 16 eps of the float64 noise's own scale, within 16 eps of the
    terms' magnitude."""
    from xbn.comparison.diffs import measure

    rng = np.random.default_rng(3)
    x = np.round(rng.uniform(0, 1, size=(3, 3)).astype(np.float32), 6).astype(np.float64)
    ones = np.ones_like(x)
    exact = ReferenceBatchNorm(layer(features=3, epsilon=1e-5))
    ref = exact.grad(x, True, ones)["grad_input"]
    terms = exact.magnitudes()["grad_input"]
    native = ReferenceBatchNorm(layer(features=3, epsilon=1e-5), Semantics(precision="native"))
    y, cache = native.forward(x, True)
    dy = ones.astype(np.float32)  # a float32 backward in the reference's formula
    inv, c = cache["inv"].astype(np.float32), cache["centered"].astype(np.float32)
    f32 = (inv * dy - inv * dy.mean(axis=0) - inv**3 * c * (dy * c).mean(axis=0)).astype(np.float64)
    assert np.max(np.abs(f32)) > 0  # float32 leaves noise
    assert not measure(f32, ref, "float32")["within"]
    assert measure(f32, ref, "float32", terms=terms)["within"]


def test_running_mean_magnitude_follows_the_update():
    x = np.array([[-1.0, 2.0], [1.0, -2.0]])  # batch means exactly 0
    bn = ReferenceBatchNorm(layer(momentum=0.9, dtype="float64"))
    bn.call(x, True)
    np.testing.assert_array_equal(bn.moving_mean, [0.0, 0.0])
    np.testing.assert_allclose(bn.magnitudes()["moving_mean"], 0.1 * 2.0)
    debiased = ReferenceBatchNorm(layer(momentum=0.9, dtype="float64"), Semantics(ema="debiased"))
    for _ in range(3):
        debiased.call(x, True)
    np.testing.assert_allclose(debiased.magnitudes()["moving_mean"], 2.0)  # hidden / (1 - m^t)
    bn.set_weights({"moving_mean": np.array([3.0, -4.0])})
    assert bn.magnitudes()["moving_mean"] == 4.0


def _float32_moments(x: np.ndarray, order: np.ndarray) -> tuple:
    """Mean and both variance formulas in float32, summing in ``order`` one term at a time."""
    f = np.float32
    n = f(len(x))

    def total(terms):
        s = np.zeros(terms.shape[1], f)
        for i in order:
            s = (s + terms[i]).astype(f)
        return s

    x = x.astype(f)
    mean = (total(x) / n).astype(f)
    dev = (x - mean).astype(f)
    two_pass = (total((dev * dev).astype(f)) / n).astype(f)
    fast = ((total((x * x).astype(f)) / n).astype(f) - (mean * mean).astype(f)).astype(f)
    return mean, two_pass, fast


def test_error_bounds_hold_in_every_summation_order():
    """d and B (xbn.reference.numerics) bound float32 moments of inputs with mean 1e4 in any order; the
    one-pass error exceeds the two-pass bound, so the bounds tell the formulas apart."""
    from xbn.reference import numerics

    rng = np.random.default_rng(7)
    x = rng.normal(1e4, 1.0, size=(64, 3)).astype(np.float32).astype(np.float64)
    u = numerics.unit_roundoff("float32")
    d = numerics.mean_error_bound(x, u)
    bound = {a: numerics.variance_error_bound(x, a, u) for a in ("two_pass", "fast")}
    mean, var = x.mean(axis=0), x.var(axis=0)
    orders = [np.arange(64), np.arange(64)[::-1], np.argsort(x[:, 0])] + \
        [rng.permutation(64) for _ in range(20)]
    worst_fast = np.zeros(3)
    for order in orders:
        m, two_pass, fast = _float32_moments(x, order)
        assert np.all(np.abs(m - mean) <= d)
        assert np.all(np.abs(two_pass - var) <= bound["two_pass"])
        assert np.all(np.abs(fast - var) <= bound["fast"])
        worst_fast = np.maximum(worst_fast, np.abs(fast - var))
    assert np.all(bound["two_pass"] < 0.01 * var)  # the two-pass bound is tight here
    assert np.any(worst_fast > bound["two_pass"])  # and the one-pass error is beyond it


def test_error_fields_move_the_batch_statistics_and_are_not_switches():
    from xbn.reference import numerics

    assert "variance_error" not in Semantics().switches()
    x = np.array([[1.0, 10.0], [3.0, 14.0], [2.0, 9.0]])
    u = numerics.unit_roundoff("float32")
    for sign in (-1.0, 1.0):
        bn = ReferenceBatchNorm(layer(momentum=0.5),
                                Semantics(mean_error=sign, variance_error=sign))
        bn.call(x, True)
        np.testing.assert_allclose(
            bn.moving_mean, 0.5 * (x.mean(axis=0) + sign * numerics.mean_error_bound(x, u)))
        np.testing.assert_allclose(
            bn.moving_variance,
            0.5 + 0.5 * (x.var(axis=0) + sign * numerics.variance_error_bound(x, "two_pass", u)))


def test_reset_starts_the_cumulative_average_over():
    """After a reset the cumulative average is the next batch's statistics alone (torch's
    test_batchnorm_simple_average: reset_running_stats() zeroes num_batches_tracked too)."""
    a = np.array([[1.0, 2.0], [3.0, 6.0]])
    b = np.array([[0.0, 1.0], [4.0, 1.0]])
    bn = ReferenceBatchNorm(layer(momentum="cumulative"), Semantics(variance_update="unbiased"))
    bn.call(a, True)
    bn.gamma = np.array([2.0, 3.0])
    bn.reset()
    assert bn.batches_tracked() == 0
    np.testing.assert_array_equal(bn.moving_mean, [0.0, 0.0])
    np.testing.assert_array_equal(bn.moving_variance, [1.0, 1.0])
    np.testing.assert_array_equal(bn.gamma, [2.0, 3.0])  # parameters are kept
    bn.call(b, True)
    np.testing.assert_array_equal(bn.moving_mean, b.mean(axis=0))
    np.testing.assert_array_equal(bn.moving_variance, b.var(axis=0, ddof=1))
    assert bn.batches_tracked() == 1


def test_reset_none_is_refused_and_initial_variance_is_kept():
    from xbn.reference.batchnorm import NoSuchOperation

    with pytest.raises(NoSuchOperation):
        ReferenceBatchNorm(layer(), Semantics(reset="none")).reset()
    bn = ReferenceBatchNorm(layer(), Semantics(initial_variance=0.0))
    bn.call(np.array([[1.0, 2.0], [3.0, 6.0]]), True)
    bn.reset()
    np.testing.assert_array_equal(bn.moving_variance, [0.0, 0.0])
    untracked = ReferenceBatchNorm(layer(track_running_stats=False))
    untracked.reset()
    assert untracked.batches_tracked() is None


def test_zero_epsilon_divides_by_the_deviation_or_is_refused_in_training():
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    bn = ReferenceBatchNorm(layer(epsilon=0.0))
    np.testing.assert_allclose(bn.call(x, True), [[-1.0, -1.0], [1.0, 1.0]], rtol=1e-15)
    torch_like = ReferenceBatchNorm(layer(epsilon=0.0), Semantics(zero_epsilon="error"))
    with pytest.raises(ValueError, match="eps must be positive during training"):
        torch_like.call(x, True)
    np.testing.assert_array_equal(torch_like.call(x, False), x)  # running 0 and 1: accepted
