"""``xbn repro`` template for PyTorch: ``torch.nn.BatchNorm{1,2,3}d`` as a user writes it.

torch's momentum is the weight of the new batch (``1 - m`` of the scenario's Keras-style m;
None for a cumulative average); ``train()``/``eval()`` select batch or running statistics;
channels-last scenario layouts are moved to torch's channels-first and back.
"""

from __future__ import annotations

from ...frameworks.registry import native_momentum
from ...scenario.loader import Layer, channels_last

# the template defines fit and grad too (xbn.fuzz.repro.TRAINING_OPS)
TRAINING = True


def template(framework: str, layer: Layer, shape: tuple[int, ...]) -> str:
    """Source defining call, predict, set_trainable, set_weights, fit, grad, state and
    VERSIONS."""
    from ..repro import ReproUnsupported

    if layer.center != layer.scale or layer.mixed or layer.defaults or layer.native:
        raise ReproUnsupported("torch's affine flag covers weight and bias together")
    momentum = None if layer.cumulative else native_momentum("torch", float(layer.momentum))
    dims = {2: 1, 3: 1, 4: 2, 5: 3}[layer.rank]
    last = channels_last(layer.layout)
    # torch+compile: the module as users compile it (every call goes through the wrapper,
    # which shares the module's parameters and buffers)
    compiled = ("\nbn = torch.compile(bn)  # torch+compile: inductor, default options"
                if framework.partition("@")[0].endswith("+compile") else "")
    return f'''import torch

# as xbn's workers run torch: deterministic kernels on one thread (a multi-threaded reduction
# may round the last bit of a gradient otherwise)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
VERSIONS = f"torch {{torch.__version__}}"
bn = torch.nn.BatchNorm{dims}d({layer.features}, eps={layer.epsilon!r}, momentum={momentum!r},
                          affine={layer.scale}, track_running_stats={layer.track_running_stats},
                          dtype=torch.{layer.dtype}){compiled}
NAMES = {{"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
         "moving_variance": "running_var"}}


def _in(x):
    t = torch.from_numpy(np.ascontiguousarray(x))
    # channels-first and contiguous, as xbn's adapter feeds torch (a moved view would be
    # channels_last memory and take torch's other kernel)
    return (t.movedim(-1, 1) if {last} else t).contiguous()


def _out(t):
    return (t.movedim(1, -1) if {last} else t).detach().numpy()


def call(x, training):
    bn.train(training)
    with torch.no_grad():
        return _out(bn(_in(x)))


def predict(x):
    return call(x, False)


def set_trainable(flag):
    bn.requires_grad_(flag)  # freezes weight and bias; running statistics still update


def set_weights(values):
    with torch.no_grad():
        for name, value in values.items():
            getattr(bn, NAMES[name]).fill_(float(value) if np.ndim(value) == 0 else 0.0)
            getattr(bn, NAMES[name]).copy_(torch.as_tensor(np.asarray(value, "{layer.dtype}")))


_optimizer = None


def fit(x, target, epochs, batch_size, opt, fresh):
    """The usual loop, as xbn's torch adapter runs it: train(), zero_grad, forward, mse_loss,
    backward, step over unshuffled mini-batches; the last epoch's loss, weighted by batch."""
    global _optimizer
    if fresh or _optimizer is None:
        params = list(bn.parameters())
        if opt["name"] == "sgd":
            _optimizer = torch.optim.SGD(params, lr=opt["lr"], momentum=0.0, weight_decay=0.0)
        elif opt["name"] == "rmsprop":
            _optimizer = torch.optim.RMSprop(params, lr=opt["lr"], alpha=opt["rho"],
                                             eps=opt["eps"], weight_decay=0.0, momentum=0.0,
                                             centered=False)
        else:
            _optimizer = torch.optim.Adam(params, lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]),
                                          eps=opt["eps"], weight_decay=0.0, amsgrad=False)
    xs, ts = _in(x), _in(target)
    bn.train()
    n = xs.shape[0]
    size = batch_size or n
    for _ in range(epochs):
        total, count = 0.0, 0
        for i in range(0, n, size):
            _optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(bn(xs[i:i + size]), ts[i:i + size])
            loss.backward()
            _optimizer.step()
            total += loss.item() * xs[i:i + size].shape[0]
            count += xs[i:i + size].shape[0]
    return total / count


def grad(x, training, weights):
    """Gradients of sum(output * weights) by autograd, as xbn's torch adapter takes them."""
    bn.train(training)
    leaf = _in(x).requires_grad_(True)
    for p in bn.parameters():
        p.grad = None
    y = bn(leaf)
    (y * _in(weights)).sum().backward()
    out = {{"output": _out(y), "grad_input": _out(leaf.grad)}}
    for name, p in (("grad_gamma", bn.weight), ("grad_beta", bn.bias)):
        if p is not None and p.requires_grad:
            out[name] = p.grad.numpy().copy()
        if p is not None:
            p.grad = None
    return out


def state():
    out = {{}}
    for name, attribute in NAMES.items():
        value = getattr(bn, attribute, None)
        if value is not None:
            out[name] = value.detach().numpy().copy()
    return out'''
