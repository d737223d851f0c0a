"""PyTorch: ``torch.nn.BatchNorm1d/2d/3d`` driven the way torch users drive it.

The module is picked from the layout's rank and always sees a contiguous channels-first
tensor (channels-last scenarios are transposed in and out, which is exact). It is built in
float32 and moved with ``module.to(param_dtype)``, so parameters *and* running statistics live
in the scenario's ``param_dtype``; inputs are tensors of its ``dtype``. ``dtype = "float16"``,
``param_dtype = "float32"`` is a float32 module fed half tensors, which torch's CPU kernels
accept for BatchNorm (the only mixed pair they take: 16-bit inputs, float32 parameters,
aten/src/ATen/native/cpu/mixed_data_type.h:21-31); they accumulate 16-bit inputs in float.
What the module can be built with is asked of the installed torch: ``bias=False`` (a weight
without a bias) where ``torch.nn.BatchNorm1d``'s signature has ``bias``.
Train/eval is torch's module-wide mode: a ``training`` flag on a step calls ``train()`` or
``eval()`` and the mode persists; a bare call leaves it alone (a fresh module trains).
``torch+compile`` runs every op through ``torch.compile(module)`` (``compiled.py``), with
its compile time in the notes; ``torch+eager`` and the plain id call the module.
In a ``torch@cuda`` worker (``xbn.frameworks.devices``) the module and every input live on ``cuda`` (built
on CPU with the same seed, then moved) and values come back to the host; cuDNN is on unless
``[layer.native.torch] cudnn = false``.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ...frameworks.devices import current as current_device
from ...frameworks.registry import Capabilities, native_momentum
from ...scenario.loader import Layer, Step
from ..base import Adapter, NotApplicable, batches, from_channels_first, to_channels_first
from .compiled import Forward

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
MODULES = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
           5: torch.nn.BatchNorm3d}
# [layer.native.torch] memory_format: how 4-D/5-D inputs are laid out in memory (the scenario
# loader validates it); torch's CPU kernels have separate channels-last paths
# (aten/src/ATen/native/cpu/batch_norm_kernel.cpp, *_channels_last_impl)
MEMORY_FORMAT = "memory_format"
MEMORY_FORMATS = {
    "contiguous": dict.fromkeys((2, 3, 4, 5), torch.contiguous_format),
    "channels_last": {4: torch.channels_last, 5: torch.channels_last_3d},
}
# [layer.native.torch] cudnn = false: the module runs without cuDNN on CUDA (torch's native
# CUDA kernel); set as torch.backends.cudnn.enabled for the scenario, not with
# torch.backends.cudnn.flags(), which also resets deterministic/allow_tf32 and reads the legacy
# allow_tf32 getter that raises once fp32_precision is set (torch 2.13: "a mix of the legacy
# and new APIs"; torch/backends/cudnn/__init__.py set_flags)
CUDNN = "cudnn"
STATE = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
         "moving_variance": "running_var"}


def _deterministic() -> None:
    """Same numbers on every run: one thread, fixed seed, full-precision float32 matmuls."""
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_float32_matmul_precision("highest")
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9 replaces the allow_tf32 flags
        torch.backends.fp32_precision = "ieee"
    else:  # pragma: no cover - older torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def torch_momentum(layer: Layer) -> float | None:
    """The scenario's Keras-convention momentum as torch's ``1 - m``, or None (cumulative).

    The conversion is the registry's, the one ``xbn port`` uses: 1 - 0.99 is
    0.010000000000000009 in binary, and a user porting Keras code writes 0.01.
    """
    return native_momentum("torch", None if layer.cumulative else float(layer.momentum))


def _out(t: torch.Tensor):
    """A tensor as xbn's value: numpy array, or (float64 array, "bfloat16")."""
    t = t.detach().cpu()  # a CUDA tensor (torch@cuda) comes back to the host
    if t.dtype == torch.bfloat16:
        return t.to(torch.float64).numpy(), "bfloat16"
    return t.numpy().copy()


class TorchAdapter(Adapter):
    def __init__(self, framework_id: str = "torch"):
        super().__init__(framework_id)
        _deterministic()
        self.device = torch.device(current_device())  # "cuda" in a torch@cuda worker

    # -- construction ------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        """The registry's declaration, with ``bias=False`` asked of the installed torch."""
        has_bias = "bias" in inspect.signature(torch.nn.BatchNorm1d).parameters
        return replace(super().capabilities(), scale_without_center=has_bias)

    def build(self, layer: Layer) -> None:
        self.require(layer, "center_without_scale",
                     "torch's BatchNorm has a bias only together with a weight (affine=True; "
                     "bias=False drops the bias, nothing drops the weight alone): "
                     f"center={layer.center} with scale={layer.scale} cannot be built")
        self.require(layer, "scale_without_center",
                     f"torch {torch.__version__}'s affine=True/False creates weight and bias "
                     "together (no bias= argument before torch 2.12): "
                     f"center={layer.center} with scale={layer.scale} cannot be built")
        kwargs: dict = {"affine": layer.center or layer.scale,
                        "track_running_stats": layer.track_running_stats}
        if layer.scale and not layer.center:
            kwargs["bias"] = False  # a weight without a bias
        if not layer.defaults:  # else torch's own momentum=0.1, eps=1e-5
            kwargs.update(momentum=torch_momentum(layer), eps=float(layer.epsilon))
        native = dict(layer.native.get(self.framework_id, {}))
        memory_format = native.pop(MEMORY_FORMAT, "contiguous")  # not a constructor argument
        cudnn = native.pop(CUDNN, True)  # neither
        if not isinstance(cudnn, bool):
            raise NotApplicable(f"[layer.native.torch] cudnn must be true or false, got {cudnn!r}")
        torch.backends.cudnn.enabled = cudnn  # for this scenario; the next build sets it again
        kwargs.update(native)
        if self.device.type == "cpu" and layer.mixed and not (  # on CUDA torch decides
                layer.dtype in ("float16", "bfloat16") and layer.state_dtype == "float32"):
            raise NotApplicable(
                f"torch's CPU BatchNorm mixes dtypes only for float16/bfloat16 inputs with "
                f"float32 parameters (aten/src/ATen/native/cpu/mixed_data_type.h: 'mixed dtype "
                f"(CPU): expect parameter to have scalar type of Float'); {layer.dtype} inputs "
                f"with {layer.state_dtype} parameters cannot run")
        torch.manual_seed(0)
        self.layer = layer
        self.dtype = DTYPES[layer.dtype]
        self.module = MODULES[layer.rank](layer.features, **kwargs).to(
            self.device, DTYPES[layer.state_dtype])
        # what every op calls: the module, or torch.compile(module) for torch+compile
        self.forward = Forward(self.module, self.mode, self.framework_id, self.notes)
        self.memory_format = MEMORY_FORMATS[memory_format].get(layer.rank)
        if self.memory_format is None:  # the loader refuses it; a Layer built in code may not
            raise NotApplicable(f"memory_format={memory_format} needs a 4-D or 5-D input")
        self.optimizer: torch.optim.Optimizer | None = None

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        """Scenario-layout float64 -> channels-first tensor of the layer's dtype, contiguous or
        in the ``memory_format`` asked for (the same logical NCHW tensor, NHWC strides)."""
        x = np.ascontiguousarray(to_channels_first(np.asarray(x, np.float64), self.layer.layout))
        t = torch.from_numpy(x).to(self.dtype).contiguous(memory_format=self.memory_format)
        return t.to(self.device)  # .to keeps the memory format (preserve_format)

    def _result(self, t: torch.Tensor):
        value = _out(t)
        if isinstance(value, tuple):
            return from_channels_first(value[0], self.layer.layout), value[1]
        return from_channels_first(value, self.layer.layout)

    def _set_training(self, training: bool | None) -> None:
        if training is not None:
            self.module.train(training)

    # -- operations --------------------------------------------------------------------
    def call(self, x, training: bool | None):
        self._set_training(training)
        with torch.no_grad():
            return self._result(self.forward(self._tensor(x)))

    def predict(self, x):
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                return self._result(self.forward(self._tensor(x)))
        finally:
            self.module.train(was_training)

    def set_trainable(self, trainable: bool) -> None:
        self.module.requires_grad_(trainable)  # freezes weight/bias only; stats still update

    def set_mode(self, mode: str) -> None:
        self.module.train(mode == "train")

    def set_hyper(self, momentum, epsilon) -> None:
        """``bn.momentum = ...``/``bn.eps = ...``: plain attributes that ``_BatchNorm.forward``
        hands to ``F.batch_norm`` at every call (torch/nn/modules/batchnorm.py), so the next
        call uses them. "cumulative" is ``momentum = None`` (the average over
        ``num_batches_tracked``, which keeps counting from where it is)."""
        if momentum is not None:
            self.module.momentum = native_momentum(
                "torch", None if momentum == "cumulative" else float(momentum))
        if epsilon is not None:
            self.module.eps = float(epsilon)

    def reset(self) -> None:
        """``reset_running_stats()``: running_mean 0, running_var 1 and num_batches_tracked 0
        (torch/nn/modules/batchnorm.py:91-97); weight and bias are kept. A module without
        running statistics does nothing, as torch does."""
        self.module.reset_running_stats()

    def _make_optimizer(self, step: Step) -> torch.optim.Optimizer:
        o = step.optimizer
        params = list(self.module.parameters())  # [] when affine=False: torch raises
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=0.0, weight_decay=0.0)
        if o.name == "rmsprop":
            return torch.optim.RMSprop(params, lr=o.lr, alpha=o.rho, eps=o.eps, weight_decay=0.0,
                                       momentum=0.0, centered=False)
        return torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                weight_decay=0.0, amsgrad=False)

    def fit(self, x, target, step: Step, fresh_optimizer: bool):
        """The usual loop: train(), zero_grad, forward, mse_loss, backward, step."""
        if fresh_optimizer or self.optimizer is None:
            self.optimizer = self._make_optimizer(step)
        xs, ts = self._tensor(x), self._tensor(target)
        self.module.train()
        epoch_loss, loss_dtype = 0.0, self.dtype
        for _ in range(step.epochs):
            total, count = 0.0, 0
            for sl in batches(xs.shape[0], step.batch_size):
                self.optimizer.zero_grad()
                loss = F.mse_loss(self.forward(xs[sl]), ts[sl])
                loss.backward()  # raises when nothing requires grad, as in any torch loop
                self.optimizer.step()
                n = xs[sl].shape[0]
                total += loss.item() * n  # the usual `running_loss += loss.item() * n`
                count += n
                loss_dtype = loss.dtype
            epoch_loss = total / count
        return np.float64(epoch_loss), str(loss_dtype).removeprefix("torch.")

    def grad(self, x, training: bool | None, weights) -> dict:
        self._set_training(training)
        xt = self._tensor(x).requires_grad_(True)
        params = {"grad_gamma": self.module.weight, "grad_beta": self.module.bias}
        for p in params.values():
            if p is not None:
                p.grad = None
        y = self.forward(xt)
        (y * self._tensor(weights)).sum().backward()
        out = {"output": self._result(y), "grad_input": self._result(xt.grad)}
        for name, p in params.items():
            if p is None:
                continue
            if p.requires_grad:
                out[name] = _out(p.grad)
            else:
                out[f"{name}_reason"] = "requires_grad=False: autograd computes no gradient"
            p.grad = None  # leave no gradient behind for a later optimizer step
        return out

    def set_weights(self, values: dict) -> None:
        with torch.no_grad():
            for name, value in values.items():
                target = getattr(self.module, STATE[name])
                if target is None:
                    why = ("track_running_stats=False" if name.startswith("moving")
                           else "bias=False" if self.module.affine else "affine=False")
                    raise NotApplicable(f"the module has no {STATE[name]} ({why})")
                target.copy_(torch.from_numpy(np.asarray(value, np.float64)))

    def state(self) -> dict:
        out = {}
        for name, attr in STATE.items():
            t = getattr(self.module, attr)
            if t is not None:
                out[name] = _out(t)
        return out

    def batches_tracked(self):
        """``num_batches_tracked`` (an int64 scalar; None without running statistics)."""
        count = getattr(self.module, "num_batches_tracked", None)
        return None if count is None else count.detach().cpu().numpy().copy()

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}


def make_adapter(framework_id: str) -> Adapter:
    return TorchAdapter(framework_id)
