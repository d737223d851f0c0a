"""``flax.linen.BatchNorm`` driven the way linen users drive it.

Linen modules are stateless: the adapter holds the ``variables`` dict ({"params",
"batch_stats"}) and threads it through ``apply``. Training passes
``use_running_average=False`` with ``mutable=["batch_stats"]`` and keeps the returned
statistics; inference passes ``use_running_average=True``. The layer's ``axis`` is set to the
layout's channel axis (no transposes). Freezing (``trainable = false``) exists only in the
optimizer (``optax.multi_transform`` with ``optax.set_to_zero``); linen has no trainable flag
and nothing ties it to inference mode.
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ...scenario.loader import Layer, Step, channel_axis
from .._jax import common as jc
from ..base import Adapter, NotApplicable
from .masking import FlaxMask

# xbn name -> (collection, linen variable name)
VARIABLES = {
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}
FROZEN_REASON = ("frozen in the optimizer (optax.set_to_zero): linen has no trainable flag, "
                 "so jax.grad still differentiates it but fit never applies it")
# what the plain id jits (xbn.frameworks.modes.PLAIN["flax"]): linen users call apply directly
# and jit their train step; flax+jit jits every op, flax+eager none
PLAIN_JIT = {"call": False, "predict": False, "fit": True, "grad": False}


class FlaxLinenAdapter(FlaxMask, Adapter):
    def build(self, layer: Layer) -> None:
        kwargs = jc.flax_batchnorm_kwargs(layer, self.framework_id, "flax.linen.BatchNorm")
        jc.enable_x64_if_needed(jc.widest(layer), self.notes)
        note = jc.stats_note(layer, "flax.linen.BatchNorm")
        if note and note not in self.notes:
            self.notes.append(note)
        self.layer = layer
        self.module = nn.BatchNorm(**kwargs)
        shape = [1] * layer.rank
        shape[channel_axis(layer.layout)] = layer.features
        dummy = jnp.zeros(shape, jc.jax_dtype(layer.dtype))
        # init never updates batch_stats; pass the flag only where the attribute is unset
        flag = {} if self.module.use_running_average is not None else {
            "use_running_average": True}
        self.variables = flax.core.unfreeze(self.module.init(jax.random.key(0), dummy, **flag))
        self.variables.setdefault("params", {})
        self.trainable = True
        self._opt = None  # (trainable when built, optax transformation, its state)
        self._step_fn = None
        note = jc.mode_note(self.framework_id, self.mode, PLAIN_JIT, "jax.jit")
        if note not in self.notes:
            self.notes.append(note)
        self._compile()

    def _jit(self, op: str, fn, **kwargs):
        return jc.maybe_jit(fn, jc.jits(self.mode, op, PLAIN_JIT), **kwargs)

    def _compile(self) -> None:
        """The function each op runs, jitted or not per the mode. Each reads ``self.module``
        when it is traced, so a new module (``set``) needs new functions: a user's jitted
        apply of the old module would go on running the old attributes."""
        self._call_fn = self._jit("call", self._apply, static_argnames=("training",))
        self._predict_fn = self._jit("predict", self._predict)
        self._grad_fn = self._jit("grad", self._grad, static_argnames=("training",))
        if self._opt is not None:
            self._step_fn = self._jit("fit", self._make_step(self._opt[1]))

    # -- forward passes

    def _flag(self, training: bool | None) -> dict:
        return {} if training is None else {"use_running_average": not training}

    def _apply(self, params, batch_stats, x, mask_kw: dict, training: bool | None):
        """One forward pass; returns (output, new batch_stats). ``mask_kw``: ``self._mask``'s
        keywords, made outside any jit (a mask's kind is Python, not traced).

        ``mutable=["batch_stats"]`` always: a no-op in inference, and what lets a bare call work
        when ``use_running_average=False`` was given to the constructor (``native``).
        """
        variables = {"params": params, "batch_stats": batch_stats}
        y, mutated = self.module.apply(variables, x, mutable=["batch_stats"],
                                       **self._flag(training), **mask_kw)
        return y, mutated.get("batch_stats", batch_stats)

    def _predict(self, variables, x, mask_kw: dict):
        return self.module.apply(variables, x, use_running_average=True, **mask_kw)

    def call(self, x, training, mask=None):
        y, stats = self._call_fn(self.variables["params"], self.variables["batch_stats"],
                                 jc.to_jax(x, self.layer.dtype), self._mask(mask),
                                 training=training)
        self.variables["batch_stats"] = stats
        return jc.to_numpy(y)

    def predict(self, x, mask=None):
        xj = jc.to_jax(x, self.layer.dtype)
        return jc.to_numpy(self._predict_fn(self.variables, xj, self._mask(mask)))

    # -- masks: FlaxMask (xbn/adapters/flax/masking.py)

    # -- training

    def set_trainable(self, trainable: bool) -> None:
        self.trainable = trainable

    def set_hyper(self, momentum, epsilon) -> None:
        """``module.clone(momentum=..., epsilon=...)`` applied to the same ``variables``, as
        linen users change a dataclass attribute. The jitted fit step traced the old module
        (its attributes are Python constants of that trace), so it is traced anew for the new
        one, as a ``TrainState`` holding the new ``apply_fn`` would be; the optimizer state is
        kept."""
        if momentum == "cumulative":
            raise NotApplicable("flax.linen.BatchNorm has only an exponential moving average")
        changes = {k: float(v) for k, v in (("momentum", momentum), ("epsilon", epsilon))
                   if v is not None}
        self.module = self.module.clone(**changes)
        self._compile()

    def set_mode(self, mode: str) -> None:
        raise NotApplicable("linen modules are stateless: the mode is the use_running_average "
                            "argument of each call (or a constructor attribute), no .train()/.eval()")

    def _optimizer(self, cfg, fresh: bool):
        if fresh or self._opt is None or self._opt[0] != self.trainable:
            params = self.variables["params"]
            label = "train" if self.trainable else "frozen"
            tx = optax.multi_transform({"train": jc.make_optax(cfg), "frozen": optax.set_to_zero()},
                                       jax.tree.map(lambda _: label, params))
            self._opt = (self.trainable, tx, tx.init(params))
            self._step_fn = self._jit("fit", self._make_step(tx))
        return self._opt

    def _make_step(self, tx):
        axis = channel_axis(self.layer.layout)

        def loss_fn(params, batch_stats, xb, tb, mb):
            y, stats = self._apply(params, batch_stats, xb, self._mask(mb), True)
            return jc.mse(y, tb, mb, axis), stats

        def step(params, batch_stats, opt_state, xb, tb, mb=None):
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, batch_stats, xb, tb, mb)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), stats, opt_state, loss

        return step

    def fit(self, x, target, step: Step, fresh_optimizer: bool, mask=None):
        _, _, opt_state = self._optimizer(step.optimizer, fresh_optimizer)
        xj, tj = jc.to_jax(x, self.layer.dtype), jc.to_jax(target, self.layer.dtype)
        params, stats = self.variables["params"], self.variables["batch_stats"]
        (params, stats, opt_state), loss = jc.train_epochs(
            step, xj, tj, (params, stats, opt_state), self._step_fn,
            None if mask is None else jnp.asarray(mask))
        self.variables["params"], self.variables["batch_stats"] = params, stats
        self._opt = (self._opt[0], self._opt[1], opt_state)
        return loss

    def _grad(self, params, batch_stats, xj, wj, mask_kw: dict, training: bool | None):
        def objective(xv, params):
            y, stats = self._apply(params, batch_stats, xv, mask_kw, training)
            return jnp.sum(y * wj), (y, stats)

        return jax.grad(objective, argnums=(0, 1), has_aux=True)(xj, params)

    def grad(self, x, training, weights, mask=None) -> dict:
        xj, wj = jc.to_jax(x, self.layer.dtype), jc.to_jax(weights, self.layer.dtype)
        (gx, gp), (y, stats) = self._grad_fn(self.variables["params"],
                                             self.variables["batch_stats"], xj, wj,
                                             self._mask(mask), training=training)
        self.variables["batch_stats"] = stats
        out = {"output": jc.to_numpy(y), "grad_input": jc.to_numpy(gx)}
        for name, key in (("grad_gamma", "scale"), ("grad_beta", "bias")):
            if key in gp:
                if self.trainable:
                    out[name] = jc.to_numpy(gp[key])
                else:
                    out[f"{name}_reason"] = FROZEN_REASON
        return out

    # -- weights

    def set_weights(self, values) -> None:
        for name in values:
            collection, key = VARIABLES[name]
            if key not in self.variables.get(collection, {}):
                raise NotApplicable(f"the layer has no {name} ({collection}/{key})")
        for name, value in values.items():
            collection, key = VARIABLES[name]
            # keep the variable's dtype, as restoring a checkpoint into the tree does
            current = self.variables[collection][key]
            self.variables[collection][key] = jnp.asarray(value, current.dtype)

    def state(self) -> dict:
        out = {}
        for name, (collection, key) in VARIABLES.items():
            value = self.variables.get(collection, {}).get(key)
            if value is not None:
                out[name] = jc.to_numpy(value)
        return out

    def versions(self) -> dict[str, str]:
        return {"flax": flax.__version__, **jc.versions()}


def make_adapter(framework_id: str) -> Adapter:
    return FlaxLinenAdapter(framework_id)
