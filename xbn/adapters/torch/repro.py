"""``xbn repro`` template for PyTorch: ``torch.nn.BatchNorm{1,2,3}d`` as a user writes it.

torch's momentum is the weight of the new batch (``1 - m`` of the scenario's Keras-style m;
None for a cumulative average); ``train()``/``eval()`` select batch or running statistics;
channels-last scenario layouts are moved to torch's channels-first and back.
"""

from __future__ import annotations

from ...frameworks.registry import native_momentum
from ...scenario.loader import Layer, channels_last


def template(framework: str, layer: Layer, shape: tuple[int, ...]) -> str:
    """Source defining call, predict, set_trainable, set_weights, state and VERSIONS."""
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

VERSIONS = f"torch {{torch.__version__}}"
bn = torch.nn.BatchNorm{dims}d({layer.features}, eps={layer.epsilon!r}, momentum={momentum!r},
                          affine={layer.scale}, track_running_stats={layer.track_running_stats},
                          dtype=torch.{layer.dtype}){compiled}
NAMES = {{"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
         "moving_variance": "running_var"}}


def _in(x):
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.movedim(-1, 1) if {last} else t


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


def state():
    out = {{}}
    for name, attribute in NAMES.items():
        value = getattr(bn, attribute, None)
        if value is not None:
            out[name] = value.detach().numpy().copy()
    return out'''
