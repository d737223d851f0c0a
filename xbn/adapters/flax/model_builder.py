"""Small Flax linen models from a fuzzer's model spec (``xbn.fuzz.models``): the port of the
torch model that ``xbn.adapters.torch.model_builder`` builds, with the same weights.

The port's conventions: Flax's momentum is the weight of the *old* value (``1 -
torch_momentum``), epsilon is passed as torch's (Flax's default is 1e-5, which happens to be
torch's), dense kernels (out, in) become (in, out), convolution kernels OIHW become HWIO, a 3x3
convolution pads ``SAME``. The model is a ``(module, variables)`` tuple (what
``xbn.adapters.flax.live`` runs) whose ``__call__`` takes ``train``; each BN gets
``use_running_average=not train``, except a frozen one, built with ``use_running_average=True``
(how Flax users freeze a BN: it then always normalizes with its running statistics and updates
nothing). ``NCHW`` models normalize ``axis=1`` and transpose around each convolution (``nn.Conv``
is channels-last); ``NHWC`` models take the transposed input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FRAMEWORKS = ("flax",)


def build(spec: dict, weights: dict[str, np.ndarray], framework: str = "flax") -> Any:
    """``(module, variables)`` for ``spec`` holding ``weights`` (see the module doc)."""
    import flax.linen as nn
    import jax.numpy as jnp

    c, layout = spec["features"], spec["layout"]
    axis = 1 if layout == "NCHW" else -1
    blocks = spec["blocks"]

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            for i, block in enumerate(blocks):
                if block["op"] == "dense":
                    op = nn.Dense(c, name=f"b{i}_op")
                else:
                    k = 3 if block["op"] == "conv3x3" else 1
                    op = nn.Conv(c, (k, k), padding="SAME", name=f"b{i}_op")
                h = x
                if layout == "NCHW":
                    h = jnp.transpose(h, (0, 2, 3, 1))
                h = op(h)
                if layout == "NCHW":
                    h = jnp.transpose(h, (0, 3, 1, 2))
                h = self.bn(f"b{i}_bn1", block["bn"], bool(block.get("frozen")), h, train)
                if block["act"] == "relu":
                    h = nn.relu(h)
                if block.get("bn2"):
                    h = self.bn(f"b{i}_bn2", block["bn2"], False, h, train)
                x = h + x if block.get("residual") else h
            return x

        def bn(self, name: str, conf: dict, frozen: bool, h, train: bool):
            if frozen:
                return nn.BatchNorm(use_running_average=True, axis=axis,
                                    momentum=1.0 - conf["momentum"], epsilon=conf["eps"],
                                    name=name)(h)
            return nn.BatchNorm(axis=axis, momentum=1.0 - conf["momentum"],
                                epsilon=conf["eps"], name=name)(h, use_running_average=not train)

    params: dict = {}
    stats: dict = {}
    for i, block in enumerate(blocks):
        kernel = weights[f"b{i}.kernel"]
        kernel = kernel.T if block["op"] == "dense" else kernel.transpose(2, 3, 1, 0)
        params[f"b{i}_op"] = {"kernel": jnp.asarray(kernel),
                              "bias": jnp.asarray(weights[f"b{i}.bias"])}
        for name in [f"b{i}_bn1"] + ([f"b{i}_bn2"] if block.get("bn2") else []):
            params[name] = {"scale": jnp.asarray(weights[f"{name}.gamma"]),
                            "bias": jnp.asarray(weights[f"{name}.beta"])}
            stats[name] = {"mean": jnp.asarray(weights[f"{name}.mean"]),
                           "var": jnp.asarray(weights[f"{name}.var"])}
    return Model(), {"params": params, "batch_stats": stats}


def forward(model: Any, x: np.ndarray) -> np.ndarray:
    """The model's inference output (linen variables are immutable)."""
    module, variables = model[0], model[1]
    return np.asarray(module.apply(variables, x, train=False))
