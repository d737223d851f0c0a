"""A ResNet-18 written by hand in PyTorch and in Keras 3, its weights carried from torch to Keras,
and the porting mistakes ``docs/porting.md`` plants (``xbn verify --per-layer`` finds each one).

torchvision's wheel does not install beside this torch build, so the network is written out
here: the torchvision layout (stem 7x7/2 + max-pool, four stages of two BasicBlocks, 64..512
channels, global pooling, a dense head), random weights, nothing downloaded. Padding is
explicit on the Keras side (``ZeroPadding2D`` + ``valid``): Keras' ``same`` pads a stride-2
convolution on the bottom/right only, torch's ``padding=1`` on both sides.

Every factory is deterministic (fixed seeds), so ``xbn verify py:...:torch_model
py:...:keras_port`` loads two models with the same weights::

    torch_model        the original (its running statistics moved by a few training passes)
    keras_port         the correct port: momentum 1 - 0.1 = 0.9, epsilon 1e-5
    keras_momentum     mistake 1: torch's momentum 0.1 copied verbatim
    keras_epsilon      mistake 2: epsilon left at Keras' default (1e-3)
    torch_frozen       the original with stage 1 frozen by requires_grad_(False) ...
    keras_frozen       mistake 3: ... ported as trainable=False (Keras then runs it in inference)
    keras_swapped      a converter slip: gamma and beta of layer2.0.bn2 written in each other's place
"""

from __future__ import annotations

import functools
import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

STAGES = (64, 128, 256, 512)
CLASSES = 10
SIZE = 64
SWAPPED = "layer2.0.bn2"
FROZEN_STAGE = "layer1"


def torch_resnet18(classes: int = CLASSES):
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            skip = x if self.downsample is None else self.downsample(x)
            return self.relu(out + skip)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, cout in enumerate(STAGES, 1):
                stride = 1 if i == 1 else 2
                setattr(self, f"layer{i}", nn.Sequential(Block(cin, cout, stride),
                                                         Block(cout, cout, 1)))
                cin = cout
            self.fc = nn.Linear(512, classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet18()


def keras_resnet18(momentum: float = 0.9, epsilon: float = 1e-5, classes: int = CLASSES,
                   frozen: str | None = None):
    """The same network in Keras 3 (NHWC); BN layers named as torch names them ('.' -> '_')."""
    import keras
    from keras import layers

    def bn(name):
        layer = layers.BatchNormalization(momentum=momentum, epsilon=epsilon,
                                          name=name.replace(".", "_"))
        if frozen and name.startswith(frozen + "."):
            layer.trainable = False
        return layer

    def conv(x, filters, k, stride, pad, name):
        if pad:
            x = layers.ZeroPadding2D(pad, name=name.replace(".", "_") + "_pad")(x)
        return layers.Conv2D(filters, k, stride, "valid", use_bias=False,
                             name=name.replace(".", "_"))(x)

    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.ReLU()(bn("bn1")(conv(inputs, 64, 7, 2, 3, "conv1")))
    x = layers.MaxPooling2D(3, 2)(layers.ZeroPadding2D(1)(x))  # after ReLU: 0-padding = -inf
    cin = 64
    for i, cout in enumerate(STAGES, 1):
        for j in range(2):
            stride = 2 if (i > 1 and j == 0) else 1
            p = f"layer{i}.{j}"
            out = layers.ReLU()(bn(p + ".bn1")(conv(x, cout, 3, stride, 1, p + ".conv1")))
            out = bn(p + ".bn2")(conv(out, cout, 3, 1, 1, p + ".conv2"))
            skip = x
            if stride != 1 or cin != cout:
                skip = bn(p + ".downsample.1")(conv(x, cout, 1, stride, 0, p + ".downsample.0"))
            x = layers.ReLU()(layers.Add()([out, skip]))
            cin = cout
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes, name="fc")(x), name="resnet18")


def carry_weights(torch_model, keras_model, swap: str | None = None) -> None:
    """Copy every torch weight into the Keras model: kernels OIHW -> HWIO, dense (out, in) ->
    (in, out), BN gamma, beta, running mean and variance. ``swap`` names a BN whose gamma and
    beta are written in each other's place (the converter slip)."""
    sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    for name, module in torch_model.named_modules():
        kind = type(module).__name__
        if kind not in ("Conv2d", "BatchNorm2d", "Linear"):
            continue
        layer = keras_model.get_layer(name.replace(".", "_"))
        if kind == "Conv2d":
            layer.set_weights([sd[name + ".weight"].transpose(2, 3, 1, 0)])
        elif kind == "Linear":
            layer.set_weights([sd[name + ".weight"].T, sd[name + ".bias"]])
        else:
            gamma, beta = sd[name + ".weight"], sd[name + ".bias"]
            if name == swap:
                gamma, beta = beta, gamma
            layer.set_weights([gamma, beta, sd[name + ".running_mean"],
                               sd[name + ".running_var"]])


def inputs(batch: int = 8, seed: int = 0) -> np.ndarray:
    """One batch in torch's layout (N, 3, 64, 64)."""
    return np.random.default_rng(seed).normal(0.5, 1.0, (batch, 3, SIZE, SIZE)).astype("float32")


@functools.cache
def torch_model():
    """The original: random weights (seed 0), running statistics moved by three training
    passes (so that eval mode does not see the initial 0/1), then left in eval mode."""
    import torch

    torch.manual_seed(0)
    model = torch_resnet18()
    with torch.no_grad():
        for p in model.parameters():  # gamma/beta away from 1/0, so a swap shows
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
        model.train()
        for seed in (1, 2, 3):
            model(torch.from_numpy(inputs(seed=seed)))
    return model.eval()


@functools.cache
def torch_frozen():
    """The original with stage 1 frozen the torch way: ``requires_grad_(False)``."""
    import copy

    model = copy.deepcopy(torch_model())
    getattr(model, FROZEN_STAGE).requires_grad_(False)
    return model


def _port(swap: str | None = None, **kwargs):
    model = keras_resnet18(**kwargs)
    carry_weights(torch_model(), model, swap=swap)
    return model


def keras_port():
    return _port()


def keras_momentum():
    return _port(momentum=0.1)


def keras_epsilon():
    return _port(epsilon=1e-3)


def keras_frozen():
    return _port(frozen=FROZEN_STAGE)


def keras_swapped():
    return _port(swap=SWAPPED)


if __name__ == "__main__":
    import sys

    np.save(sys.argv[1] if len(sys.argv) > 1 else "x.npy", inputs())
