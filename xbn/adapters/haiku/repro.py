"""``xbn repro`` template for Haiku: ``hk.BatchNorm`` inside ``hk.transform_with_state``,
initialised as Haiku users do (``init`` on a batch of zeros with ``is_training=True``) and
applied jitted (``haiku+eager``: un-jitted, op by op); ``decay_rate`` is the weight of the old value, as in Keras."""

from __future__ import annotations

from ...frameworks.devices import mode_of
from ...scenario.loader import Layer, channels_last


def template(framework: str, layer: Layer, shape: tuple[int, ...]) -> str:
    """Source defining call, predict, set_trainable, set_weights, state and VERSIONS."""
    from ..repro import ReproUnsupported

    if layer.cumulative or not layer.track_running_stats or layer.mixed or layer.defaults \
            or layer.native:
        raise ReproUnsupported("Haiku's BatchNorm keeps an exponential average only")
    x64 = 'jax.config.update("jax_enable_x64", True)\n' if layer.dtype == "float64" else ""
    # haiku and haiku+jit jit apply, as Haiku users do; haiku+eager applies op by op
    eager = mode_of(framework) == "eager"
    apply = ("fn.apply  # haiku+eager: un-jitted, op by op" if eager
             else 'jax.jit(fn.apply, static_argnames=("is_training",))')
    fmt = "channels_last" if channels_last(layer.layout) or layer.layout == "NC" \
        else "channels_first"
    return f'''import jax
{x64}import jax.numpy as jnp
import haiku as hk

VERSIONS = f"dm-haiku {{hk.__version__}}, jax {{jax.__version__}}"


def forward(x, is_training):
    return hk.BatchNorm(create_scale={layer.scale}, create_offset={layer.center},
                        decay_rate={float(layer.momentum)!r}, eps={layer.epsilon!r},
                        data_format="{fmt}")(x, is_training)


fn = hk.transform_with_state(forward)
apply = {apply}
params, bn_state = fn.init(None, jnp.zeros({tuple(shape)!r}, jnp.{layer.dtype}), is_training=True)
MEAN, VAR = "batch_norm/~/mean_ema", "batch_norm/~/var_ema"


def call(x, training):
    global bn_state
    y, new_state = apply(params, bn_state, None, jnp.asarray(x), is_training=training)
    if training:
        bn_state = new_state
    return np.asarray(y)


def predict(x):
    return call(x, False)


def set_trainable(flag):
    raise SystemExit("Haiku has no trainable flag")


def set_weights(values):
    raise SystemExit("set_weights has no one-line Haiku form (the EMA keeps hidden and average)")


def state():
    out = {{"moving_mean": np.asarray(bn_state[MEAN]["average"]),
           "moving_variance": np.asarray(bn_state[VAR]["average"])}}
    for name, key in (("gamma", "scale"), ("beta", "offset")):
        if key in params.get("batch_norm", {{}}):
            out[name] = np.asarray(params["batch_norm"][key])
    return out'''
