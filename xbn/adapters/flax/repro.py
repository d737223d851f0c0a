"""``xbn repro`` templates for Flax: linen (``nn.BatchNorm`` with ``init``/``apply`` and the
``batch_stats`` collection) and NNX (``nnx.BatchNorm``, a stateful module). Both take the
channel axis as ``axis`` and a Keras-style ``momentum`` (weight of the old value). Calls run
eagerly for ``flax``/``flax-nnx`` and their ``+eager`` modes, jitted (``jax.jit`` of
``apply``, ``nnx.jit``) for ``+jit``."""

from __future__ import annotations

from ...frameworks.devices import base_id, mode_of
from ...scenario.loader import Layer, channel_axis


def template(framework: str, layer: Layer, shape: tuple[int, ...]) -> str:
    """Source defining call, predict, set_trainable, set_weights, state and VERSIONS."""
    from ..repro import ReproUnsupported

    if layer.cumulative or not layer.track_running_stats or layer.mixed or layer.defaults \
            or layer.native:
        raise ReproUnsupported("Flax's BatchNorm keeps an exponential average only")
    x64 = 'jax.config.update("jax_enable_x64", True)\n' if layer.dtype == "float64" else ""
    common = (f"axis={channel_axis(layer.layout)}, momentum={float(layer.momentum)!r}, "
              f"epsilon={layer.epsilon!r},\n    use_bias={layer.center}, "
              f"use_scale={layer.scale}, dtype=jnp.{layer.dtype}, param_dtype=jnp.{layer.dtype}")
    tail = '''

def predict(x):
    return call(x, False)


def set_trainable(flag):
    raise SystemExit("Flax has no trainable flag")'''
    # flax and flax-nnx call eagerly, as their +eager modes; +jit jits each call
    jit = mode_of(framework) == "jit"
    if base_id(framework) == "flax":
        apply = ('jax.jit(bn.apply, static_argnames=("use_running_average", "mutable"))'
                 if jit else "bn.apply")
        return f'''import jax
{x64}import jax.numpy as jnp
import flax
import flax.linen as nn

VERSIONS = f"flax {{flax.__version__}}, jax {{jax.__version__}}"
bn = nn.BatchNorm({common})
variables = flax.core.unfreeze(bn.init(jax.random.key(0), jnp.zeros({tuple(shape)!r}, jnp.{layer.dtype}),
                                       use_running_average=True))
apply = {apply}
WHERE = {{"gamma": ("params", "scale"), "beta": ("params", "bias"),
         "moving_mean": ("batch_stats", "mean"), "moving_variance": ("batch_stats", "var")}}


def call(x, training):
    global variables
    y, updates = apply(variables, jnp.asarray(x), use_running_average=not training,
                       mutable=("batch_stats",))
    variables = {{**variables, **flax.core.unfreeze(updates)}}
    return np.asarray(y)


def set_weights(values):
    for name, value in values.items():
        group, key = WHERE[name]
        old = variables[group][key]
        variables[group][key] = jnp.broadcast_to(jnp.asarray(value, old.dtype), old.shape)


def state():
    return {{name: np.asarray(variables[g][k]) for name, (g, k) in WHERE.items()
            if k in variables.get(g, {{}})}}''' + tail
    forward = ("nnx.jit(lambda m, x, training: m(x, use_running_average=not training), "
               "static_argnames=('training',))" if jit
               else "lambda m, x, training: m(x, use_running_average=not training)")
    return f'''import jax
{x64}import jax.numpy as jnp
import flax
from flax import nnx

VERSIONS = f"flax {{flax.__version__}} (nnx), jax {{jax.__version__}}"
bn = nnx.BatchNorm({layer.features}, {common},
    rngs=nnx.Rngs(0))
forward = {forward}
WHERE = {{"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}}


def call(x, training):
    return np.asarray(forward(bn, jnp.asarray(x), training=training))


def set_weights(values):
    for name, value in values.items():
        old = getattr(bn, WHERE[name])
        old.value = jnp.broadcast_to(jnp.asarray(value, old.value.dtype), old.value.shape)


def state():
    return {{name: np.asarray(getattr(bn, attr)[...]) for name, attr in WHERE.items()
            if getattr(bn, attr, None) is not None}}''' + tail
