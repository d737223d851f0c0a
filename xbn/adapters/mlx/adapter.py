"""MLX: ``mlx.nn.BatchNorm`` on MLX's CPU device, driven the way MLX users drive it.

MLX normalizes the last axis (mlx/nn/layers/normalization.py:371 reduces every other axis), so
channels-first scenarios are transposed in and out (exact), and it takes 2-D to 4-D inputs only
(:388-391): a 5-D layer is n/a. Momentum is torch's direction (the weight of the new batch,
:408-409): the scenario's Keras-convention value m becomes ``1 - m`` (the registry's conversion,
the one ``xbn port`` writes). ``training`` is a module attribute, True for a fresh module and
changed by ``train()``/``eval()``: a step's ``training`` flag sets it and it persists.

MLX is lazy: every op builds a graph that runs when a value is needed. Each operation here ends
with ``mx.eval`` of its outputs *and* of the module's state, so the running statistics are
computed at the step that moved them (as a training loop's ``mx.eval(model.state)`` does), and
values are read with ``np.array`` only after that. ``eps <= 0`` is refused by the constructor
(:329-330): that ValueError is MLX's answer (an error row), not xbn's.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from ...frameworks.registry import native_momentum
from ...scenario.loader import Layer, Step
from ..base import Adapter, NotApplicable, batches, from_channels_last, to_channels_last

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16,
          "float64": mx.float64}
STATE = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
         "moving_variance": "running_var"}

EMPTY_TRAINING = ("a training-mode call on an empty batch is not run: MLX 0.32.4 can hang in it "
                  "(mx.var with ddof=1 over no rows, then an elementwise op on the empty input "
                  "never returns from mx.eval)")


def _value(a: mx.array):
    """An evaluated array as xbn's value: numpy, or (float64 array, "bfloat16")."""
    if a.dtype == mx.bfloat16:
        return np.array(a.astype(mx.float32)).astype(np.float64), "bfloat16"
    return np.array(a)


class MLXAdapter(Adapter):
    def __init__(self, framework_id: str = "mlx"):
        super().__init__(framework_id)
        mx.set_default_device(mx.cpu)  # float64 runs on MLX's CPU device only
        mx.random.seed(0)

    # -- construction ------------------------------------------------------------------
    def build(self, layer: Layer) -> None:
        if layer.rank > 4:
            raise NotApplicable("mlx.nn.BatchNorm takes 2-D, 3-D or 4-D inputs (NC, NLC, NHWC: "
                                "mlx/nn/layers/normalization.py:388-391); a 5-D input raises")
        self.require(layer, "split_affine",
                     "mlx.nn.BatchNorm has one affine flag for weight and bias together: "
                     f"center={layer.center} with scale={layer.scale} cannot be built")
        kwargs: dict = {"affine": layer.center or layer.scale,
                        "track_running_stats": layer.track_running_stats}
        if not layer.defaults:  # else MLX's own momentum=0.1, eps=1e-5
            self.require(layer, "cumulative_momentum",
                         "mlx.nn.BatchNorm has no cumulative-average momentum (momentum=None "
                         "fails in `1 - mu`)")
            kwargs.update(momentum=native_momentum("mlx", float(layer.momentum)),
                          eps=float(layer.epsilon))
        kwargs.update(layer.native.get(self.framework_id, {}))
        self.layer = layer
        self.dtype = DTYPES[layer.dtype]
        self.module = nn.BatchNorm(layer.features, **kwargs)  # eps <= 0: MLX's ValueError
        if layer.state_dtype != "float32":  # a user's model.set_dtype(...)
            self.module.set_dtype(DTYPES[layer.state_dtype])
        mx.eval(self.module.state)
        self.optimizer = None

    def _array(self, x: np.ndarray) -> mx.array:
        x = np.ascontiguousarray(to_channels_last(np.asarray(x, np.float64), self.layer.layout))
        return mx.array(x.astype(np.float32) if self.dtype == mx.bfloat16 else x).astype(
            self.dtype)

    def _result(self, a: mx.array):
        value = _value(a)
        if isinstance(value, tuple):
            return from_channels_last(value[0], self.layer.layout), value[1]
        return from_channels_last(value, self.layer.layout)

    def _set_training(self, training: bool | None) -> None:
        if training is not None:
            self.module.train(training)

    def _refuse_empty_training(self, x) -> None:
        """MLX 0.32.4 can hang on a training-mode BatchNorm over an empty batch: mx.var(x,
        ddof=1) over no rows, then x * rsqrt(var + eps) does not return from mx.eval (checked
        by hand: `x = mx.array(np.zeros((0, 3), np.float32)); v = mx.var(x, axis=0, ddof=1);
        mx.eval(x * mx.rsqrt(v + 1e-5))` never returns; not every run). A worker that hangs
        would hold a whole report for its timeout, so xbn does not make that call."""
        if self.module.training and np.asarray(x).size == 0:
            raise NotApplicable(EMPTY_TRAINING)

    def _forward(self, x) -> mx.array:
        self._refuse_empty_training(x)
        y = self.module(self._array(x))
        mx.eval(y, self.module.state)  # the statistics this call moved, computed now
        return y

    # -- operations --------------------------------------------------------------------
    def call(self, x, training: bool | None):
        self._set_training(training)
        return self._result(self._forward(x))

    def predict(self, x):
        """MLX has no predict: ``eval()`` and a call, the previous mode restored."""
        was_training = self.module.training
        self.module.eval()
        try:
            return self._result(self._forward(x))
        finally:
            self.module.train(was_training)

    def set_trainable(self, trainable: bool) -> None:
        """``freeze()``/``unfreeze()``: weight and bias leave/rejoin ``trainable_parameters``
        (the running statistics are always frozen, normalization.py:344-350, and still move
        in training mode)."""
        if trainable:
            self.module.unfreeze()
        else:
            self.module.freeze()

    def set_mode(self, mode: str) -> None:
        self.module.train(mode == "train")

    def set_hyper(self, momentum, epsilon) -> None:
        """``bn.momentum``/``bn.eps``: plain attributes ``__call__`` reads at every call
        (normalization.py:406-414); the constructor's eps check does not run again."""
        if momentum == "cumulative":
            raise NotApplicable("mlx.nn.BatchNorm has no cumulative-average momentum")
        if momentum is not None:
            self.module.momentum = native_momentum("mlx", float(momentum))
        if epsilon is not None:
            self.module.eps = float(epsilon)

    def _make_optimizer(self, step: Step):
        o = step.optimizer
        if o.name == "sgd":
            return optim.SGD(learning_rate=o.lr)
        if o.name == "rmsprop":
            return optim.RMSprop(learning_rate=o.lr, alpha=o.rho, eps=o.eps)
        # bias_correction=True: the Adam of the paper, which the scenario names (MLX's default
        # bias_correction=False leaves the first steps' moments uncorrected)
        return optim.Adam(learning_rate=o.lr, betas=[o.beta1, o.beta2], eps=o.eps,
                          bias_correction=True)

    def fit(self, x, target, step: Step, fresh_optimizer: bool):
        """The MLX training loop: ``nn.value_and_grad(model, loss_fn)``, ``optimizer.update``,
        ``mx.eval(model.state, optimizer.state)``."""
        if fresh_optimizer or self.optimizer is None:
            self.optimizer = self._make_optimizer(step)
            note = "mlx Adam built with bias_correction=True (MLX's default is False)"
            if step.optimizer.name == "adam" and note not in self.notes:
                self.notes.append(note)
        self.module.train()
        self._refuse_empty_training(x)
        xs, ts = self._array(x), self._array(target)

        def loss_fn(model, xb, tb):
            return nn.losses.mse_loss(model(xb), tb)

        step_fn = nn.value_and_grad(self.module, loss_fn)
        epoch_loss, loss_dtype = 0.0, self.layer.dtype
        for _ in range(step.epochs):
            total, count = 0.0, 0
            for sl in batches(xs.shape[0], step.batch_size):
                loss, grads = step_fn(self.module, xs[sl], ts[sl])
                self.optimizer.update(self.module, grads)
                mx.eval(loss, self.module.state, self.optimizer.state)
                n = sl.stop - sl.start
                total += float(loss.item()) * n
                count += n
                loss_dtype = str(loss.dtype).removeprefix("mlx.core.")
            epoch_loss = total / count
        return np.float64(epoch_loss), loss_dtype

    def grad(self, x, training: bool | None, weights) -> dict:
        """``mx.value_and_grad`` over (trainable parameters, input) of sum(output * weights),
        the output returned beside the value; the module's state evaluated with it."""
        self._set_training(training)
        self._refuse_empty_training(x)
        module, w = self.module, self._array(weights)

        def objective(params, xb):
            module.update(params)
            y = module(xb)
            return (y * w).sum(), y

        params = module.trainable_parameters()
        (_, y), (gparams, gx) = mx.value_and_grad(objective, argnums=(0, 1))(
            params, self._array(x))
        mx.eval(y, gparams, gx, module.state)
        out = {"output": self._result(y), "grad_input": self._result(gx)}
        for name, attr in (("grad_gamma", "weight"), ("grad_beta", "bias")):
            if attr not in module:
                continue
            if attr in gparams:
                out[name] = _value(gparams[attr])
            else:
                out[f"{name}_reason"] = ("frozen (freeze()): not among trainable_parameters, "
                                         "which MLX differentiates")
        return out

    def set_weights(self, values: dict) -> None:
        for name, value in values.items():
            attr = STATE[name]
            if attr not in self.module:
                why = "track_running_stats=False" if name.startswith("moving") else "affine=False"
                raise NotApplicable(f"the module has no {attr} ({why})")
            old = self.module[attr]
            arr = np.asarray(value, np.float64)
            self.module[attr] = mx.array(arr.astype(np.float32) if old.dtype == mx.bfloat16
                                         else arr).astype(old.dtype)
        mx.eval(self.module.state)

    def state(self) -> dict:
        mx.eval(self.module.state)
        return {name: _value(self.module[attr]) for name, attr in STATE.items()
                if attr in self.module}

    def versions(self) -> dict[str, str]:
        return {"mlx": mx.__version__}


def make_adapter(framework_id: str) -> Adapter:
    return MLXAdapter(framework_id)
