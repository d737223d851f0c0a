"""Equinox: ``eqx.nn.BatchNorm`` with an ``eqx.nn.State``, batched by ``jax.vmap``.

The layer sees one example at a time, channels first ``(C, ...)``, and reduces over the
named vmap axis, exactly as Equinox's stateful example does:
``jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))``.

``mode`` is left at Equinox's default (``"legacy"``, i.e. ``"ema"`` plus a warning, which goes
to the notes); set ``[layer.native.equinox] mode = "batch"`` for the other variant.

moving_mean/moving_variance are what the layer normalizes with when ``inference=True``:
``mode="ema"``: the ``(mean, var)`` state entry itself; ``mode="batch"``: the zero-debiased
``hidden / (1 - momentum**counter)`` (counter 0: ``hidden``), computed as
equinox/nn/_batch_norm.py does.
"""

from __future__ import annotations

import warnings
from importlib import metadata

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ...scenario.loader import Layer, Step
from .._jax import common as jc
from ..base import Adapter, NotApplicable, from_channels_first, to_channels_first

AXIS = "batch"


def _batched(model: eqx.nn.BatchNorm, inference: bool | None):
    """The vmapped layer; ``inference=None`` leaves the call override out (a bare call)."""
    def one(x, state):
        if inference is None:
            return model(x, state)
        return model(x, state, inference=inference)

    return jax.vmap(one, axis_name=AXIS, in_axes=(0, None), out_axes=(0, None))


def _forward(model: eqx.nn.BatchNorm, state, x, inference: bool | None):
    """One batched call: under ``eqx.filter_jit`` as Equinox users write it (plain and
    equinox+jit), op by op for equinox+eager."""
    return _batched(model, inference)(x, state)


_jit_forward = eqx.filter_jit(_forward)
# what the plain id jits (xbn.frameworks.modes.PLAIN["equinox"]): calls and the train step,
# as Equinox's examples write them; its gradient op has always run eager (filter_value_and_grad
# of the vmapped layer). equinox+jit filter_jits every op, equinox+eager none
PLAIN_JIT = {"call": True, "predict": True, "fit": True, "grad": False}


class EquinoxAdapter(Adapter):
    def build(self, layer: Layer) -> None:
        jc.enable_x64_if_needed(jc.widest(layer), self.notes)
        self.require(layer, "cumulative_momentum",
                     "eqx.nn.BatchNorm keeps an exponential moving average only (no cumulative "
                     "average)")
        self.require(layer, "no_running_stats",
                     "eqx.nn.BatchNorm always keeps running statistics and uses them when "
                     "inference=True")
        self.require(layer, "split_affine",
                     "eqx.nn.BatchNorm creates weight and bias together (channelwise_affine); "
                     "center and scale cannot differ")
        # dtype: "the dtype to use for the running statistics and the weight and bias"
        # (equinox/nn/_batch_norm.py:124-127): the scenario's param_dtype
        kwargs: dict = {"input_size": layer.features, "axis_name": AXIS,
                        "channelwise_affine": layer.scale,
                        "dtype": jc.jax_dtype(layer.state_dtype)}
        if not layer.defaults:
            kwargs.update(eps=float(layer.epsilon), momentum=float(layer.momentum))
        kwargs.update(layer.native.get(self.framework_id, {}))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.model, self.bn_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(**kwargs)
        for w in caught:
            note = f"equinox warned: {w.message}"
            if note not in self.notes:
                self.notes.append(note)
        self.layer = layer
        self.kwargs = kwargs
        self.trainable = True
        self.opt = None
        self.opt_state = None
        note = jc.mode_note(self.framework_id, self.mode, PLAIN_JIT, "eqx.filter_jit")
        if note not in self.notes:
            self.notes.append(note)

    def _jits(self, op: str) -> bool:
        return jc.jits(self.mode, op, PLAIN_JIT)

    def _forward_for(self, op: str):
        """filter_jit traces per treedef: momentum/eps are static fields, so a `set` (a new
        layer, xbn/adapters/equinox/adapter.py set_hyper) retraces by itself."""
        return _jit_forward if self._jits(op) else _forward

    # -- helpers ---------------------------------------------------------------------
    def _x(self, x) -> jax.Array:
        return jc.to_jax(to_channels_first(x, self.layer.layout), self.layer.dtype)

    def _out(self, y):
        y = jc.to_numpy(y)
        if isinstance(y, tuple):
            return from_channels_first(y[0], self.layer.layout), y[1]
        return from_channels_first(y, self.layer.layout)

    def _stats_scale(self):
        """mode="batch": the zero-debias divisor the layer applies at inference."""
        counter = self.bn_state.get(self.model.batch_counter)
        return jnp.where(counter == 0, 1, 1 - self.model.momentum**counter)

    # -- ops -------------------------------------------------------------------------
    def call(self, x, training):
        inference = None if training is None else not training
        y, self.bn_state = self._forward_for("call")(self.model, self.bn_state, self._x(x),
                                                     inference)
        return self._out(y)

    def predict(self, x):
        """Equinox's inference entry point: a copy of the model under eqx.nn.inference_mode."""
        y, _ = self._forward_for("predict")(eqx.nn.inference_mode(self.model), self.bn_state,
                                            self._x(x), None)
        return self._out(y)

    def set_trainable(self, trainable: bool) -> None:
        """JAX has no trainable flag: frozen parameters get zero updates in the optimizer."""
        self.trainable = trainable

    def set_hyper(self, momentum, epsilon) -> None:
        """``momentum`` and ``eps`` are static fields (equinox/nn/_batch_norm.py:92-94), which
        ``eqx.tree_at`` cannot replace ("Operation undefined, 0.99 is not a leaf of the
        pytree"), so an Equinox user builds the layer anew with the new arguments and moves the
        old one's arrays and state indices into it with ``eqx.tree_at`` (the indices keep the
        state valid). The new static fields are a new treedef, so ``filter_jit`` traces again:
        the next call uses them."""
        if momentum == "cumulative":
            raise NotApplicable("eqx.nn.BatchNorm keeps an exponential moving average only")
        kwargs = dict(self.kwargs)
        if momentum is not None:
            kwargs["momentum"] = float(momentum)
        if epsilon is not None:
            kwargs["eps"] = float(epsilon)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the mode warning, already in the notes
            fresh = eqx.nn.BatchNorm(**kwargs)
        old = self.model
        names = [n for n in ("weight", "bias", "ema_first_time_index", "ema_state_index",
                             "batch_counter", "batch_state_index", "inference")
                 if getattr(old, n) is not None]
        self.model = eqx.tree_at(lambda m: [getattr(m, n) for n in names], fresh,
                                 [getattr(old, n) for n in names])
        self.kwargs = kwargs

    def set_mode(self, mode: str) -> None:
        """The module's ``inference`` field is Equinox's closest thing to a module mode."""
        self.model = eqx.nn.inference_mode(self.model, value=mode == "eval")

    def fit(self, x, target, step: Step, fresh_optimizer: bool) -> float:
        """An optax loop on the training-mode model (inference=False), which it leaves set,
        as a torch loop leaves the module in train()."""
        model = eqx.nn.inference_mode(self.model, value=False)
        if fresh_optimizer or self.opt is None or self.opt[1] != self.trainable:
            tx = jc.make_optax(step.optimizer) if self.trainable else optax.set_to_zero()
            self.opt = (tx, self.trainable)
            self.opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))
        tx = self.opt[0]

        @eqx.filter_value_and_grad(has_aux=True)
        def loss_fn(model, state, xb, tb):
            y, state = _batched(model, None)(xb, state)
            return jnp.mean(jnp.square(y - tb)), state

        def train_step(model, state, opt_state, xb, tb):
            (loss, state), grads = loss_fn(model, state, xb, tb)
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
            return eqx.apply_updates(model, updates), state, opt_state, loss

        if self._jits("fit"):
            train_step = eqx.filter_jit(train_step)

        xs, ts = self._x(x), self._x(target)
        state, opt_state = self.bn_state, self.opt_state
        (model, state, opt_state), loss = jc.train_epochs(
            step, xs, ts, (model, state, opt_state), train_step)
        self.model, self.bn_state, self.opt_state = model, state, opt_state
        return loss

    def grad(self, x, training, weights) -> dict:
        inference = None if training is None else not training
        w = self._x(weights)
        state = self.bn_state

        @eqx.filter_value_and_grad(has_aux=True)
        def objective(model_and_x, state, w):
            model, xj = model_and_x
            y, new_state = _batched(model, inference)(xj, state)
            return jnp.sum(y * w), (y, new_state)

        objective = eqx.filter_jit(objective) if self._jits("grad") else objective
        (_, (y, new_state)), (g_model, gx) = objective((self.model, self._x(x)), state, w)
        self.bn_state = new_state
        out = {"output": self._out(y), "grad_input": self._out(gx)}
        if self.model.channelwise_affine:
            for name, q in (("weight", "grad_gamma"), ("bias", "grad_beta")):
                if self.trainable:
                    out[q] = jc.to_numpy(getattr(g_model, name))
                else:
                    out[f"{q}_reason"] = "parameters frozen in the optimizer (trainable=false)"
        return out

    def set_weights(self, values) -> None:
        """gamma/beta via eqx.tree_at; moving stats into the state entry the layer reads.

        mode="batch" stores ``hidden``, so the value is multiplied by the debias divisor to make
        inference use exactly it. mode="ema" leaves the first-call flag alone: before any
        training call, the next training call still replaces the loaded statistics.
        """
        model = self.model
        for q, name in (("gamma", "weight"), ("beta", "bias")):
            if q not in values:
                continue
            old = getattr(model, name)
            if old is None:
                raise NotApplicable(f"the layer has no {q} (channelwise_affine=False)")
            model = eqx.tree_at(lambda m, n=name: getattr(m, n), model,
                                jnp.asarray(values[q], old.dtype))
        self.model = model
        if "moving_mean" not in values and "moving_variance" not in values:
            return
        if model.mode == "ema":
            index, scale = model.ema_state_index, 1
        else:
            index, scale = model.batch_state_index, self._stats_scale()
        mean, var = self.bn_state.get(index)
        if "moving_mean" in values:
            mean = (jnp.asarray(values["moving_mean"], mean.dtype) * scale).astype(mean.dtype)
        if "moving_variance" in values:
            var = (jnp.asarray(values["moving_variance"], var.dtype) * scale).astype(var.dtype)
        self.bn_state = self.bn_state.set(index, (mean, var))

    def state(self) -> dict:
        model = self.model
        out = {}
        if model.channelwise_affine:
            out["gamma"] = jc.to_numpy(model.weight)
            out["beta"] = jc.to_numpy(model.bias)
        if model.mode == "ema":
            mean, var = self.bn_state.get(model.ema_state_index)
        else:
            hidden_mean, hidden_var = self.bn_state.get(model.batch_state_index)
            scale = self._stats_scale()
            mean, var = hidden_mean / scale, hidden_var / scale
        out["moving_mean"] = jc.to_numpy(mean)
        out["moving_variance"] = jc.to_numpy(var)
        return out

    def versions(self) -> dict[str, str]:
        return {**jc.versions(), "equinox": metadata.version("equinox")}


def make_adapter(framework_id: str) -> Adapter:
    return EquinoxAdapter(framework_id)
