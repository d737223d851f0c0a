"""Small torch models from a fuzzer's model spec (``xbn.fuzz.models``), as torch users write them.

Each block is ``op -> BatchNorm -> activation [-> BatchNorm] [+ skip]`` with ``nn.Linear`` or
``nn.Conv2d`` (padding 1 for 3x3: symmetric, like Keras' ``same`` at stride 1), the spec's
torch momentum and eps, and the weights handed in (torch's convention: (out, in), OIHW).

A frozen BN is frozen the way torch users do it: ``requires_grad_(False)`` *and* ``.eval()``
on that module, kept through ``model.train()`` by overriding ``train`` (what detectron2's and
mmcv's ``norm_eval`` do): ``model.train()`` alone would switch it back to batch statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FRAMEWORKS = ("torch",)


def build(spec: dict, weights: dict[str, np.ndarray], framework: str = "torch") -> Any:
    """An ``nn.Module`` for ``spec`` holding ``weights`` (see the module doc)."""
    import torch
    from torch import nn

    c = spec["features"]
    frozen = {f"b{i}_bn1" for i, b in enumerate(spec["blocks"]) if b.get("frozen")}

    def bn(name: str, conf: dict) -> nn.Module:
        m = (nn.BatchNorm1d if spec["layout"] == "NC" else nn.BatchNorm2d)(
            c, eps=conf["eps"], momentum=conf["momentum"])
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(weights[f"{name}.gamma"]))
            m.bias.copy_(torch.from_numpy(weights[f"{name}.beta"]))
            m.running_mean.copy_(torch.from_numpy(weights[f"{name}.mean"]))
            m.running_var.copy_(torch.from_numpy(weights[f"{name}.var"]))
        return m

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = spec["blocks"]
            for i, block in enumerate(self.blocks):
                if block["op"] == "dense":
                    op = nn.Linear(c, c)
                else:
                    k = 3 if block["op"] == "conv3x3" else 1
                    op = nn.Conv2d(c, c, k, padding=k // 2)
                with torch.no_grad():
                    op.weight.copy_(torch.from_numpy(weights[f"b{i}.kernel"]))
                    op.bias.copy_(torch.from_numpy(weights[f"b{i}.bias"]))
                setattr(self, f"b{i}_op", op)
                setattr(self, f"b{i}_bn1", bn(f"b{i}_bn1", block["bn"]))
                if block.get("bn2"):
                    setattr(self, f"b{i}_bn2", bn(f"b{i}_bn2", block["bn2"]))
            for name in frozen:
                getattr(self, name).requires_grad_(False)
            self.train(False)

        def train(self, mode: bool = True):
            super().train(mode)
            for name in frozen:  # a frozen BN stays in inference mode
                getattr(self, name).eval()
            return self

        def forward(self, x):
            for i, block in enumerate(self.blocks):
                h = getattr(self, f"b{i}_bn1")(getattr(self, f"b{i}_op")(x))
                if block["act"] == "relu":
                    h = torch.relu(h)
                if block.get("bn2"):
                    h = getattr(self, f"b{i}_bn2")(h)
                x = h + x if block.get("residual") else h
            return x

    return Model()


def forward(model: Any, x: np.ndarray) -> np.ndarray:
    """The model's inference output (a copy of the model: the caller's stays as it was)."""
    import copy

    import torch

    m = copy.deepcopy(model).train(False)
    with torch.no_grad():
        return m(torch.from_numpy(np.ascontiguousarray(x))).numpy()
