"""PaddlePaddle: ``paddle.nn.BatchNorm1D/2D/3D`` in dygraph (eager) mode, as Paddle users run it.

The layer is picked from the layout's rank and told the layout through its own ``data_format``
(``NC``/``NCL``/``NLC``/``NCHW``/``NHWC``/``NCDHW``/``NDHWC`` are exactly xbn's layout names),
so channels-last inputs are fed as they are. Momentum is Keras' direction (the weight of the
old value, paddle/nn/layer/norm.py:1240-1241), so the scenario's value is passed unchanged.
``weight_attr=False``/``bias_attr=False`` drop the weight or the bias alone (norm.py:790-808).
Train/eval is Paddle's module-wide mode (``layer.training``, True for a fresh layer): a step's
``training`` flag calls ``train()``/``eval()`` and the mode persists. Paddle's CPU kernel is
registered for float32 and float64 only (paddle/phi/kernels/cpu/batch_norm_kernel.cc:
``PD_REGISTER_KERNEL(batch_norm, CPU, ALL_LAYOUT, phi::BatchNormKernel, float, double)``), so
16-bit layers are n/a on this CPU build; float64 layers set ``paddle.set_default_dtype`` first,
as a Paddle user does, so the parameters and statistics are float64 too.
"""

from __future__ import annotations

import warnings

import numpy as np
import paddle
import paddle.nn.functional as F

from ...frameworks.registry import native_momentum
from ...scenario.loader import Layer, Step
from ..base import Adapter, NotApplicable, batches

MODULES = {2: paddle.nn.BatchNorm1D, 3: paddle.nn.BatchNorm1D, 4: paddle.nn.BatchNorm2D,
           5: paddle.nn.BatchNorm3D}
STATE = {"gamma": "weight", "beta": "bias", "moving_mean": "_mean",
         "moving_variance": "_variance"}
# _BatchNormBase.forward warns at every training call (paddle/nn/layer/norm.py:884-887)
TRAINING_WARNING = "When training, we now always track global mean and variance."


def _deterministic() -> None:
    paddle.set_device("cpu")
    paddle.seed(0)
    warnings.filterwarnings("ignore", message=TRAINING_WARNING)


class PaddleAdapter(Adapter):
    def __init__(self, framework_id: str = "paddle"):
        super().__init__(framework_id)
        _deterministic()

    # -- construction ------------------------------------------------------------------
    def build(self, layer: Layer) -> None:
        self.require(layer, "no_running_stats",
                     "paddle's BatchNorm always creates and updates running statistics "
                     "(paddle/nn/layer/norm.py:813-835); use_global_stats=False normalizes with "
                     "batch statistics in eval mode too, but still updates them")
        for dtype in (layer.dtype, layer.state_dtype):
            if dtype not in ("float32", "float64"):
                raise NotApplicable(
                    f"paddle's CPU batch_norm kernel is registered for float32 and float64 only "
                    f"(paddle/phi/kernels/cpu/batch_norm_kernel.cc PD_REGISTER_KERNEL; a {dtype} "
                    "tensor raises RuntimeError (NotFound) 'kernel ... is not registered')")
        if layer.mixed:
            raise NotApplicable(
                f"paddle's BatchNorm keeps its parameters in the default dtype and its kernel "
                f"takes one dtype: {layer.dtype} inputs with {layer.state_dtype} parameters "
                "have no Paddle spelling")
        kwargs: dict = {"data_format": layer.layout,
                        "weight_attr": None if layer.scale else False,
                        "bias_attr": None if layer.center else False}
        if not layer.defaults:  # else paddle's own momentum=0.9, epsilon=1e-5
            self.require(layer, "cumulative_momentum",
                         "paddle's BatchNorm has no cumulative-average momentum (only an "
                         "exponential moving average)")
            kwargs.update(momentum=native_momentum("paddle", float(layer.momentum)),
                          epsilon=float(layer.epsilon))
        kwargs.update(layer.native.get(self.framework_id, {}))  # use_global_stats, ...
        paddle.set_default_dtype(layer.dtype)
        try:
            paddle.seed(0)
            self.module = MODULES[layer.rank](layer.features, **kwargs)
        finally:
            paddle.set_default_dtype("float32")
        self.layer = layer
        self.optimizer = None

    def _tensor(self, x: np.ndarray) -> paddle.Tensor:
        return paddle.to_tensor(np.asarray(x, self.layer.dtype))

    @staticmethod
    def _out(t) -> np.ndarray:
        return t.detach().numpy().copy()

    def _set_training(self, training: bool | None) -> None:
        if training is True:
            self.module.train()
        elif training is False:
            self.module.eval()

    # -- operations --------------------------------------------------------------------
    def call(self, x, training: bool | None):
        self._set_training(training)
        with paddle.no_grad():
            return self._out(self.module(self._tensor(x)))

    def predict(self, x):
        """``eval()`` and a no-grad forward (Paddle's ``Model.predict`` does the same), the
        previous mode restored."""
        was_training = self.module.training
        self.module.eval()
        try:
            with paddle.no_grad():
                return self._out(self.module(self._tensor(x)))
        finally:
            if was_training:
                self.module.train()

    def set_trainable(self, trainable: bool) -> None:
        """``param.stop_gradient = not trainable`` on weight and bias (Paddle's freeze: the
        running statistics still update in training mode)."""
        for p in (self.module.weight, self.module.bias):
            if p is not None:
                p.stop_gradient = not trainable

    def set_mode(self, mode: str) -> None:
        self._set_training(mode == "train")

    def set_hyper(self, momentum, epsilon) -> None:
        """``_momentum``/``_epsilon``: the attributes ``_BatchNormBase.forward`` passes to
        ``F.batch_norm`` at every call (paddle/nn/layer/norm.py:879-900); Paddle has no public
        setter, so this is what its users assign."""
        if momentum == "cumulative":
            raise NotApplicable("paddle's BatchNorm has no cumulative-average momentum")
        if momentum is not None:
            self.module._momentum = native_momentum("paddle", float(momentum))
        if epsilon is not None:
            self.module._epsilon = float(epsilon)

    def _make_optimizer(self, step: Step):
        o = step.optimizer
        params = [p for p in (self.module.weight, self.module.bias) if p is not None]
        if o.name == "sgd":
            return paddle.optimizer.SGD(learning_rate=o.lr, parameters=params)
        if o.name == "rmsprop":
            return paddle.optimizer.RMSProp(learning_rate=o.lr, rho=o.rho, epsilon=o.eps,
                                            momentum=0.0, centered=False, parameters=params)
        return paddle.optimizer.Adam(learning_rate=o.lr, beta1=o.beta1, beta2=o.beta2,
                                     epsilon=o.eps, parameters=params)

    def fit(self, x, target, step: Step, fresh_optimizer: bool):
        """The usual dygraph loop: train(), forward, mse_loss, backward, step, clear_grad."""
        if fresh_optimizer or self.optimizer is None:
            self.optimizer = self._make_optimizer(step)
        xs, ts = self._tensor(x), self._tensor(target)
        self.module.train()
        epoch_loss = 0.0
        for _ in range(step.epochs):
            total, count = 0.0, 0
            for sl in batches(xs.shape[0], step.batch_size):
                loss = F.mse_loss(self.module(xs[sl]), ts[sl])
                loss.backward()
                self.optimizer.step()
                self.optimizer.clear_grad()
                n = sl.stop - sl.start
                total += float(loss.item()) * n
                count += n
            epoch_loss = total / count
        return np.float64(epoch_loss), self.layer.dtype

    def grad(self, x, training: bool | None, weights) -> dict:
        self._set_training(training)
        xt = self._tensor(x)
        xt.stop_gradient = False
        params = {"grad_gamma": self.module.weight, "grad_beta": self.module.bias}
        for p in params.values():
            if p is not None:
                p.clear_gradient()
        y = self.module(xt)
        (y * self._tensor(weights)).sum().backward()
        out = {"output": self._out(y), "grad_input": self._out(xt.grad)}
        for name, p in params.items():
            if p is None:
                continue
            if not p.stop_gradient and p.grad is not None:
                out[name] = self._out(p.grad)
            else:
                out[f"{name}_reason"] = "stop_gradient=True: autograd computes no gradient"
            p.clear_gradient()  # leave no gradient behind for a later optimizer step
        return out

    def set_weights(self, values: dict) -> None:
        for name, value in values.items():
            target = getattr(self.module, STATE[name])
            if target is None:
                kw = "weight_attr" if name == "gamma" else "bias_attr"
                raise NotApplicable(f"the layer has no {STATE[name]} ({kw}=False)")
            target.set_value(np.asarray(value, self.layer.state_dtype))

    def state(self) -> dict:
        out = {}
        for name, attr in STATE.items():
            t = getattr(self.module, attr)
            if t is not None:
                out[name] = self._out(t)
        return out

    def versions(self) -> dict[str, str]:
        return {"paddlepaddle": paddle.__version__}


def make_adapter(framework_id: str) -> Adapter:
    return PaddleAdapter(framework_id)
