"""The MLX adapter against ``mlx.nn.BatchNorm`` driven by hand (no xbn in the loop).

Comparisons are bit for bit: the adapter must make exactly the calls an MLX user makes (the
scenario's Keras momentum 0.9 becomes MLX's 0.1, channels-first data is moved to the last axis,
``mx.eval`` before values are read). The unbiased running variance is checked against its
derivation, and mx.var against numpy on offset data (ml-explore/mlx#4379).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks import require_framework

require_framework("mlx")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402

from xbn.adapters.base import NotApplicable, run_scenario  # noqa: E402
from xbn.frameworks.registry import load_adapter  # noqa: E402
from xbn.scenario.loader import Layer, Optimizer, Step, parse  # noqa: E402

X = np.random.default_rng(26).normal(2.0, 3.0, size=(6, 3, 4, 5)).astype(np.float32)  # NCHW
W = np.random.default_rng(27).uniform(-1, 1, size=X.shape).astype(np.float32)


def adapter(**layer):
    a = load_adapter("mlx")
    a.build(Layer(**{"features": 3, "momentum": 0.9, "epsilon": 1e-3, **layer}))
    return a


def same(a, b) -> None:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def hand(**kwargs) -> nn.BatchNorm:
    return nn.BatchNorm(3, momentum=0.1, eps=1e-3, **kwargs)


def test_nchw_train_then_eval_matches_hand_driven_module():
    a = adapter(layout="NCHW")
    y_train, y_eval, y_bare = a.call(X, True), a.call(X, False), a.call(X, None)
    bn = hand()
    # contiguous, as MLX users' channels-last data is: mx.array keeps a numpy view's strides,
    # and a reduction over a strided array sums in another order (measured: 1-ulp changes)
    xl = mx.array(np.ascontiguousarray(np.moveaxis(X, 1, -1)))
    want_train = bn(xl)
    mx.eval(want_train, bn.state)
    bn.eval()
    want_eval = bn(xl)
    mx.eval(want_eval)
    same(y_train, np.moveaxis(np.array(want_train), -1, 1))
    same(y_eval, np.moveaxis(np.array(want_eval), -1, 1))
    same(y_bare, y_eval)  # eval() persists: a bare call stays in eval mode
    state = a.state()
    same(state["moving_mean"], np.array(bn.running_mean))
    same(state["moving_variance"], np.array(bn.running_var))


def test_running_variance_is_unbiased_by_derivation():
    """0.9 * 1 + 0.1 * var(x, ddof=1) over the 6*4*5 = 120 values of each channel."""
    a = adapter(layout="NCHW")
    a.call(X, True)
    x64 = np.moveaxis(X, 1, -1).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(a.state()["moving_variance"], 0.9 + 0.1 * x64.var(0, ddof=1),
                               rtol=1e-6)


@pytest.mark.parametrize("shape", [(16, 2), (4096, 8)])
def test_mx_var_on_offset_data_small_reductions_are_accurate(shape):
    """The built-in large-mean scenario's size (16 rows) and 4096 rows per channel: within a
    float32 rounding error or two of the exact variance."""
    x = np.random.default_rng(131).normal(1e4, 0.5, size=shape).astype(np.float32)
    got = np.array(mx.var(mx.array(x), axis=0))
    np.testing.assert_allclose(got, x.astype(np.float64).var(axis=0), rtol=2e-3)


@pytest.mark.parametrize("shape,axes", [((65536, 3), (0,)), ((64, 32, 32, 3), (0, 1, 2)),
                                        ((3, 65536), (1,))])
def test_mx_var_on_offset_data_reproduces_mlx_4379(shape, axes):
    """ml-explore/mlx#4379 (mx.var wrong on offset data, Linux CPU) reproduces at 0.32.4 once a
    channel has 65536 values of mean 1e4: mx.mean accumulates in float32 (6.5e8, spacing 64)
    and is off by about 2.9, so the variance, the mean square deviation from that mean, is
    about 8.7 instead of 0.25, along the contiguous axis too (where numpy's pairwise sum stays
    exact). BatchNorm normalizes with it: a 64x32x32 NHWC batch of such values."""
    x = np.random.default_rng(131).normal(1e4, 0.5, size=shape).astype(np.float32)
    exact = x.astype(np.float64).var(axis=axes)
    got = np.array(mx.var(mx.array(x), axis=axes))
    mean_error = np.array(mx.mean(mx.array(x), axis=axes)) - x.astype(np.float64).mean(axis=axes)
    assert np.all(got > 20 * exact), got
    assert np.all(np.abs(mean_error) > 1.0), mean_error
    np.testing.assert_allclose(got, exact + mean_error ** 2, rtol=0.05)  # the derivation


def test_grad_matches_value_and_grad_by_hand():
    x, w = X[:, :, 0, 0], W[:, :, 0, 0]
    got = adapter().grad(x, True, w)
    bn = hand()

    def objective(params, xb):
        bn.update(params)
        y = bn(xb)
        return (y * mx.array(w)).sum(), y

    (_, y), (gp, gx) = mx.value_and_grad(objective, argnums=(0, 1))(
        bn.trainable_parameters(), mx.array(x))
    mx.eval(y, gp, gx)
    same(got["output"], np.array(y))
    same(got["grad_input"], np.array(gx))
    same(got["grad_gamma"], np.array(gp["weight"]))
    same(got["grad_beta"], np.array(gp["bias"]))


def test_fit_matches_the_mlx_training_loop():
    x, t = X[:, :, 0, 0], W[:, :, 0, 0]
    a = adapter()
    step = Step(index=0, op="fit", input="x", target="t", batch_size=3,
                optimizer=Optimizer(name="adam", lr=0.1))
    a.fit(x, t, step, True)
    bn, opt = hand(), optim.Adam(learning_rate=0.1, betas=[0.9, 0.999], eps=1e-7,
                                 bias_correction=True)
    step_fn = nn.value_and_grad(bn, lambda m, xb, tb: nn.losses.mse_loss(m(xb), tb))
    for sl in (slice(0, 3), slice(3, 6)):
        _, grads = step_fn(bn, mx.array(x[sl]), mx.array(t[sl]))
        opt.update(bn, grads)
        mx.eval(bn.state, opt.state)
    state = a.state()
    same(state["gamma"], np.array(bn.weight))
    same(state["moving_variance"], np.array(bn.running_var))


def test_refusals_are_mlx_own_or_not_applicable():
    with pytest.raises(NotApplicable, match="2-D, 3-D or 4-D"):
        adapter(layout="NCDHW")
    with pytest.raises(NotApplicable, match="one affine flag"):
        adapter(center=False, scale=True)
    with pytest.raises(ValueError, match="'eps' must be positive"):  # MLX's own check
        adapter(epsilon=0.0)
    with pytest.raises(ValueError, match="more than one value per channel"):
        adapter().call(np.array([[4.0, -2.0, 0.5]]), True)


def test_driver_reads_evaluated_statistics_after_each_step():
    """run_scenario reads state after every step: the lazy update must be there already."""
    scenario = parse({"schema": 1, "name": "t", "layer": {"features": 2, "momentum": 0.5},
                      "inputs": {"x": [[1.0, 2.0], [3.0, 6.0]]},
                      "steps": [{"op": "call", "input": "x", "training": True, "repeat": 2}]})
    rows = {o["quantity"]: o["value"] for o in run_scenario(load_adapter("mlx"), scenario)}
    # two updates with m = 0.5 towards the batch mean (2, 4): 0.75 * (2, 4)
    np.testing.assert_allclose(rows["moving_mean"], [1.5, 3.0])


@pytest.mark.parametrize("suffix", [".mlx.safetensors", ".mlx.npz"])
def test_convert_torch_to_mlx_round_trip(tmp_path, suffix):
    """``xbn convert`` of a trained torch BatchNorm1d into MLX weights: ``load_weights`` into
    an ``nn.BatchNorm`` (momentum 0.1, eps 1e-5, as ``xbn port --from torch --to mlx`` says)
    gives torch's statistics bit for bit, its eval outputs, and after one more training step
    (both unbiased, the same direction) its running statistics, within float32. Then back to
    torch: the same tensors."""
    require_framework("torch")
    import torch

    from xbn.port.convert import convert_file

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-5)

    class MlxNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm(3, momentum=0.1, eps=1e-5)

    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 2.0, size=(16, 3)).astype(np.float32)
    tnet = TorchNet().train()
    for _ in range(3):
        tnet.bn(torch.from_numpy(rng.normal(1.0, 4.0, size=(8, 3)).astype(np.float32)))
    with torch.no_grad():
        tnet.bn.weight.copy_(torch.tensor([1.5, 0.5, -2.0]))
        tnet.bn.bias.copy_(torch.tensor([0.25, -1.0, 3.0]))
    torch.save(tnet.state_dict(), tmp_path / "t.pt")
    convert_file(tmp_path / "t.pt", tmp_path / f"m{suffix}")

    mnet = MlxNet()
    mnet.load_weights(str(tmp_path / f"m{suffix}"))
    for theirs, ours in (("weight", "weight"), ("bias", "bias"), ("running_mean", "running_mean"),
                         ("running_var", "running_var")):
        same(np.array(getattr(mnet.bn, ours)), getattr(tnet.bn, theirs).detach().numpy())
    tnet.eval()
    mnet.eval()
    np.testing.assert_allclose(np.array(mnet.bn(mx.array(x))),
                               tnet.bn(torch.from_numpy(x)).detach().numpy(), rtol=1e-6,
                               atol=1e-6)
    tnet.train()
    mnet.train()
    y = mnet.bn(mx.array(x))
    mx.eval(y, mnet.bn.state)
    np.testing.assert_allclose(np.array(y), tnet.bn(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    for theirs, ours in (("running_mean", "running_mean"), ("running_var", "running_var")):
        np.testing.assert_allclose(np.array(getattr(mnet.bn, ours)),
                                   getattr(tnet.bn, theirs).numpy(), rtol=1e-6)
    convert_file(tmp_path / f"m{suffix}", tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    before = torch.load(tmp_path / "t.pt", weights_only=True)
    for key in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        same(back[key].numpy(), before[key].numpy())
