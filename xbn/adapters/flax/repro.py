"""``xbn repro`` templates for Flax: linen (``nn.BatchNorm`` with ``init``/``apply`` and the
``batch_stats`` collection) and NNX (``nnx.BatchNorm``, a stateful module). Both take the
channel axis as ``axis`` and a Keras-style ``momentum`` (weight of the old value). Calls run
eagerly for ``flax``/``flax-nnx`` and their ``+eager`` modes, jitted (``jax.jit`` of
``apply``, ``nnx.jit``) for ``+jit``.

``fit`` and ``grad`` are xbn's Flax adapters': an optax optimizer with every hyper-parameter
explicit (adam with eps outside the root, rmsprop from 0 without bias correction), frozen
parameters zeroed in the optimizer (linen: ``optax.multi_transform`` with
``optax.set_to_zero``; NNX: ``nnx.Optimizer(wrt=nnx.Nothing)``: neither has a trainable
flag), the mean squared error, a train step jitted for the plain ids and ``+jit`` (eager under
``+eager``) over unshuffled mini-batches; ``grad`` is eager for the plain ids and ``+eager``,
jitted under ``+jit`` (``xbn.frameworks.modes.PLAIN``)."""

from __future__ import annotations

from ...frameworks.devices import base_id, mode_of
from ...scenario.loader import Layer, channel_axis
from .._jax.repro_optax import OPTAX_SOURCE

# the template defines fit and grad too (xbn.fuzz.repro.TRAINING_OPS)
TRAINING = True

_OPTAX = '''

TRAINABLE = True


def set_trainable(flag):
    """Flax has no trainable flag: a frozen layer's parameters get zero updates."""
    global TRAINABLE
    TRAINABLE = flag


def _tx(opt):
    return _optax(opt)
''' + OPTAX_SOURCE + '''


def _epochs(step, xs, ts, epochs, batch_size, carry):
    """Unshuffled mini-batches; the last epoch's mean of the batch losses, weighted by size."""
    n = xs.shape[0]
    size = batch_size or n
    for _ in range(epochs):
        total, count, dtype = 0.0, 0, None
        for i in range(0, n, size):
            *carry, loss = step(*carry, xs[i:i + size], ts[i:i + size])
            m = min(i + size, n) - i
            total, count, dtype = total + float(loss) * m, count + m, loss.dtype
        value = np.asarray(jnp.asarray(total / count, dtype))
    return carry, value'''


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
    return call(x, False)''' + _OPTAX
    # flax and flax-nnx call eagerly, as their +eager modes; +jit jits each call; the plain ids
    # jit the train step (xbn.frameworks.modes.PLAIN), +eager nothing
    mode = mode_of(framework)
    jit = mode == "jit"
    fit_jit = "step" if mode == "eager" else "JIT(step)"  # +eager: op by op
    grad_jit = "JIT(objective)" if jit else "objective"  # +jit only; else eager, op by op
    if base_id(framework) == "flax":
        apply = ('jax.jit(bn.apply, static_argnames=("use_running_average", "mutable"))'
                 if jit else "bn.apply")
        return f'''import jax
{x64}import jax.numpy as jnp
import flax
import flax.linen as nn
import optax

VERSIONS = f"flax {{flax.__version__}}, jax {{jax.__version__}}, optax {{optax.__version__}}"
JIT = jax.jit
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
            if k in variables.get(g, {{}})}}


def _apply(params, batch_stats, x, training):
    y, mutated = bn.apply({{"params": params, "batch_stats": batch_stats}}, x,
                          use_running_average=not training, mutable=["batch_stats"])
    return y, mutated.get("batch_stats", batch_stats)


_optimizer = None


def fit(x, target, epochs, batch_size, opt, fresh):
    global _optimizer
    if fresh or _optimizer is None:
        params = variables["params"]
        label = "train" if TRAINABLE else "frozen"
        tx = optax.multi_transform({{"train": _tx(opt), "frozen": optax.set_to_zero()}},
                                   jax.tree.map(lambda _: label, params))

        def loss_fn(params, batch_stats, xb, tb):
            y, stats = _apply(params, batch_stats, xb, True)
            return jnp.mean((y - tb) ** 2), stats

        def step(params, batch_stats, opt_state, xb, tb):
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, batch_stats, xb, tb)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), stats, opt_state, loss

        _optimizer = ({fit_jit}, tx.init(params))
    step, opt_state = _optimizer
    (params, stats, opt_state), value = _epochs(
        step, jnp.asarray(x), jnp.asarray(target), epochs, batch_size,
        (variables["params"], variables["batch_stats"], opt_state))
    variables["params"], variables["batch_stats"] = params, stats
    _optimizer = (step, opt_state)
    return value


def grad(x, training, weights):
    def objective(params, batch_stats, xj, wj):
        def f(xv, params):
            y, stats = _apply(params, batch_stats, xv, training)
            return jnp.sum(y * wj), (y, stats)

        return jax.grad(f, argnums=(0, 1), has_aux=True)(xj, params)

    (gx, gp), (y, stats) = {grad_jit}(variables["params"], variables["batch_stats"],
                                       jnp.asarray(x), jnp.asarray(weights))
    variables["batch_stats"] = stats
    out = {{"output": np.asarray(y), "grad_input": np.asarray(gx)}}
    for name, key in (("grad_gamma", "scale"), ("grad_beta", "bias")):
        if key in gp and TRAINABLE:
            out[name] = np.asarray(gp[key])
    return out''' + tail
    forward = ("nnx.jit(lambda m, x, training: m(x, use_running_average=not training), "
               "static_argnames=('training',))" if jit
               else "lambda m, x, training: m(x, use_running_average=not training)")
    return f'''import jax
{x64}import jax.numpy as jnp
import flax
from flax import nnx
import optax

VERSIONS = f"flax {{flax.__version__}} (nnx), jax {{jax.__version__}}, optax {{optax.__version__}}"
JIT = nnx.jit
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
            if getattr(bn, attr, None) is not None}}


_optimizer = None


def fit(x, target, epochs, batch_size, opt, fresh):
    global _optimizer
    wrt = nnx.Param if TRAINABLE else nnx.Nothing
    if fresh or _optimizer is None:
        _optimizer = nnx.Optimizer(bn, _tx(opt), wrt=wrt)
    optimizer = _optimizer

    def step(model, optimizer, xb, tb):
        def loss_fn(m):
            return jnp.mean((m(xb, use_running_average=False) - tb) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)
        optimizer.update(model, grads)
        return loss

    step = {fit_jit}
    _, value = _epochs(lambda xb, tb: (step(bn, optimizer, xb, tb),), jnp.asarray(x),
                       jnp.asarray(target), epochs, batch_size, ())
    return value


def grad(x, training, weights):
    def objective(model, xj, wj):
        def f(model, xv):
            y = model(xv, use_running_average=not training)
            return jnp.sum(y * wj), y

        return nnx.grad(f, argnums=(nnx.DiffState(0, nnx.Param), 1), has_aux=True)(model, xj)

    (gp, gx), y = {grad_jit}(bn, jnp.asarray(x), jnp.asarray(weights))
    out = {{"output": np.asarray(y), "grad_input": np.asarray(gx)}}
    for name, key in (("grad_gamma", "scale"), ("grad_beta", "bias")):
        if getattr(bn, key) is not None and TRAINABLE:
            out[name] = np.asarray(gp[key][...])
    return out''' + tail
