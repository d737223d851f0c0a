"""``xbn repro`` template for Equinox: ``eqx.nn.BatchNorm`` made with its state
(``eqx.nn.make_with_state``) and batched with ``jax.vmap`` over a named axis, channels first,
exactly as Equinox's stateful example writes it; calls under ``eqx.filter_jit`` (plain and
``equinox+jit``; ``equinox+eager``: op by op). ``momentum`` is the weight of the old value,
as in Keras; ``predict`` is the model under ``eqx.nn.inference_mode``."""

from __future__ import annotations

from ...frameworks.devices import mode_of
from ...scenario.loader import Layer, channels_last


def template(framework: str, layer: Layer, shape: tuple[int, ...]) -> str:
    """Source defining call, predict, set_trainable, set_weights, state and VERSIONS."""
    from ..repro import ReproUnsupported

    if layer.cumulative or not layer.track_running_stats or layer.mixed or layer.defaults \
            or layer.native:
        raise ReproUnsupported("Equinox's BatchNorm keeps an exponential average only")
    if layer.center != layer.scale:
        raise ReproUnsupported("eqx.nn.BatchNorm creates weight and bias together")
    x64 = 'jax.config.update("jax_enable_x64", True)\n' if layer.dtype == "float64" else ""
    jit = ("forward = _forward  # equinox+eager: op by op" if mode_of(framework) == "eager"
           else "forward = eqx.filter_jit(_forward)")
    move = channels_last(layer.layout) and layer.layout != "NC"  # eqx sees (C, ...) per example
    to_first = "np.moveaxis(x, -1, 1)" if move else "x"
    to_last = "np.moveaxis(y, 1, -1)" if move else "y"
    return f'''import warnings
import jax
{x64}import jax.numpy as jnp
import equinox as eqx

VERSIONS = f"equinox {{eqx.__version__}}, jax {{jax.__version__}}"
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the default mode's "legacy" warning: it means "ema"
    model, bn_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        input_size={layer.features}, axis_name="batch", channelwise_affine={layer.scale},
        eps={layer.epsilon!r}, momentum={float(layer.momentum)!r}, dtype=jnp.{layer.dtype})


def _forward(model, state, x, inference):
    def one(xi, s):
        return model(xi, s) if inference is None else model(xi, s, inference=inference)
    return jax.vmap(one, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)


{jit}


def call(x, training):
    global bn_state
    x = np.asarray(x)
    y, bn_state = forward(model, bn_state, jnp.asarray({to_first}), not training)
    y = np.asarray(y)
    return {to_last}


def predict(x):
    x = np.asarray(x)
    y, _ = forward(eqx.nn.inference_mode(model), bn_state, jnp.asarray({to_first}), None)
    y = np.asarray(y)
    return {to_last}


def set_trainable(flag):
    raise SystemExit("Equinox has no trainable flag")


def set_weights(values):
    raise SystemExit("set_weights has no one-line Equinox form (eqx.tree_at and State.set)")


def state():
    mean, var = bn_state.get(model.ema_state_index)
    out = {{"moving_mean": np.asarray(mean), "moving_variance": np.asarray(var)}}
    if model.channelwise_affine:
        out["gamma"], out["beta"] = np.asarray(model.weight), np.asarray(model.bias)
    return out'''
