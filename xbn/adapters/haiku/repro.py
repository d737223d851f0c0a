"""``xbn repro`` template for Haiku: ``hk.BatchNorm`` inside ``hk.transform_with_state``,
initialised as Haiku users do (``init`` on a batch of zeros with ``is_training=True``) and
applied jitted (``haiku+eager``: un-jitted, op by op); ``decay_rate`` is the weight of the old value, as in Keras."""

from __future__ import annotations

from ...frameworks.devices import mode_of
from ...scenario.loader import Layer, channels_last
from .._jax.repro_optax import OPTAX_SOURCE

# the template defines fit and grad too (xbn.fuzz.repro.TRAINING_OPS)
TRAINING = True


def template(framework: str, layer: Layer, shape: tuple[int, ...]) -> str:
    """Source defining call, predict, set_trainable, set_weights, fit, grad, state and
    VERSIONS. ``fit`` is xbn's Haiku adapter's: an optax optimizer (every hyper-parameter
    explicit, adam with eps outside the root, rmsprop from 0 without bias correction), the
    mean squared error, ``jax.value_and_grad`` over the params with the state as auxiliary
    output, one jitted train step (eager under haiku+eager), unshuffled mini-batches; ``grad``
    takes ``jax.value_and_grad`` of sum(output * weights) over params and input through the
    same apply as ``call``."""
    from ..repro import ReproUnsupported

    if layer.cumulative or not layer.track_running_stats or layer.mixed or layer.defaults \
            or layer.native:
        raise ReproUnsupported("Haiku's BatchNorm keeps an exponential average only")
    x64 = 'jax.config.update("jax_enable_x64", True)\n' if layer.dtype == "float64" else ""
    # haiku and haiku+jit jit apply, as Haiku users do; haiku+eager applies op by op
    eager = mode_of(framework) == "eager"
    apply = ("fn.apply  # haiku+eager: un-jitted, op by op" if eager
             else 'jax.jit(fn.apply, static_argnames=("is_training",))')
    train_jit = "train_step  # haiku+eager: op by op" if eager else "jax.jit(train_step)"
    fmt = "channels_last" if channels_last(layer.layout) or layer.layout == "NC" \
        else "channels_first"
    return f'''import jax
{x64}import jax.numpy as jnp
import haiku as hk
import optax

VERSIONS = f"dm-haiku {{hk.__version__}}, jax {{jax.__version__}}, optax {{optax.__version__}}"


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


_optimizer = None


def _tx(opt):
    return _optax(opt)
{OPTAX_SOURCE}

def _train_step(tx):
    def loss_fn(params, state, xb, tb):
        y, state = fn.apply(params, state, None, xb, is_training=True)
        return jnp.mean(jnp.square(y - tb)), state

    def train_step(params, state, opt_state, xb, tb):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, xb, tb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    return {train_jit}


def fit(x, target, epochs, batch_size, opt, fresh):
    """The last epoch's mean of the batch losses, weighted by batch size."""
    global _optimizer, params, bn_state
    if fresh or _optimizer is None:
        tx = _tx(opt)
        _optimizer = (_train_step(tx), tx.init(params))
    step, opt_state = _optimizer
    xs, ts = jnp.asarray(x), jnp.asarray(target)
    n = xs.shape[0]
    size = batch_size or n
    for _ in range(epochs):
        total, count, dtype = 0.0, 0, None
        for i in range(0, n, size):
            params, bn_state, opt_state, loss = step(params, bn_state, opt_state,
                                                     xs[i:i + size], ts[i:i + size])
            m = min(i + size, n) - i
            total, count, dtype = total + float(loss) * m, count + m, loss.dtype
        value = np.asarray(jnp.asarray(total / count, dtype))
    _optimizer = (step, opt_state)
    return value


def grad(x, training, weights):
    global bn_state
    w, state = jnp.asarray(weights), bn_state

    def objective(p, xj):
        y, new_state = apply(p, state, None, xj, is_training=training)
        return jnp.sum(y * w), (y, new_state)

    (_, (y, new_state)), (gp, gx) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True)(params, jnp.asarray(x))
    bn_state = new_state
    out = {{"output": np.asarray(y), "grad_input": np.asarray(gx)}}
    for key, name in (("scale", "grad_gamma"), ("offset", "grad_beta")):
        if key in gp.get("batch_norm", {{}}):
            out[name] = np.asarray(gp["batch_norm"][key]).reshape(-1)
    return out


def state():
    out = {{"moving_mean": np.asarray(bn_state[MEAN]["average"]),
           "moving_variance": np.asarray(bn_state[VAR]["average"])}}
    for name, key in (("gamma", "scale"), ("beta", "offset")):
        if key in params.get("batch_norm", {{}}):
            out[name] = np.asarray(params["batch_norm"][key])
    return out'''
