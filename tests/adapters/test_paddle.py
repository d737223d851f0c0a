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


def test_reference_identity_on_a_batch_of_one() -> None:
    """batch_of_one = "identity" (Paddle's kernel, xbn/profiles/facts.py): a training call on
    one value per channel returns x, the statistics stay, dy passes through to x and gamma and
    beta get 0; two values per channel normalize as before (derived: y = x is the kernel's
    copy; the gradient of the identity)."""
    from xbn.reference.batchnorm import ReferenceBatchNorm, Semantics
    from xbn.scenario.loader import Layer

    one = np.array([[4.0, -2.0, 0.5]])
    bn = ReferenceBatchNorm(Layer(features=3, momentum=0.9, epsilon=1e-9),
                            Semantics(batch_of_one="identity"))
    np.testing.assert_array_equal(bn.call(one, True), one)
    np.testing.assert_array_equal(bn.state()["moving_mean"], np.zeros(3))
    np.testing.assert_array_equal(bn.state()["moving_variance"], np.ones(3))
    dy = np.array([[1.0, 2.0, 3.0]])
    got = bn.grad(one, True, dy)
    np.testing.assert_array_equal(got["grad_input"], dy)
    np.testing.assert_array_equal(got["grad_gamma"], np.zeros(3))
    np.testing.assert_array_equal(got["grad_beta"], np.zeros(3))
    two = np.array([[4.0, -2.0, 0.5], [2.0, 0.0, 1.5]])
    np.testing.assert_allclose(bn.call(two, True), [[1, -1, -1], [-1, 1, 1]], atol=1e-6)
    np.testing.assert_allclose(bn.state()["moving_mean"], 0.1 * two.mean(axis=0))


@pytest.mark.slow  # imports paddle in a fresh interpreter (~10 s on a loaded 2-core machine)
def test_paddle_adapter_in_child() -> None:
    from tests.adapters.keras_child import run_in_backend

    run_in_backend(__file__, "paddle")


def test_pdparams_reader_refuses_code(tmp_path) -> None:
    """A .pdparams pickle that names any global besides numpy's array constructors is refused
    with one line, before anything runs (the payload would create a file)."""
    import pickle

    from xbn.adapters.port_errors import PortError
    from xbn.port.formats import read

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pdparams").write_bytes(pickle.dumps({"bn._mean": Payload()}, protocol=4))
    with pytest.raises(PortError, match="not a state_dict of arrays"):
        read(tmp_path / "evil.pdparams")
    assert not marker.exists()


@pytest.mark.slow  # imports paddle in a fresh interpreter
def test_convert_torch_to_paddle_round_trip(tmp_path, monkeypatch) -> None:
    """``xbn convert`` of a trained torch BatchNorm1d into ``.pdparams``: Paddle's own
    ``paddle.load`` + ``set_state_dict`` (in a child) into a ``BatchNorm1D`` with momentum 0.9
    and epsilon 1e-5 (what ``xbn port --from torch --to paddle`` prints) gives torch's
    statistics bit for bit, its eval outputs and its training outputs within float32, and the
    running mean after one more training step (Paddle 0.9 old + 0.1 batch = torch 0.1). Then
    back to torch: the same tensors."""
    require_framework("torch")
    import torch

    from tests.adapters.keras_child import run_in_backend
    from xbn.port.convert import convert_file

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-5)

    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 2.0, size=(16, 3)).astype(np.float32)
    net = TorchNet().train()
    for _ in range(3):
        net.bn(torch.from_numpy(rng.normal(1.0, 4.0, size=(8, 3)).astype(np.float32)))
    with torch.no_grad():
        net.bn.weight.copy_(torch.tensor([1.5, 0.5, -2.0]))
        net.bn.bias.copy_(torch.tensor([0.25, -1.0, 3.0]))
    torch.save(net.state_dict(), tmp_path / "t.pt")
    stats = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    convert_file(tmp_path / "t.pt", tmp_path / "p.pdparams")
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setenv("XBN_PADDLE_ROUND_TRIP", str(tmp_path))
    run_in_backend(__file__, "paddle")
    got = np.load(tmp_path / "paddle.npz")
    for k in ("weight", "bias"):
        np.testing.assert_array_equal(got[k], stats[f"bn.{k}"])
    np.testing.assert_array_equal(got["_mean"], stats["bn.running_mean"])
    np.testing.assert_array_equal(got["_variance"], stats["bn.running_var"])
    net.eval()
    np.testing.assert_allclose(got["eval"], net.bn(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-6, atol=1e-6)
    net.train()
    np.testing.assert_allclose(got["train"], net.bn(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["mean_after"], net.bn.running_mean.numpy(), rtol=1e-6)
    # a file paddle.save wrote (with its name table) reads back as one BN layer "bn"
    from xbn.port.formats import read

    (layer,) = read(tmp_path / "saved.pdparams").layers
    assert layer.name == "bn"
    np.testing.assert_array_equal(layer.values["mean"], got["mean_after"])
    convert_file(tmp_path / "p.pdparams", tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    for key in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        np.testing.assert_array_equal(back[key].numpy(), stats[key])


def _round_trip(folder: str) -> None:
    """The child's half: Paddle's own loader, no xbn code."""
    import paddle

    warnings.simplefilter("ignore")

    class PaddleNet(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.bn = paddle.nn.BatchNorm1D(3, momentum=0.9, epsilon=1e-5)

    net = PaddleNet()
    missing, unexpected = net.set_state_dict(paddle.load(f"{folder}/p.pdparams"))
    assert not missing and not unexpected, (missing, unexpected)
    x = paddle.to_tensor(np.load(f"{folder}/x.npy"))
    out = {k: v.numpy() for k, v in net.bn.state_dict().items()}
    net.eval()
    out["eval"] = net.bn(x).numpy()
    net.train()
    out["train"] = net.bn(x).numpy()
    out["mean_after"] = net.bn._mean.numpy()
    np.savez(f"{folder}/paddle.npz", **out)
    paddle.save(net.state_dict(), f"{folder}/saved.pdparams")  # Paddle's own writer


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
    # ... and its gradients are the identity's: dy through, nothing for weight and bias
    dy = np.array([[1.0, 2.0, 3.0]], np.float32)
    got = adapter.grad(one, True, dy)
    same(got["grad_input"], dy)
    same(got["grad_gamma"], np.zeros(3, np.float32))
    same(got["grad_beta"], np.zeros(3, np.float32))

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
    import os

    if os.environ.get("XBN_PADDLE_ROUND_TRIP"):
        _round_trip(os.environ["XBN_PADDLE_ROUND_TRIP"])
    else:
        _checks()
    print(f"OK {sys.argv[1]}")
