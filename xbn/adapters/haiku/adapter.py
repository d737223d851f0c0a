"""Haiku: ``hk.BatchNorm`` under ``hk.transform_with_state``, trained with an optax step.

What xbn calls moving_mean/moving_variance is each EMA's ``average`` state entry: the
zero-debiased ``hidden / (1 - decay**counter)`` that the layer itself reads when
``is_training=False`` (haiku/_src/batch_norm.py, ``self.mean_ema.average``). ``hidden`` is only
the EMA's internal accumulator.

The layer is initialised the way Haiku users do, ``init(rng, batch, is_training=True)``, on a
batch of zeros: Haiku's ``init`` leaks the init batch's statistics into ``average`` (while
``counter`` and ``hidden`` stay 0), so a zero batch gives the all-zero state that
``ExponentialMovingAverage.initialize`` declares. Fresh moving statistics are therefore
mean 0 and variance **0** (not 1).
"""

from __future__ import annotations

from importlib import metadata

import haiku as hk
import jax
import jax.numpy as jnp
import optax

from ...scenario.loader import Layer, Step, channel_axis, channels_last
from .._jax import common as jc
from ..base import Adapter, NotApplicable

# Haiku's mixed precision for BatchNorm (examples/imagenet/train.py: the BN policy keeps
# parameters and computations in float32 and only casts the output): jmp policies per class.
MIXED_NOTE = ("haiku: 16-bit inputs with float32 parameters run under "
              "hk.mixed_precision.set_policy(hk.BatchNorm, jmp.Policy(param_dtype=float32, "
              "compute_dtype=float32, output_dtype=<input dtype>)), as Haiku's ImageNet example "
              "runs BatchNorm")

# what the plain id jits (xbn.frameworks.modes.PLAIN["haiku"]): every op, as Haiku users jit
# their apply and train step; haiku+jit is the same, haiku+eager jits nothing
PLAIN_JIT = {"call": True, "predict": True, "fit": True, "grad": True}
EAGER_NOTE = ("haiku+eager: hk.BatchNorm computes var = E[x^2] - E[x]^2 with no clamp; op by op "
              "a negative float32 difference reaches rsqrt(var + eps) as it is (NaN), where XLA's "
              "fused program may round it otherwise")

# transforms (their jitted apply and train steps) by constructor arguments, mode and policy;
# init results by what they depend on (HaikuAdapter._init)
_TRANSFORMS: dict[tuple, tuple] = {}
_INITS: dict[tuple, tuple] = {}
_CACHE_SIZE = 256

INIT_NOTE = ("haiku: initialised with init(rng, zeros, is_training=True); Haiku's init copies the "
             "init batch's statistics into the EMA 'average', so zeros give moving mean 0 and "
             "moving variance 0")


class HaikuAdapter(Adapter):
    def build(self, layer: Layer) -> None:
        jc.enable_x64_if_needed(jc.widest(layer), self.notes)
        hk.mixed_precision.clear_policy(hk.BatchNorm)  # a previous scenario's policy
        if layer.mixed:
            if layer.dtype not in ("float16", "bfloat16") or layer.state_dtype != "float32":
                raise NotApplicable(
                    f"hk.BatchNorm creates its parameters and statistics in the input dtype "
                    f"(haiku/_src/batch_norm.py:191-201); Haiku's mixed precision (a jmp "
                    f"policy) keeps BatchNorm in float32 for 16-bit inputs, nothing gives "
                    f"{layer.dtype} inputs {layer.state_dtype} parameters")
            import jmp

            wide, narrow = jnp.float32, jc.jax_dtype(layer.dtype)
            hk.mixed_precision.set_policy(hk.BatchNorm, jmp.Policy(
                param_dtype=wide, compute_dtype=wide, output_dtype=narrow))
            if MIXED_NOTE not in self.notes:
                self.notes.append(MIXED_NOTE)
        self.require(layer, "cumulative_momentum",
                     "hk.BatchNorm keeps an exponential moving average only (no cumulative "
                     "average)")
        self.require(layer, "no_running_stats",
                     "hk.BatchNorm always keeps moving averages and uses them when "
                     "is_training=False (test_local_stats only swaps the statistics used at test "
                     "time; training still updates the averages)")
        kwargs: dict = {"create_scale": layer.scale, "create_offset": layer.center}
        if not layer.defaults:
            kwargs.update(decay_rate=float(layer.momentum), eps=float(layer.epsilon))
        if layer.rank > 2 and not channels_last(layer.layout):
            kwargs["data_format"] = "channels_first"  # NCL/NCHW/NCDHW: no transpose needed
        kwargs.update(layer.native.get(self.framework_id, {}))
        if "decay_rate" not in kwargs:
            raise NotApplicable("hk.BatchNorm has no default decay_rate (a required argument); "
                                "give one in [layer.native.haiku]")
        self.layer = layer
        self.trainable = True
        self.opt = None
        self.opt_state = None
        note = jc.mode_note(self.framework_id, self.mode, PLAIN_JIT, "jax.jit")
        if note not in self.notes:
            self.notes.append(note)

        self._transform(kwargs)
        shape = [1] * layer.rank
        shape[channel_axis(layer.layout)] = layer.features
        self.params, self.bn_state = self._init(kwargs, shape)
        if INIT_NOTE not in self.notes:
            self.notes.append(INIT_NOTE)

    def _transform(self, kwargs: dict) -> None:
        """The transformed forward for these constructor arguments (and its jitted apply).

        Kept per (constructor arguments, mode, mixed-precision policy) for the worker's life:
        ``jax.jit`` caches compilations per function object, so a fresh transform per scenario
        recompiled every identical scenario (0.33 s CPU each). What is traced is unchanged: the
        same module with the same arguments under the same policy, and x64 is part of jit's
        own cache key.
        """
        self.kwargs = kwargs
        key = (repr(sorted(kwargs.items())), self.mode, self.layer.mixed, self.layer.dtype)
        if key not in _TRANSFORMS:
            def forward(x, **call_kwargs):
                # call kwargs pass through untouched, so a call without is_training reaches
                # hk.BatchNorm.__call__ and fails there, as it does for a Haiku user
                return hk.BatchNorm(**kwargs)(x, **call_kwargs)

            fn = hk.transform_with_state(forward)
            # jitted as Haiku users do (plain and haiku+jit); haiku+eager applies op by op
            jit_apply = self._jit("call", fn.apply, static_argnames=("is_training",))
            if len(_TRANSFORMS) >= _CACHE_SIZE:
                _TRANSFORMS.pop(next(iter(_TRANSFORMS)))
            _TRANSFORMS[key] = (fn, jit_apply, {})
        self.fn, self.jit_apply, self._train_steps = _TRANSFORMS[key]

    def _init(self, kwargs: dict, shape: list[int]) -> tuple:
        """``init(None, zeros, is_training=True)``, kept per what its result depends on.

        Unjitted, init runs op by op (a compilation per primitive, shape and constant: 0.28 s
        CPU a new key); jitted it is one compilation, and its result is exact either way. On a
        zero batch with no rng its result is scale 1, offset 0 and all-zero EMAs whatever
        ``eps`` and whatever ``decay_rate`` in [0, 1) (measured for 0, 0.5, 0.9, 0.999; 1.0
        differs: 0/0), so those stay out of the key; JAX arrays are immutable, so the cached
        trees are shared safely (``set_weights`` builds new dicts).
        """
        decay = float(kwargs["decay_rate"])
        rest = {k: v for k, v in kwargs.items() if k not in ("eps", "decay_rate")}
        key = (repr(sorted(rest.items())), decay if not 0.0 <= decay < 1.0 else None,
               tuple(shape), self.layer.dtype, self.layer.mixed, self.mode,
               bool(jax.config.jax_enable_x64))
        if key not in _INITS:
            if len(_INITS) >= _CACHE_SIZE:
                _INITS.pop(next(iter(_INITS)))
            zeros = jnp.zeros(shape, jc.jax_dtype(self.layer.dtype))
            _INITS[key] = _jit_init(self.fn)(None, zeros, is_training=True)
        return _INITS[key]

    def _jit(self, op: str, fn, **kwargs):
        return jc.maybe_jit(fn, jc.jits(self.mode, op, PLAIN_JIT), **kwargs)

    def set_hyper(self, momentum, epsilon) -> None:
        """A transformed function has no attribute to change: Haiku users rebuild the
        transform with the new ``decay_rate``/``eps`` and apply it to the same params and
        state (the module names, hence the dict keys, are unchanged). The next call uses them;
        the EMA keeps its counter, so Haiku's debiasing divides by 1 - new_decay**counter."""
        if momentum == "cumulative":
            raise NotApplicable("hk.BatchNorm keeps an exponential moving average only")
        kwargs = dict(self.kwargs)
        if momentum is not None:
            kwargs["decay_rate"] = float(momentum)
        if epsilon is not None:
            kwargs["eps"] = float(epsilon)
        self._transform(kwargs)

    # -- helpers ---------------------------------------------------------------------
    def _x(self, x) -> jax.Array:
        return jc.to_jax(x, self.layer.dtype)

    def _apply(self, params, state, x, training: bool | None):
        if training is None:  # reaches hk.BatchNorm without is_training, and fails there
            return self.fn.apply(params, state, None, x)
        return self.jit_apply(params, state, None, x, is_training=training)

    def _module(self) -> str | None:
        return next(iter(self.params), None)

    def _ema(self, which: str) -> str:
        return next(k for k in self.bn_state if k.endswith(f"/~/{which}_ema"))

    # -- ops -------------------------------------------------------------------------
    def call(self, x, training):
        y, state = self._apply(self.params, self.bn_state, self._x(x), training)
        self.bn_state = state
        return jc.to_numpy(y)

    def predict(self, x):
        y, _ = self._apply(self.params, self.bn_state, self._x(x), False)
        return jc.to_numpy(y)

    def set_trainable(self, trainable: bool) -> None:
        """JAX has no trainable flag: frozen parameters get zero updates in the optimizer."""
        self.trainable = trainable

    def fit(self, x, target, step: Step, fresh_optimizer: bool) -> float:
        if fresh_optimizer or self.opt is None or self.opt[1] != self.trainable:
            tx = jc.make_optax(step.optimizer) if self.trainable else optax.set_to_zero()
            self.opt = (tx, self.trainable, (repr(step.optimizer), self.trainable))
            self.opt_state = tx.init(self.params)
        # one jitted train step per optimizer configuration and trainable flag, next to the
        # transform it applies (the same optimizer rebuilt gives the same update)
        key = self.opt[2]  # the optimizer self.opt was built from, as before
        if key not in self._train_steps:
            self._train_steps[key] = self._train_step(self.opt[0])
        train_step = self._train_steps[key]

        xs, ts = self._x(x), self._x(target)
        params, state, opt_state = self.params, self.bn_state, self.opt_state
        (params, state, opt_state), loss = jc.train_epochs(
            step, xs, ts, (params, state, opt_state), train_step)
        self.params, self.bn_state, self.opt_state = params, state, opt_state
        return loss

    def _train_step(self, tx):
        fn = self.fn

        def loss_fn(params, state, xb, tb):
            y, state = fn.apply(params, state, None, xb, is_training=True)
            return jnp.mean(jnp.square(y - tb)), state

        value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

        def train_step(params, state, opt_state, xb, tb):
            (loss, state), grads = value_and_grad(params, state, xb, tb)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), state, opt_state, loss

        return self._jit("fit", train_step)

    def grad(self, x, training, weights) -> dict:
        w = self._x(weights)
        state = self.bn_state

        def objective(params, xj):
            y, new_state = self._apply(params, state, xj, training)
            return jnp.sum(y * w), (y, new_state)

        (_, (y, new_state)), (gp, gx) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True)(self.params, self._x(x))
        self.bn_state = new_state
        out = {"output": jc.to_numpy(y), "grad_input": jc.to_numpy(gx)}
        module = self._module()
        for name, q in (("scale", "grad_gamma"), ("offset", "grad_beta")):
            if module is None or name not in gp[module]:
                continue
            if self.trainable:
                out[q] = jc.to_numpy(gp[module][name].reshape(-1))
            else:
                out[f"{q}_reason"] = "parameters frozen in the optimizer (trainable=false)"
        return out

    def set_weights(self, values) -> None:
        """gamma/beta into params; moving stats into each EMA's ``average``.

        ``hidden`` is set to ``average * (1 - decay**counter)``, the invariant Haiku's EMA keeps,
        so later updates continue from the loaded value the way Haiku debiases (with counter 0
        that means the first training step replaces it entirely).
        """
        module = self._module()
        params = {k: dict(v) for k, v in self.params.items()}
        state = {k: dict(v) for k, v in self.bn_state.items()}
        for q, name in (("gamma", "scale"), ("beta", "offset")):
            if q not in values:
                continue
            if module is None or name not in params[module]:
                raise NotApplicable(f"the layer has no {q} (create_{name}=False)")
            old = params[module][name]
            params[module][name] = jnp.asarray(values[q], old.dtype).reshape(old.shape)
        for q, which in (("moving_mean", "mean"), ("moving_variance", "var")):
            if q not in values:
                continue
            ema = state[self._ema(which)]
            old = ema["average"]
            average = jnp.asarray(values[q], old.dtype).reshape(old.shape)
            one = jnp.ones([], old.dtype)
            decay = jax.lax.convert_element_type(self.kwargs["decay_rate"], old.dtype)
            ema["average"] = average
            ema["hidden"] = average * (one - jnp.power(decay, ema["counter"]))
        self.params, self.bn_state = params, state

    def state(self) -> dict:
        module = self._module()
        out = {}
        if module is not None:
            for name, q in (("scale", "gamma"), ("offset", "beta")):
                if name in self.params[module]:
                    out[q] = jc.to_numpy(self.params[module][name].reshape(-1))
        for which, q in (("mean", "moving_mean"), ("var", "moving_variance")):
            out[q] = jc.to_numpy(self.bn_state[self._ema(which)]["average"].reshape(-1))
        return out

    def versions(self) -> dict[str, str]:
        return {**jc.versions(), "dm-haiku": metadata.version("dm-haiku")}


def _jit_init(fn):
    """``fn.init`` as one XLA program (its values are exact: zeros, ones, 0/0 for decay 1)."""
    return jax.jit(fn.init, static_argnames=("is_training",))


def make_adapter(framework_id: str) -> Adapter:
    return HaikuAdapter(framework_id)
