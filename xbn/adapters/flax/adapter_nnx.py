"""``flax.nnx.BatchNorm`` driven the way NNX users drive it.

NNX modules are stateful objects: the layer holds its ``Param`` (scale, bias) and ``BatchStat``
(mean, var) variables and updates the statistics in place. ``training`` maps to the call
argument ``use_running_average=not training``; a bare call uses the module's attribute (the
constructor default ``False``, or what ``.train()``/``.eval()`` set). The layer's ``axis`` is
the layout's channel axis (no transposes). Training uses ``nnx.Optimizer`` and
``nnx.value_and_grad`` under ``nnx.jit``; ``trainable = false`` freezes the parameters in the
optimizer (``wrt=nnx.Nothing``), which NNX does not tie to inference mode.
"""

from __future__ import annotations

import flax
import jax.numpy as jnp
from flax import nnx

from ...scenario.loader import Layer, Step, channel_axis
from .._jax import common as jc
from ..base import Adapter, NotApplicable
from .masking import FlaxMask

# xbn name -> attribute of nnx.BatchNorm
VARIABLES = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}
FROZEN_REASON = ("frozen in the optimizer (nnx.Optimizer(wrt=nnx.Nothing)): NNX has no trainable "
                 "flag, so the parameter is differentiable but fit never updates it")
# what the plain id jits (xbn.frameworks.modes.PLAIN["flax-nnx"]): NNX users call the module
# directly and nnx.jit their train step; flax-nnx+jit nnx.jits every op, flax-nnx+eager none
PLAIN_JIT = {"call": False, "predict": False, "fit": True, "grad": False}
F64_NOTE = ("flax-nnx float64: BatchNorm creates mean/var as float32 BatchStats whatever "
            "param_dtype is, and the in-place update (`self.mean[...] = ...`) casts the float64 "
            "statistics back to float32 (JAX FutureWarning: will become an error)")


class FlaxNnxAdapter(FlaxMask, Adapter):
    def build(self, layer: Layer) -> None:
        kwargs = jc.flax_batchnorm_kwargs(layer, self.framework_id, "flax.nnx.BatchNorm")
        jc.enable_x64_if_needed(jc.widest(layer), self.notes)
        note = jc.stats_note(layer, "flax.nnx.BatchNorm")
        if note and note not in self.notes:
            self.notes.append(note)
        self.layer = layer
        if layer.dtype == "float64" and F64_NOTE not in self.notes:
            self.notes.append(F64_NOTE)
        self.bn = nnx.BatchNorm(layer.features, rngs=nnx.Rngs(0), **kwargs)
        self.trainable = True
        self._opt = None  # (trainable when built, nnx.Optimizer)
        note = jc.mode_note(self.framework_id, self.mode, PLAIN_JIT, "nnx.jit")
        if note not in self.notes:
            self.notes.append(note)
        # nnx.jit traces per graph definition: momentum/epsilon are static attributes of the
        # module's graphdef, so a `set` retraces these functions by itself (no stale constant)
        self._call_fn = self._jit("call", self._forward, static_argnames=("training",))
        self._predict_fn = self._jit("predict", self._predict)
        self._grad_fn = self._jit("grad", self._grad, static_argnames=("training",))

    def _jit(self, op: str, fn, **kwargs):
        return jc.maybe_jit(fn, jc.jits(self.mode, op, PLAIN_JIT), nnx.jit, **kwargs)

    def _forward(self, model, x, mask_kw: dict, training: bool | None):
        """``mask_kw``: ``self._mask``'s keywords, made outside any jit."""
        return model(x, **mask_kw) if training is None else \
            model(x, use_running_average=not training, **mask_kw)

    @staticmethod
    def _predict(model, x, mask_kw: dict):
        return model(x, use_running_average=True, **mask_kw)

    def call(self, x, training, mask=None):
        return jc.to_numpy(self._call_fn(self.bn, jc.to_jax(x, self.layer.dtype),
                                         self._mask(mask), training=training))

    def predict(self, x, mask=None):
        return jc.to_numpy(self._predict_fn(self.bn, jc.to_jax(x, self.layer.dtype),
                                            self._mask(mask)))

    # -- masks: FlaxMask (xbn/adapters/flax/masking.py)

    def set_trainable(self, trainable: bool) -> None:
        self.trainable = trainable

    def set_hyper(self, momentum, epsilon) -> None:
        """``bn.momentum = ...``/``bn.epsilon = ...`` on the live module, as NNX users change
        it. They are static attributes of the module's graph definition (not Variables), so an
        ``nnx.jit`` function sees a new graphdef and traces again: the next call uses them."""
        if momentum == "cumulative":
            raise NotApplicable("flax.nnx.BatchNorm has only an exponential moving average")
        if momentum is not None:
            self.bn.momentum = float(momentum)
        if epsilon is not None:
            self.bn.epsilon = float(epsilon)

    def set_mode(self, mode: str) -> None:
        if mode == "train":
            self.bn.train()
        else:
            self.bn.eval()

    # -- training

    def _wrt(self):
        return nnx.Param if self.trainable else nnx.Nothing

    def fit(self, x, target, step: Step, fresh_optimizer: bool, mask=None):
        if fresh_optimizer or self._opt is None or self._opt[0] != self.trainable:
            self._opt = (self.trainable, nnx.Optimizer(self.bn, jc.make_optax(step.optimizer),
                                                       wrt=self._wrt()))
        optimizer = self._opt[1]
        wrt = self._wrt()

        axis = channel_axis(self.layer.layout)

        def train_step(model, optimizer, xb, tb, mb):
            def loss_fn(m):
                return jc.mse(self._forward(m, xb, self._mask(mb), True), tb, mb, axis)

            loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)
            optimizer.update(model, grads)
            return loss

        train_step = self._jit("fit", train_step)
        xj, tj = jc.to_jax(x, self.layer.dtype), jc.to_jax(target, self.layer.dtype)
        _, loss = jc.train_epochs(step, xj, tj, (),
                                  lambda xb, tb, mb=None: (train_step(self.bn, optimizer, xb, tb, mb),),
                                  None if mask is None else jnp.asarray(mask))
        return loss

    def _grad(self, model, xj, wj, mask_kw: dict, training: bool | None):
        def objective(model, xv):
            y = self._forward(model, xv, mask_kw, training)
            return jnp.sum(y * wj), y

        return nnx.grad(objective, argnums=(nnx.DiffState(0, nnx.Param), 1),
                        has_aux=True)(model, xj)

    def grad(self, x, training, weights, mask=None) -> dict:
        xj, wj = jc.to_jax(x, self.layer.dtype), jc.to_jax(weights, self.layer.dtype)
        (gp, gx), y = self._grad_fn(self.bn, xj, wj, self._mask(mask), training=training)
        out = {"output": jc.to_numpy(y), "grad_input": jc.to_numpy(gx)}
        for name, key in (("grad_gamma", "scale"), ("grad_beta", "bias")):
            if getattr(self.bn, key) is not None:
                if self.trainable:
                    out[name] = jc.to_numpy(gp[key][...])
                else:
                    out[f"{name}_reason"] = FROZEN_REASON
        return out

    # -- weights

    def set_weights(self, values) -> None:
        for name in values:
            if getattr(self.bn, VARIABLES[name]) is None:
                raise NotApplicable(f"the layer has no {name} ({VARIABLES[name]})")
        for name, value in values.items():
            var = getattr(self.bn, VARIABLES[name])
            var[...] = jnp.asarray(value, var[...].dtype)

    def state(self) -> dict:
        out = {}
        for name, key in VARIABLES.items():
            var = getattr(self.bn, key)
            if var is not None:
                out[name] = jc.to_numpy(var[...])
        return out

    def versions(self) -> dict[str, str]:
        return {"flax": flax.__version__, **jc.versions()}


def make_adapter(framework_id: str) -> Adapter:
    return FlaxNnxAdapter(framework_id)
