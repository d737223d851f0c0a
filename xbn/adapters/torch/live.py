"""Live torch models for ``xbn audit``/``verify``: BN modules, a runner, TorchScript files.

The hooks of ``xbn.adapters.live`` (see there). torch is imported only by the functions that run a
model; recognising one looks in ``sys.modules``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..layer_info import LayerInfo
from ..live import Runner, first_output
from ..port_errors import PortError

MODELS = ("a torch.nn.Module",)
TORCH_BN = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d",
            "LazyBatchNorm2d", "LazyBatchNorm3d")


def framework_of(obj: Any) -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.nn.Module | torch.jit.ScriptModule):
        return "torch"
    return None


def bn_layers(obj: Any, framework: str, inputs=None) -> list[LayerInfo]:
    return [torch_info(name, m) for name, m in torch_bn_modules(obj)]


def runner(obj: Any, framework: str, sample: np.ndarray) -> Runner:
    return TorchRunner(obj)


def is_torch_bn(module) -> bool:
    name = getattr(module, "original_name", None)  # TorchScript keeps the class name here
    return type(module).__name__ in TORCH_BN or name in TORCH_BN or any(
        c.__name__ == "_BatchNorm" for c in type(module).__mro__)


def torch_bn_modules(model) -> list[tuple[str, Any]]:
    return [(name or "<root>", m) for name, m in model.named_modules() if is_torch_bn(m)]


def torch_info(name: str, m) -> LayerInfo:
    kind = getattr(m, "original_name", None) or type(m).__name__
    momentum = getattr(m, "momentum", None)
    affine = bool(getattr(m, "affine", True))
    params = [p for p in (getattr(m, "weight", None), getattr(m, "bias", None)) if p is not None]
    info = LayerInfo(name, "torch", kind, features=getattr(m, "num_features", None),
                     momentum=momentum, cumulative=momentum is None,
                     epsilon=getattr(m, "eps", None),
                     center=affine and getattr(m, "bias", None) is not None,
                     scale=affine and getattr(m, "weight", None) is not None,
                     track_running_stats=bool(getattr(m, "track_running_stats", True)),
                     trainable=all(p.requires_grad for p in params) if params else None,
                     training=bool(m.training), axis=1,
                     rank={"BatchNorm2d": 4, "BatchNorm3d": 5}.get(kind.replace("Lazy", "")))
    nbt = getattr(m, "num_batches_tracked", None)
    if nbt is not None:
        info.extras["num_batches_tracked"] = int(nbt)
    return info


class TorchRunner(Runner):
    """Works on a deep copy; forward pre-hooks record each BN layer's biased batch variance and
    element count per training step (TorchScript modules take no hooks: then none)."""

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
            return first_output(self.model(self.torch.from_numpy(np.ascontiguousarray(x))))

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


def load_model(path: Path):
    """A TorchScript archive (``torch.jit.script(model).save(path)``), no pickle."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13 but works
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError for a state_dict or a corrupted archive
        raise PortError(f"{path}: not a TorchScript archive ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:160]}); a state_dict has no "
                        "architecture: save torch.jit.script(model) or use py:module:attr") from None


def capture(obj: Any, framework: str, x: np.ndarray, train: bool) -> list:
    """Every BN call of one forward pass of a deep copy of ``obj`` (``xbn.adapters.captures``):
    a forward pre-hook reads the state before the call, a forward hook the input, the output and
    the running statistics after it."""
    import torch

    from ..captures import Capture

    model = copy.deepcopy(obj)
    found: list = []
    handles = []

    def arr(t):
        return None if t is None else t.detach().cpu().numpy().copy()

    def pre(name):
        def hook(module, args):
            found.append(Capture(name, 1, arr(args[0]), np.empty(0), before={
                "gamma": arr(module.weight), "beta": arr(module.bias),
                "moving_mean": arr(module.running_mean),
                "moving_variance": arr(module.running_var)}, info=torch_info(name, module)))
        return hook

    def post(module, args, out):
        found[-1].output = arr(out)
        found[-1].after = {"moving_mean": arr(module.running_mean),
                           "moving_variance": arr(module.running_var)}

    try:
        for name, m in torch_bn_modules(model):
            handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post)]
    except Exception:  # TorchScript modules take no hooks
        raise PortError("per-layer capture needs hooks, which TorchScript modules do not take: "
                        "pass the torch.nn.Module (py:module:attribute)") from None
    model.train(train)
    with torch.no_grad():
        model(torch.from_numpy(np.ascontiguousarray(x)))
    for h in handles:
        h.remove()
    return found
