"""The torch adapter against torch.nn.BatchNorm driven by hand (no xbn in the loop).

Every comparison is bit-for-bit: the adapter must make exactly the calls a torch user makes.
torch is imported unconditionally: if it is missing these tests fail, they never skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xbn.adapters.base import NotApplicable, from_channels_first, run_scenario, to_channels_first
from xbn.adapters.torch.adapter import MODULES
from xbn.common.dtypes import round_to
from xbn.frameworks.registry import load_adapter
from xbn.scenario.loader import Layer, Optimizer, Step, parse

RNG = np.random.default_rng(0)


def data(shape, dtype="float32", mean=2.0, std=3.0):
    return round_to(RNG.normal(mean, std, size=shape), dtype)


def adapter(**layer):
    a = load_adapter("torch")
    a.build(Layer(**{"features": 3, "momentum": 0.9, "epsilon": 1e-3, **layer}))
    return a


def t(x, dtype=torch.float32):
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)


def same(value, tensor):
    """The adapter's value equals the tensor exactly (bfloat16 comes back as a tuple)."""
    if isinstance(value, tuple):
        value = value[0]
    expected = tensor.detach().to(torch.float64).numpy()
    np.testing.assert_array_equal(np.asarray(value, np.float64), expected)


def test_nhwc_train_then_eval_matches_hand_driven_module():
    x = data((4, 2, 3, 3))
    a = adapter(layout="NHWC")
    y_train = a.call(x, True)
    y_eval = a.call(x, False)
    y_bare = a.call(x, None)  # eval() persists: a bare call stays in eval mode

    bn = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-3)
    xt = t(np.moveaxis(x, -1, 1))
    with torch.no_grad():
        want_train = bn(xt).permute(0, 2, 3, 1)
        bn.eval()
        want_eval = bn(xt).permute(0, 2, 3, 1)
    assert a.module.momentum == 0.1  # 1 - 0.9 as a user writes it, not 0.09999999999999998
    same(y_train, want_train)
    same(y_eval, want_eval)
    same(y_bare, want_eval)
    state = a.state()
    same(state["moving_mean"], bn.running_mean)
    same(state["moving_variance"], bn.running_var)
    same(state["gamma"], bn.weight)


def test_running_variance_is_bessel_corrected_over_n_h_w():
    x = data((4, 3, 2, 5))
    a = adapter(layout="NCHW", momentum=0.0)  # torch momentum 1: running = batch statistics
    a.call(x, True)
    n = 4 * 2 * 5
    unbiased = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(a.state()["moving_variance"], unbiased, rtol=1e-6)
    assert np.all(np.abs(a.state()["moving_variance"] / (unbiased * (n - 1) / n) - 1) > 1e-2)


def test_grad_nlc_matches_autograd_and_leaves_parameters_alone():
    x, w = data((4, 5, 3)), data((4, 5, 3), std=1.0)
    a = adapter(layout="NLC")
    got = a.grad(x, True, w)

    bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-3)
    xt = t(np.moveaxis(x, -1, 1)).requires_grad_(True)
    y = bn(xt)
    (y * t(np.moveaxis(w, -1, 1))).sum().backward()
    same(got["output"], y.permute(0, 2, 1))
    same(got["grad_input"], xt.grad.permute(0, 2, 1))
    same(got["grad_gamma"], bn.weight.grad)
    same(got["grad_beta"], bn.bias.grad)
    same(a.state()["moving_mean"], bn.running_mean)  # the forward's side effect happened
    assert a.module.weight.grad is None
    np.testing.assert_array_equal(a.state()["gamma"], np.ones(3))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_fit_matches_a_plain_training_loop(name):
    x, target = data((8, 3)), data((8, 3), std=1.0)
    opt = Optimizer(name=name, lr=0.05, beta1=0.8, beta2=0.99, eps=1e-6)
    step = Step(index=0, op="fit", optimizer=opt, epochs=2, batch_size=3)
    a = adapter()
    a.call(x, False)  # fit must switch back to train()
    losses = [a.fit(x, target, step, True), a.fit(x, target, step, False)]

    bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-3)
    if name == "sgd":
        optim = torch.optim.SGD(bn.parameters(), lr=0.05)
    else:
        optim = torch.optim.Adam(bn.parameters(), lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    xt, tt = t(x), t(target)
    want = []
    for _ in range(2):  # two fit steps sharing one optimizer
        for _ in range(2):
            total = 0.0
            for i in range(0, 8, 3):
                optim.zero_grad()
                loss = F.mse_loss(bn(xt[i:i + 3]), tt[i:i + 3])
                loss.backward()
                optim.step()
                total += loss.item() * xt[i:i + 3].shape[0]
        want.append(total / 8)
    assert [float(v[0]) for v in losses] == want
    assert losses[0][1] == "float32"
    state = a.state()
    for key, tensor in [("gamma", bn.weight), ("beta", bn.bias), ("moving_mean", bn.running_mean),
                        ("moving_variance", bn.running_var)]:
        same(state[key], tensor)


@pytest.mark.parametrize("dtype,torch_dtype", [("float16", torch.float16),
                                               ("bfloat16", torch.bfloat16),
                                               ("float64", torch.float64)])
def test_low_and_high_precision_module_follows_module_to_dtype(dtype, torch_dtype):
    x = data((4, 3, 2, 2), dtype)
    a = adapter(layout="NCHW", dtype=dtype)
    y = a.call(x, True)
    bn = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-3).to(torch_dtype)
    with torch.no_grad():
        want = bn(t(x, torch_dtype))
    same(y, want)
    same(a.state()["moving_variance"], bn.running_var)
    if dtype == "bfloat16":
        assert y[1] == "bfloat16" and a.state()["moving_mean"][1] == "bfloat16"
    else:
        assert y.dtype.name == dtype and a.state()["moving_mean"].dtype.name == dtype


def test_frozen_parameters_still_update_running_stats_and_cannot_be_fit():
    x = data((6, 3))
    a = adapter()
    a.set_trainable(False)
    got = a.grad(x, True, data((6, 3)))
    assert "grad_gamma" not in got and "requires_grad" in got["grad_gamma_reason"]
    assert "grad_beta_reason" in got
    assert not np.array_equal(a.state()["moving_mean"], np.zeros(3))
    step = Step(index=0, op="fit", optimizer=Optimizer(name="sgd", lr=0.1))
    with pytest.raises(RuntimeError, match="does not require grad"):
        a.fit(x, x, step, True)


def test_predict_restores_train_mode_and_set_mode_persists():
    x = data((5, 3))
    a = adapter()
    a.predict(x)
    assert a.module.training
    np.testing.assert_array_equal(a.state()["moving_mean"], np.zeros(3))
    a.set_mode("eval")
    a.call(x, None)
    np.testing.assert_array_equal(a.state()["moving_mean"], np.zeros(3))
    a.set_mode("train")
    a.call(x, None)
    assert not np.array_equal(a.state()["moving_mean"], np.zeros(3))


def test_layer_options_map_to_constructor_arguments():
    assert adapter(momentum="cumulative").module.momentum is None
    defaults = adapter(defaults=True).module
    assert (defaults.momentum, defaults.eps) == (0.1, 1e-5)
    assert adapter(native={"torch": {"momentum": 0.99}}).module.momentum == 0.99
    assert isinstance(adapter(layout="NCDHW").module, torch.nn.BatchNorm3d)
    no_affine = adapter(center=False, scale=False)
    assert no_affine.module.weight is None and set(no_affine.state()) == {"moving_mean",
                                                                          "moving_variance"}
    no_track = adapter(track_running_stats=False)
    assert set(no_track.state()) == {"gamma", "beta"}
    with pytest.raises(NotApplicable, match="nothing drops the weight alone"):
        adapter(scale=False)  # a bias without a weight
    with pytest.raises(NotApplicable, match="running_mean"):
        no_track.set_weights({"moving_mean": np.zeros(3)})


def test_scale_without_center_is_bias_false_where_torch_has_it():
    """center = false, scale = true is BatchNorm1d(C, bias=False) (torch >= 2.12): a weight
    and no bias, the same numbers as the module built by hand."""
    import inspect

    from xbn.frameworks.registry import capabilities

    has_bias = "bias" in inspect.signature(torch.nn.BatchNorm1d).parameters
    a = load_adapter("torch")
    # the adapter asks the installed torch; the registry's version rule agrees with it
    assert a.capabilities().scale_without_center is has_bias
    assert capabilities("torch").scale_without_center is has_bias
    if not has_bias:  # an older torch: n/a, naming the release that brought bias=False
        with pytest.raises(NotApplicable, match="torch 2.12"):
            adapter(center=False)
        return
    x, w = data((5, 3)), data((5, 3), mean=0.0, std=1.0)
    ad = adapter(center=False)
    assert ad.module.bias is None and ad.module.weight is not None
    assert set(ad.state()) == {"gamma", "moving_mean", "moving_variance"}
    ad.set_weights({"gamma": np.array([0.5, 2.0, 1.5])})
    got = ad.grad(x, True, w)
    bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-3, bias=False)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0, 1.5]))
    xt = t(x).requires_grad_(True)
    y = bn(xt)
    (y * t(w)).sum().backward()
    same(got["output"], y)
    same(got["grad_input"], xt.grad)
    same(got["grad_gamma"], bn.weight.grad)
    assert "grad_beta" not in got
    with pytest.raises(NotApplicable, match="bias=False"):
        ad.set_weights({"beta": np.zeros(3)})


def test_mixed_precision_is_a_float32_module_fed_half_tensors():
    x = data((6, 3), "float16")
    ad = adapter(dtype="float16", param_dtype="float32")
    y = ad.call(x, True)
    bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-3)  # float32, as built
    want = bn(t(x, torch.float16))
    assert y.dtype == np.float16 and want.dtype == torch.float16
    same(y, want)
    state = ad.state()
    assert state["moving_mean"].dtype == np.float32
    same(state["moving_mean"], bn.running_mean)
    same(state["moving_variance"], bn.running_var)
    ad.set_weights({"moving_variance": np.full(3, 70000.0)})  # beyond float16, fine in float32
    assert ad.state()["moving_variance"].tolist() == [70000.0] * 3
    # the pure float16 layer keeps float16 statistics (module.to(float16))
    assert adapter(dtype="float16").state()["moving_mean"].dtype == np.float16


def test_pairs_torch_cannot_mix_are_not_applicable_with_its_reason():
    # torch itself refuses them: float32 inputs into a half module, float16 into a double one
    with pytest.raises(RuntimeError, match="mixed dtype"):
        torch.nn.BatchNorm1d(3).half()(torch.ones(4, 3))
    with pytest.raises(RuntimeError, match="mixed dtype"):
        torch.nn.BatchNorm1d(3).double()(torch.ones(4, 3, dtype=torch.float16))
    for dtype, param_dtype in (("float32", "float16"), ("float16", "float64")):
        with pytest.raises(NotApplicable, match="mixed_data_type.h"):
            adapter(dtype=dtype, param_dtype=param_dtype)


def test_cumulative_average_and_set_weights_through_the_driver():
    scenario = parse({
        "schema": 1, "name": "t", "layer": {"features": 2, "momentum": "cumulative"},
        "inputs": {"a": [[1.0, 2.0], [3.0, 6.0]], "b": [[0.0, 1.0], [4.0, 1.0]], "one": [[1.0, 2.0]]},
        "steps": [{"op": "call", "input": "a", "training": True},
                  {"op": "call", "input": "b", "training": True},
                  {"op": "call", "input": "one", "training": True},
                  {"op": "set_weights", "gamma": [2.0, 3.0], "moving_mean": [1.0, -1.0]},
                  {"op": "call", "input": "one", "training": False}],
    })
    rows = {(o["step"], o["quantity"]): o for o in run_scenario(load_adapter("torch"), scenario)}
    # cumulative average of the two batch means: ((2, 4) + (2, 1)) / 2
    assert rows[(1, "moving_mean")]["value"] == [2.0, 2.5]
    # unbiased batch variances (2, 8) and (8, 0), averaged
    assert rows[(1, "moving_variance")]["value"] == [5.0, 4.0]
    assert rows[(2, "output")]["status"] == "error"
    assert rows[(2, "output")]["message"].startswith(
        "ValueError: Expected more than 1 value per channel when training")
    assert rows[(3, "gamma")]["value"] == [2.0, 3.0]
    bn = torch.nn.BatchNorm1d(2, momentum=None, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        bn.running_var.copy_(torch.tensor([5.0, 4.0]))
        bn.weight.copy_(torch.tensor([2.0, 3.0]))
        bn.eval()
        want = bn(torch.tensor([[1.0, 2.0]]))
    assert rows[(4, "output")]["value"] == want.tolist()


def test_reset_and_chained_steps_match_a_hand_driven_module():
    """reset is reset_running_stats() (num_batches_tracked back to 0, so the cumulative
    average starts over); "@N" feeds the module its own output of step N."""
    a, b = data((4, 3)), data((4, 3), mean=-1.0)
    scenario = parse({
        "schema": 1, "name": "t", "layer": {"features": 3, "momentum": "cumulative"},
        "inputs": {"a": a.tolist(), "b": b.tolist()},
        "steps": [{"op": "call", "input": "a", "training": True},
                  {"op": "reset"},
                  {"op": "call", "input": "b", "training": True},
                  {"op": "call", "input": "@2", "training": True},
                  {"op": "call", "input": "@3", "training": False}],
    })
    rows = {(o["step"], o["quantity"]): o for o in run_scenario(load_adapter("torch"), scenario)}
    bn = torch.nn.BatchNorm1d(3, momentum=None, eps=1e-3)
    with torch.no_grad():
        bn(t(a))
        assert rows[(0, "num_batches_tracked")]["value"] == 1
        bn.reset_running_stats()
        assert rows[(1, "num_batches_tracked")]["value"] == 0
        assert rows[(1, "num_batches_tracked")]["dtype"] == "int64"
        same(rows[(1, "moving_mean")]["value"], bn.running_mean)
        same(rows[(1, "moving_variance")]["value"], bn.running_var)
        y2 = bn(t(b))
        same(rows[(2, "output")]["value"], y2)
        same(rows[(2, "moving_mean")]["value"], bn.running_mean)
        y3 = bn(y2)
        same(rows[(3, "output")]["value"], y3)
        same(rows[(3, "moving_variance")]["value"], bn.running_var)
        assert rows[(3, "num_batches_tracked")]["value"] == 2
        bn.eval()
        same(rows[(4, "output")]["value"], bn(y3))


def test_a_chained_step_after_an_error_is_not_applicable():
    scenario = parse({
        "schema": 1, "name": "t", "layer": {"features": 2},
        "inputs": {"one": [[1.0, 2.0]]},
        "steps": [{"op": "call", "input": "one", "training": True},
                  {"op": "call", "input": "@0", "training": False}],
    })
    rows = {(o["step"], o["quantity"]): o for o in run_scenario(load_adapter("torch"), scenario)}
    assert rows[(0, "output")]["status"] == "error"
    assert rows[(1, "output")]["status"] == "n/a"
    assert "step 0 produced no output" in rows[(1, "output")]["message"]
    assert (0, "num_batches_tracked") not in rows  # observed only where a scenario resets


def test_epsilon_zero_is_torchs_to_refuse_in_training_only():
    """eps=0 reaches the module; F.batch_norm refuses it with batch statistics
    (torch/nn/functional.py:2891-2894) and accepts it with the running ones."""
    x = data((4, 3))
    ad = adapter(epsilon=0.0)
    assert ad.module.eps == 0.0
    bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=0.0)
    with pytest.raises(ValueError, match="eps must be positive during training") as hand:
        bn(t(x))
    with pytest.raises(ValueError, match="eps must be positive during training") as ours:
        ad.call(x, True)
    assert str(ours.value) == str(hand.value)
    bn.eval()
    with torch.no_grad():
        same(ad.call(x, False), bn(t(x)))


@pytest.mark.parametrize(("layout", "fmt"), [("NHWC", torch.channels_last),
                                             ("NCDHW", torch.channels_last_3d)])
def test_channels_last_memory_format_matches_a_hand_driven_module(layout, fmt):
    """[layer.native.torch] memory_format = "channels_last": the module sees NHWC-strided
    tensors, as test_nn.py::test_batchnorm_nhwc_cpu feeds it; bit for bit as by hand."""
    shape = (4, 2, 2, 3) if layout == "NHWC" else (4, 3, 2, 2, 2)
    x, w = data(shape), data(shape, mean=0.0, std=1.0)
    ad = adapter(layout=layout, native={"torch": {"memory_format": "channels_last"}})
    xt = t(to_channels_first(x, layout)).contiguous(memory_format=fmt)
    assert ad._tensor(x).is_contiguous(memory_format=fmt) and not ad._tensor(x).is_contiguous()
    bn = MODULES[len(shape)](3, momentum=0.1, eps=1e-3)
    xt.requires_grad_(True)
    y = bn(xt)
    (y * t(to_channels_first(w, layout)).contiguous(memory_format=fmt)).sum().backward()
    got = ad.grad(x, True, w)
    same(got["output"], torch.from_numpy(from_channels_first(y.detach().numpy(), layout)))
    same(got["grad_input"], torch.from_numpy(from_channels_first(xt.grad.numpy(), layout)))
    same(got["grad_gamma"], bn.weight.grad)
    same(ad.state()["moving_variance"], bn.running_var)
    with pytest.raises(NotApplicable, match="4-D or 5-D"):
        adapter(layout="NC", native={"torch": {"memory_format": "channels_last"}})
