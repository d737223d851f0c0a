"""``xbn repro`` template for Equinox: ``eqx.nn.BatchNorm`` made with its state
(``eqx.nn.make_with_state``) and batched with ``jax.vmap`` over a named axis, channels first,
exactly as Equinox's stateful example writes it; calls under ``eqx.filter_jit`` (plain and
``equinox+jit``; ``equinox+eager``: op by op). ``momentum`` is the weight of the old value,
as in Keras; ``predict`` is the model under ``eqx.nn.inference_mode``."""

from __future__ import annotations

from ...frameworks.devices import mode_of
from ...scenario.loader import Layer, channels_last
from .._jax.repro_optax import OPTAX_SOURCE

# the template defines fit and grad too (xbn.fuzz.repro.TRAINING_OPS)
TRAINING = True


def template(framework: str, layer: Layer, shape: tuple[int, ...]) -> str:
    """Source defining call, predict, set_trainable, set_weights, fit, grad, state and
    VERSIONS. ``fit`` is xbn's Equinox adapter's: the training-mode model
    (``inference_mode(value=False)``), an optax optimizer over its inexact arrays (every
    hyper-parameter explicit; ``optax.set_to_zero()`` while frozen: JAX has no trainable flag),
    ``eqx.filter_value_and_grad`` of the mean squared error with the state as auxiliary output,
    one train step under ``eqx.filter_jit`` (plain and +jit; eager under equinox+eager) over
    unshuffled mini-batches. ``grad`` differentiates sum(output * weights) with respect to the
    model and the input together, eager for the plain id and equinox+eager (as the adapter:
    ``modes.PLAIN``), filter_jitted under equinox+jit."""
    from ..repro import ReproUnsupported

    if layer.cumulative or not layer.track_running_stats or layer.mixed or layer.defaults \
            or layer.native:
        raise ReproUnsupported("Equinox's BatchNorm keeps an exponential average only")
    if layer.center != layer.scale:
        raise ReproUnsupported("eqx.nn.BatchNorm creates weight and bias together")
    x64 = 'jax.config.update("jax_enable_x64", True)\n' if layer.dtype == "float64" else ""
    mode = mode_of(framework)
    jit = ("forward = _forward  # equinox+eager: op by op" if mode == "eager"
           else "forward = eqx.filter_jit(_forward)")
    # the plain id jits calls and the train step, not the gradient (xbn.frameworks.modes.PLAIN)
    fit_jit = ("train_step  # equinox+eager: op by op" if mode == "eager"
               else "eqx.filter_jit(train_step)")
    grad_jit = ("eqx.filter_jit(objective)  # equinox+jit" if mode == "jit"
                else "objective  # eager, op by op")
    move = channels_last(layer.layout) and layer.layout != "NC"  # eqx sees (C, ...) per example
    to_first = "np.moveaxis(x, -1, 1)" if move else "x"
    to_last = "np.moveaxis(y, 1, -1)" if move else "y"
    return f'''import warnings
import jax
{x64}import jax.numpy as jnp
import equinox as eqx
import optax

VERSIONS = f"equinox {{eqx.__version__}}, jax {{jax.__version__}}, optax {{optax.__version__}}"
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


TRAINABLE = True


def set_trainable(flag):
    """Equinox has no trainable flag: a frozen model gets zero updates (optax.set_to_zero)."""
    global TRAINABLE
    TRAINABLE = flag


def set_weights(values):
    raise SystemExit("set_weights has no one-line Equinox form (eqx.tree_at and State.set)")


_optimizer = None


def _tx(opt):
    if not TRAINABLE:
        return optax.set_to_zero()
    return _optax(opt)
{OPTAX_SOURCE}

def _in(x):
    x = np.asarray(x)
    return jnp.asarray({to_first})


def fit(x, target, epochs, batch_size, opt, fresh):
    """The last epoch's mean of the batch losses, weighted by batch size."""
    global _optimizer, model, bn_state
    train = eqx.nn.inference_mode(model, value=False)
    if fresh or _optimizer is None:
        tx = _tx(opt)
        _optimizer = (tx, tx.init(eqx.filter(train, eqx.is_inexact_array)))
    tx, opt_state = _optimizer

    @eqx.filter_value_and_grad(has_aux=True)
    def loss_fn(model, state, xb, tb):
        y, state = _forward(model, state, xb, None)
        return jnp.mean(jnp.square(y - tb)), state

    def train_step(model, state, opt_state, xb, tb):
        (loss, state), grads = loss_fn(model, state, xb, tb)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, opt_state, loss

    step = {fit_jit}
    xs, ts = _in(x), _in(target)
    n = xs.shape[0]
    size = batch_size or n
    for _ in range(epochs):
        total, count, dtype = 0.0, 0, None
        for i in range(0, n, size):
            train, bn_state, opt_state, loss = step(train, bn_state, opt_state,
                                                    xs[i:i + size], ts[i:i + size])
            m = min(i + size, n) - i
            total, count, dtype = total + float(loss) * m, count + m, loss.dtype
        value = np.asarray(jnp.asarray(total / count, dtype))
    model, _optimizer = train, (tx, opt_state)
    return value


def grad(x, training, weights):
    global bn_state
    w, state = _in(weights), bn_state

    @eqx.filter_value_and_grad(has_aux=True)
    def objective(model_and_x, state, w):
        m, xj = model_and_x
        y, new_state = _forward(m, state, xj, not training)
        return jnp.sum(y * w), (y, new_state)

    objective = {grad_jit}
    (_, (y, new_state)), (g_model, gx) = objective((model, _in(x)), state, w)
    bn_state = new_state
    y, gx = np.asarray(y), np.asarray(gx)
    out = {{"output": {to_last}, "grad_input": {to_last.replace("y", "gx")}}}
    if model.channelwise_affine and TRAINABLE:
        out["grad_gamma"], out["grad_beta"] = np.asarray(g_model.weight), np.asarray(g_model.bias)
    return out


def state():
    mean, var = bn_state.get(model.ema_state_index)
    out = {{"moving_mean": np.asarray(mean), "moving_variance": np.asarray(var)}}
    if model.channelwise_affine:
        out["gamma"], out["beta"] = np.asarray(model.weight), np.asarray(model.bias)
    return out'''
