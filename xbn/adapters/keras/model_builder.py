"""Small Keras models from a fuzzer's model spec (``xbn.fuzz.models``): the port of the torch
model that ``xbn.adapters.torch.model_builder`` builds, with the same weights.

The port's conventions, as ``examples/porting/resnet.py`` carries a network over: Keras'
momentum is the weight of the *old* value, so ``momentum = 1 - torch_momentum``; epsilon is
passed as torch's (Keras' default is 1e-3, torch's 1e-5); dense kernels (out, in) become
(in, out), convolution kernels OIHW become HWIO; a 3x3 convolution pads ``same`` (symmetric at
stride 1, as torch's padding 1). A frozen BN is ``trainable = False`` (Keras then runs it in
inference mode, as torch's ``.eval()`` module). ``NCHW`` models keep torch's layout with
``axis=1`` BNs and transpose around each convolution (TensorFlow's CPU convolution takes NHWC
only); ``NHWC`` models take the transposed input and normalize the last axis.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...frameworks.registry import FRAMEWORKS as REGISTRY

FRAMEWORKS = ("keras", "tf-keras")


def _keras(framework: str):
    for key, value in REGISTRY[framework].env.items():  # the backend, before the import
        os.environ.setdefault(key, value)
    if framework == "tf-keras":
        import tf_keras

        return tf_keras
    import keras

    return keras


def build(spec: dict, weights: dict[str, np.ndarray], framework: str = "keras") -> Any:
    """A functional Keras model for ``spec`` holding ``weights`` (see the module doc)."""
    keras = _keras(framework)
    layers = keras.layers
    c, layout = spec["features"], spec["layout"]
    axis = 1 if layout == "NCHW" else -1
    s = spec["spatial"]
    shape = {"NC": (c,), "NCHW": (c, s, s), "NHWC": (s, s, c)}[layout]
    inputs = keras.Input(shape)
    bns: list = []

    def bn(name: str, conf: dict, frozen: bool):
        layer = layers.BatchNormalization(axis=axis, momentum=1.0 - conf["momentum"],
                                          epsilon=conf["eps"], name=name)
        bns.append((name, layer, frozen))
        return layer

    x = inputs
    ops = []
    for i, block in enumerate(spec["blocks"]):
        if block["op"] == "dense":
            op = layers.Dense(c, name=f"b{i}_op")
        else:
            op = layers.Conv2D(c, 3 if block["op"] == "conv3x3" else 1, padding="same",
                               name=f"b{i}_op")
        ops.append((i, block["op"], op))
        h = x
        if layout == "NCHW":
            h = layers.Permute((2, 3, 1))(h)
        h = op(h)
        if layout == "NCHW":
            h = layers.Permute((3, 1, 2))(h)
        h = bn(f"b{i}_bn1", block["bn"], bool(block.get("frozen")))(h)
        if block["act"] == "relu":
            h = layers.ReLU()(h)
        if block.get("bn2"):
            h = bn(f"b{i}_bn2", block["bn2"], False)(h)
        x = layers.Add()([h, x]) if block.get("residual") else h
    model = keras.Model(inputs, x)
    for i, kind, op in ops:
        kernel = weights[f"b{i}.kernel"]
        kernel = kernel.T if kind == "dense" else kernel.transpose(2, 3, 1, 0)
        op.set_weights([kernel, weights[f"b{i}.bias"]])
    for name, layer, frozen in bns:
        layer.set_weights([weights[f"{name}.{k}"] for k in ("gamma", "beta", "mean", "var")])
        if frozen:
            layer.trainable = False
    return model


def forward(model: Any, x: np.ndarray) -> np.ndarray:
    """The model's inference output (inference changes no weights)."""
    return np.asarray(model(x, training=False))
