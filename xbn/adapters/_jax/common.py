"""Helpers shared by the JAX adapters (flax, flax-nnx, haiku, equinox).

Only plumbing lives here (dtype casts, x64, optax construction); each adapter still calls its
own framework's BatchNorm the way that framework's users do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

X64_NOTE = ("float64 scenarios run with jax_enable_x64=True (JAX silently computes in float32 "
            "otherwise); it is switched back off for other dtypes")

_DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "float16": jnp.float16,
           "bfloat16": jnp.bfloat16}


def jax_dtype(dtype_name: str):
    """The jnp dtype for a scenario dtype name."""
    return _DTYPES[dtype_name]


def widest(layer) -> str:
    """float64 when the layer's inputs or parameters are float64, else its dtype: what
    ``enable_x64_if_needed`` must be given."""
    return "float64" if "float64" in (layer.dtype, layer.state_dtype) else layer.dtype


def enable_x64_if_needed(dtype_name: str, notes: list[str]) -> None:
    """Switch x64 on for float64 scenarios (once noted in ``notes``), off for the others.

    Setting it per scenario, rather than leaving it on once set, keeps every scenario's result
    independent of which scenarios ran before it in the same worker. Call it in ``build``,
    before any array is created.
    """
    wanted = dtype_name == "float64"
    if bool(jax.config.jax_enable_x64) != wanted:
        jax.config.update("jax_enable_x64", wanted)
    if wanted and X64_NOTE not in notes:
        notes.append(X64_NOTE)


def to_jax(x, dtype_name: str) -> jax.Array:
    """A float64 numpy array (exactly representable in ``dtype_name``) as a JAX array of it."""
    dtype = jax_dtype(dtype_name)
    if dtype_name == "float64" and not jax.config.jax_enable_x64:
        raise RuntimeError("float64 requested but jax_enable_x64 is off; "
                           "call enable_x64_if_needed first")
    return jnp.asarray(np.asarray(x, dtype=np.float64), dtype=dtype)


def to_numpy(arr) -> np.ndarray | tuple[np.ndarray, str]:
    """A JAX array as numpy, keeping its real dtype; bfloat16 comes back as (float64, name)."""
    arr = np.asarray(jax.device_get(arr))
    if arr.dtype.name == "bfloat16":
        return arr.astype(np.float64), "bfloat16"
    return arr


def make_optax(optimizer_cfg) -> optax.GradientTransformation:
    """The optax optimizer for an ``xbn.scenario.loader.Optimizer``, every hyper-parameter explicit.

    optax.adam uses the paper's form: update = lr * m_hat / (sqrt(v_hat + eps_root) + eps), with
    eps outside the square root and eps_root = 0. optax.rmsprop: update = lr * g / sqrt(nu +
    eps) (eps_in_sqrt), nu from 0, no momentum, not centered, no bias correction.
    """
    name = optimizer_cfg.name
    if name == "sgd":
        return optax.sgd(learning_rate=optimizer_cfg.lr, momentum=None, nesterov=False)
    if name == "adam":
        return optax.adam(learning_rate=optimizer_cfg.lr, b1=optimizer_cfg.beta1,
                          b2=optimizer_cfg.beta2, eps=optimizer_cfg.eps, eps_root=0.0)
    if name == "rmsprop":
        return optax.rmsprop(learning_rate=optimizer_cfg.lr, decay=optimizer_cfg.rho,
                             eps=optimizer_cfg.eps, initial_scale=0.0, eps_in_sqrt=True,
                             centered=False, momentum=None, nesterov=False,
                             bias_correction=False)
    raise ValueError(f"unknown optimizer {name!r}")


def versions() -> dict[str, str]:
    """Versions of jax, jaxlib and optax (adapters add their own framework)."""
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__}


def flax_batchnorm_kwargs(layer, framework_id: str, api: str) -> dict:
    """Constructor keywords shared by flax.linen.BatchNorm and flax.nnx.BatchNorm (same
    arguments, same limits): raises NotApplicable for what neither can express."""
    from ...scenario.loader import channel_axis
    from ..base import require

    require(framework_id, layer, "cumulative_momentum",
            f"{api} has only an exponential moving average (momentum); no cumulative average")
    require(framework_id, layer, "no_running_stats",
            f"{api} always keeps mean/var batch statistics and updates them whenever it "
            "normalizes with batch statistics; there is no option to keep none")
    kwargs: dict = {"axis": channel_axis(layer.layout), "use_bias": layer.center,
                    "use_scale": layer.scale}
    if not layer.defaults:
        kwargs.update(momentum=layer.momentum, epsilon=layer.epsilon)
    # Flax's mixed precision: dtype (computations and result) and param_dtype (scale, bias);
    # the batch statistics are float32 whatever param_dtype is (FLAX_STATS)
    kwargs.update(dtype=jax_dtype(layer.dtype), param_dtype=jax_dtype(layer.state_dtype))
    kwargs.update(layer.native.get(framework_id, {}))
    return kwargs


# Where each Flax API creates its batch statistics in float32 whatever param_dtype says.
FLAX_STATS = {
    "flax.linen.BatchNorm": "flax/linen/normalization.py:358-375 (float32 unless "
                            "force_float32_reductions=False)",
    "flax.nnx.BatchNorm": "flax/nnx/nn/normalization.py:312-313",
}


def stats_note(layer, api: str) -> str | None:
    """The note for a 16-bit param_dtype, which Flax's batch statistics do not follow."""
    if layer.state_dtype not in ("float16", "bfloat16"):
        return None
    return (f"{api}: param_dtype {layer.state_dtype} gives {layer.state_dtype} scale/bias; the "
            f"batch statistics stay float32 ({FLAX_STATS[api]})")


def train_epochs(step, xs, ts, carry: tuple, train_step, ms=None) -> tuple[tuple, object]:
    """The unshuffled mini-batch loop every JAX adapter's fit runs.

    ``train_step(*carry, xb, tb)`` (with a mask ``ms``: ``train_step(*carry, xb, tb, mb)``)
    returns ``(*carry, loss)``; the result is the final carry and the last epoch's mean of
    batch losses weighted by batch size, in the loss's dtype.
    """
    from ..base import batches

    loss_value = None
    for _ in range(step.epochs):
        total, count, dtype = 0.0, 0, None
        for sl in batches(xs.shape[0], step.batch_size):
            masked = () if ms is None else (ms[sl],)
            *carry, loss = train_step(*carry, xs[sl], ts[sl], *masked)
            n = sl.stop - sl.start
            total, count, dtype = total + float(loss) * n, count + n, loss.dtype
        loss_value = to_numpy(jnp.asarray(total / count, dtype))
    return tuple(carry), loss_value


def mse(y, t, mask=None, axis: int = -1):
    """The mean squared error xbn's JAX training loops minimize; with a ``mask`` (the output's
    shape without the channel ``axis``) Keras' masked loss, which every masked fit uses: each
    valid position weighs total / valid, a masked one 0 (0 everywhere when none is valid,
    keras/src/losses/loss.py ``apply_mask``), so it is the mean over the valid positions."""
    squared = (y - t) ** 2
    if mask is None:
        return jnp.mean(squared)
    valid = jnp.asarray(mask) != 0
    count = jnp.sum(valid.astype(squared.dtype))
    weight = jnp.where(count > 0, valid.size / jnp.maximum(count, 1), 0).astype(squared.dtype)
    return jnp.mean(squared * jnp.expand_dims(jnp.where(valid, weight, 0), axis))


# -- execution modes (xbn.frameworks.modes: ``flax+jit``, ``haiku+eager``, ...) --------------

def jits(mode: str | None, op: str, plain: dict[str, bool]) -> bool:
    """Whether ``op`` runs under jit: every op under ``+jit``, none under ``+eager``, and what
    the plain id runs (``plain``, the adapter's restatement of ``modes.PLAIN``) otherwise."""
    if mode == "jit":
        return True
    if mode == "eager":
        return False
    if mode is not None:
        raise ValueError(f"unknown JAX execution mode {mode!r}")
    return plain[op]


def mode_note(framework_id: str, mode: str | None, plain: dict[str, bool], jit_word: str) -> str:
    """One note saying what each op ran as (the report's framework notes): eager means each
    primitive dispatched and compiled on its own, jit one XLA program per traced function."""
    from ...frameworks.devices import base_id

    ran = {op: jits(mode, op, plain) for op in ("call", "predict", "fit", "grad")}
    jitted = [op for op, on in ran.items() if on]
    eager = [op for op, on in ran.items() if not on]
    parts = ([f"{', '.join(jitted)} under {jit_word}"] if jitted else []) + \
        ([f"{', '.join(eager)} eager (op by op, un-jitted)"] if eager else [])
    name = base_id(framework_id) + (f"+{mode}" if mode else " (plain id)")
    return f"{name} runs " + "; ".join(parts)


def maybe_jit(fn, on: bool, jit=None, **kwargs):
    """``fn`` under ``jit`` (default ``jax.jit``, with ``kwargs``) when ``on``, else ``fn``."""
    return (jit or jax.jit)(fn, **kwargs) if on else fn
