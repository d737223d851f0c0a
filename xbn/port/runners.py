"""Run a live model in inference or training mode and read its BN statistics, per framework.

Each runner works on a copy (torch, NNX), on immutable variables (linen) or restores the
weights when closed (Keras), so verifying a model never changes the caller's model. The torch
runner also records, through forward pre-hooks, each BN layer's biased batch variance and
element count per training step: that is what lets a verification *prove* that a running
variance difference is torch's n/(n-1) correction rather than merely call it so.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .errors import PortError
from .info import LayerInfo
from .live import (
    framework_of,
    keras_bn_layers,
    keras_info,
    linen_infos,
    linen_mode_kwargs,
    nnx_infos,
    torch_bn_modules,
    torch_info,
)


def _first(out):
    """A model's output, or the first one when it returns several."""
    while isinstance(out, tuple | list):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


class Runner:
    framework: str
    single_layer: bool = False
    batch_stats: list[list[tuple[np.ndarray, int]]] | None = None  # per step, per BN layer

    def eval(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def train(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def stats(self) -> list[tuple[str, np.ndarray | None, np.ndarray | None]]:
        raise NotImplementedError

    def infos(self) -> list[LayerInfo]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TorchRunner(Runner):
    framework = "torch"

    def __init__(self, model):
        import torch

        self.torch = torch
        self.model = copy.deepcopy(model)
        self.bns = torch_bn_modules(self.model)
        self.single_layer = len(self.bns) == 1 and self.bns[0][1] is self.model
        self.batch_stats = []
        self._step: list | None = None
        try:
            for _, m in self.bns:
                m.register_forward_pre_hook(self._record)
        except Exception:  # TorchScript modules take no hooks
            self.batch_stats = None

    def _record(self, module, args) -> None:
        if self._step is None or not module.training:
            return
        x = args[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        var = x.var(dim=dims, unbiased=False).cpu().numpy()
        self._step.append((var, int(x.numel() // x.shape[1])))

    def _run(self, x, train: bool):
        self.model.train(train)
        with self.torch.no_grad():
            return _first(self.model(self.torch.from_numpy(np.ascontiguousarray(x))))

    def eval(self, x):
        return self._run(x, False).cpu().numpy()

    def train(self, x):
        self._step = []
        out = self._run(x, True).cpu().numpy()
        if self.batch_stats is not None:
            self.batch_stats.append(self._step)
        self._step = None
        return out

    def stats(self):
        out = []
        for name, m in self.bns:
            rm, rv = getattr(m, "running_mean", None), getattr(m, "running_var", None)
            out.append((name, None if rm is None else rm.detach().cpu().numpy().copy(),
                        None if rv is None else rv.detach().cpu().numpy().copy()))
        return out

    def infos(self):
        return [torch_info(name, m) for name, m in self.bns]


class KerasRunner(Runner):
    def __init__(self, model, framework: str):
        self.framework = framework
        self.model = model
        self.saved = model.get_weights()
        self.bns = keras_bn_layers(model)
        self.single_layer = len(self.bns) == 1 and self.bns[0] is model

    def eval(self, x):
        return np.asarray(_first(self.model(x, training=False)))

    def train(self, x):
        return np.asarray(_first(self.model(x, training=True)))

    def stats(self):
        return [(layer.name, np.array(layer.moving_mean.numpy()),
                 np.array(layer.moving_variance.numpy())) for layer in self.bns]

    def infos(self):
        return [keras_info(layer, self.framework) for layer in self.bns]

    def close(self):
        self.model.set_weights(self.saved)


class LinenRunner(Runner):
    framework = "flax"

    def __init__(self, obj: tuple, sample: np.ndarray):
        import flax.linen as nn
        import jax

        self.module, self.variables = obj[0], obj[1]
        self.mode_arg = obj[2] if len(obj) == 3 else None
        self.single_layer = isinstance(self.module, nn.BatchNorm)
        self._infos = linen_infos(obj, sample)
        # jit: one XLA compilation per mode instead of one per primitive (seconds on CPU)
        eval_kw = linen_mode_kwargs(self.module, False, self.mode_arg)
        train_kw = linen_mode_kwargs(self.module, True, self.mode_arg)
        self._eval = jax.jit(lambda v, x: self.module.apply(v, x, **eval_kw))
        self._train = jax.jit(lambda v, x: self.module.apply(v, x, **train_kw,
                                                             mutable=["batch_stats"]))

    def eval(self, x):
        return np.asarray(_first(self._eval(self.variables, x)))

    def train(self, x):
        out, updates = self._train(self.variables, x)
        self.variables = {**self.variables, **updates}
        return np.asarray(_first(out))

    def stats(self):
        from .io_flax import get_path

        out = []
        for info in self._infos:
            stats = self.variables.get("batch_stats", {})
            node = stats if info.name == "<root>" else get_path(stats, tuple(info.name.split("/")))
            node = node if isinstance(node, dict) else {}
            out.append((info.name, _np(node.get("mean")), _np(node.get("var"))))
        return out

    def infos(self):
        return self._infos


class NNXRunner(Runner):
    framework = "flax-nnx"

    def __init__(self, model):
        from flax import nnx

        self.nnx = nnx
        self.model = nnx.clone(model)
        self.single_layer = isinstance(self.model, nnx.BatchNorm)

    def _bns(self):
        return [("/".join(map(str, p)) or "<root>", n) for p, n in self.nnx.iter_graph(self.model)
                if isinstance(n, self.nnx.BatchNorm)]

    def eval(self, x):
        self.model.eval()
        return np.asarray(_first(self.model(x)))

    def train(self, x):
        self.model.train()
        return np.asarray(_first(self.model(x)))

    def stats(self):
        return [(name, _np(bn.mean), _np(bn.var)) for name, bn in self._bns()]

    def infos(self):
        return nnx_infos(self.model)


def _np(v):
    if v is None:
        return None
    v = v.get_value() if hasattr(v, "get_value") else getattr(v, "value", v)
    return np.array(v)


def runner_for(obj: Any, sample: np.ndarray) -> Runner:
    fid = framework_of(obj)
    if fid == "torch":
        return TorchRunner(obj)
    if fid in ("keras", "tf-keras"):
        return KerasRunner(obj, fid)
    if fid == "flax":
        return LinenRunner(obj, sample)
    if fid == "flax-nnx":
        return NNXRunner(obj)
    raise PortError(f"cannot run a {fid} model")  # pragma: no cover
