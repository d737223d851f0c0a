"""The same small CNN in Keras, PyTorch and Flax linen: (Conv-BN-ReLU) x3, global pooling, Dense.

The BatchNorm constructors are the ones ``xbn port`` prints for Keras' defaults
(``xbn port --from keras --to torch`` / ``--to flax``): torch gets ``momentum = 1 - 0.99`` and
``eps=1e-3`` (its own default is 1e-5); Flax gets ``epsilon=1e-3`` (its default is 1e-5).
Convolution and dense weights are not BatchNorm, so xbn does not convert them: the copy
helpers below do it by hand (kernel layouts: Keras HWIO, torch OIHW, Flax HWIO).
"""

from __future__ import annotations

import numpy as np

FILTERS = (8, 16, 16)
CLASSES = 5
MOMENTUM = 0.99  # Keras' default, written out
EPSILON = 1e-3  # Keras' default, written out


def keras_cnn(input_shape=(16, 16, 3)):
    import keras

    inputs = keras.Input(input_shape)
    x = inputs
    for i, f in enumerate(FILTERS, 1):
        x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(CLASSES, name="dense")(x)
    return keras.Model(inputs, outputs, name="cnn")


def torch_cnn(in_channels: int = 3):
    import torch
    from torch import nn

    class TorchCNN(nn.Module):
        def __init__(self):
            super().__init__()
            chans = (in_channels, *FILTERS)
            for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:], strict=True), 1):
                setattr(self, f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
                # xbn port --from keras --to torch --momentum 0.99 --epsilon 1e-3 --rank 4
                setattr(self, f"bn{i}", nn.BatchNorm2d(cout, momentum=0.01, eps=1e-3))
            self.dense = nn.Linear(FILTERS[-1], CLASSES)

        def forward(self, x):  # written out so that torch.jit.script can compile it
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            x = torch.relu(self.bn3(self.conv3(x)))
            return self.dense(x.mean(dim=(2, 3)))

    return TorchCNN()


def flax_cnn():
    import flax.linen as nn

    class FlaxCNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            for f in FILTERS:
                x = nn.Conv(f, (3, 3), padding="SAME", use_bias=False)(x)
                # xbn port --from keras --to flax --momentum 0.99 --epsilon 1e-3
                x = nn.BatchNorm(use_running_average=not train, axis=-1, momentum=0.99,
                                 epsilon=1e-3)(x)
                x = nn.relu(x)
            return nn.Dense(CLASSES)(x.mean(axis=(1, 2)))

    return FlaxCNN()


def keras_conv_dense(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers
            if layer.name.startswith(("conv", "dense"))}


def copy_conv_dense_to_torch(state: dict, weights: dict) -> dict:
    """Keras HWIO kernels -> torch OIHW; Dense (in, out) -> Linear (out, in)."""
    import torch

    state = dict(state)
    for i in range(1, len(FILTERS) + 1):
        state[f"conv{i}.weight"] = torch.from_numpy(weights[f"conv{i}"][0].transpose(3, 2, 0, 1).copy())
    kernel, bias = weights["dense"]
    state["dense.weight"] = torch.from_numpy(kernel.T.copy())
    state["dense.bias"] = torch.from_numpy(bias.copy())
    return state


def copy_conv_dense_to_flax(variables: dict, weights: dict) -> dict:
    """Flax uses Keras' layouts: HWIO kernels, (in, out) dense kernels."""
    params = dict(variables["params"])
    for i in range(len(FILTERS)):
        params[f"Conv_{i}"] = {"kernel": weights[f"conv{i + 1}"][0]}
    params["Dense_0"] = {"kernel": weights["dense"][0], "bias": weights["dense"][1]}
    return {**variables, "params": params}
