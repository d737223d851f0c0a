"""The reference's optimizers for ``fit``: plain SGD, Adam and RMSprop on gamma and beta.

Kept apart from ``xbn.reference.batchnorm`` (which calls ``apply`` after each batch's backward
pass) so that each stays small enough to read whole. Every hyper-parameter comes from the
scenario's ``optimizer`` table; where the frameworks' own optimizers place epsilon differently
the reference has a switch (``xbn.reference.semantics``):

* ``adam_form``: Keras' eps-hat form ``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``
  ("eps_hat"), the paper's ``lr * m_hat / (sqrt(v_hat) + eps)`` with torch's order
  ("paper") or optax's float32 order ("optax");
* ``rmsprop_form``: ``v = rho * v + (1 - rho) * g^2`` from ``v = 0`` everywhere (no momentum,
  not centered), then ``lr * g / sqrt(v + eps)`` ("eps_in_sqrt": Keras 3
  keras/src/optimizers/rmsprop.py, tf-keras tf_keras/src/optimizers/rmsprop.py
  ``rsqrt(velocity + epsilon)``, ``optax.rmsprop(eps_in_sqrt=True)``) or
  ``lr * g / (sqrt(v) + eps)`` ("eps_outside": torch/optim/rmsprop.py
  ``square_avg.sqrt().add_(eps)``).

Under ``precision = "native"`` each form runs in float32 in its framework's order of
operations (the numeric part); in float64 the forms differ only where epsilon sits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..scenario.model import Optimizer

PARAMS = {"gamma": "grad_gamma", "beta": "grad_beta"}


@dataclass
class OptimizerState:
    """One optimizer's state: its step count and each parameter's moments."""

    config: Optimizer
    t: int = 0
    m: dict = field(default_factory=dict)
    v: dict = field(default_factory=dict)


def apply(bn, grads: dict) -> None:
    """One step of ``bn.optimizer`` on ``bn``'s live parameters (gamma, beta), in ``bn.ft``."""
    opt = bn.optimizer
    live = {p: g for p, g in PARAMS.items() if getattr(bn, p) is not None}
    if not live:
        return
    opt.t += 1
    for p, gname in live.items():
        g = np.asarray(grads[gname]).astype(bn.ft)
        step = {"sgd": _sgd, "adam": _adam, "rmsprop": _rmsprop}[opt.config.name]
        setattr(bn, p, np.asarray(step(bn, opt, p, g, getattr(bn, p))).astype(bn.ft))


def _sgd(bn, opt: OptimizerState, p: str, g: np.ndarray, value: np.ndarray) -> np.ndarray:
    return value - bn.ft(opt.config.lr) * g


def _adam(bn, opt: OptimizerState, p: str, g: np.ndarray, value: np.ndarray) -> np.ndarray:
    cfg, ft, form = opt.config, bn.ft, bn.sem.adam_form
    lr, b1, b2, eps = (ft(v) for v in (cfg.lr, cfg.beta1, cfg.beta2, cfg.eps))
    one = ft(1)
    m = opt.m.get(p, np.zeros_like(g))
    v = opt.v.get(p, np.zeros_like(g))
    if form == "optax":  # optax.scale_by_adam, float32 throughout
        m = ft(1.0 - cfg.beta1) * g + b1 * m
        v = ft(1.0 - cfg.beta2) * (g * g) + b2 * v
    else:
        m = m + (g - m) * ft(1.0 - cfg.beta1)  # 1 - beta rounded from float64
        v = v + (g * g - v) * ft(1.0 - cfg.beta2)
    opt.m[p], opt.v[p] = m, v
    if form == "eps_hat":  # Keras: powers in the variables' dtype
        c1 = one - b1 ** ft(opt.t)
        c2 = one - b2 ** ft(opt.t)
        return value - lr * np.sqrt(c2) / c1 * m / (np.sqrt(v) + eps)
    if form == "optax":
        m_hat = m / (one - b1 ** ft(opt.t))
        v_hat = v / (one - b2 ** ft(opt.t))
        return value + -lr * (m_hat / (np.sqrt(v_hat) + eps))
    # torch: bias corrections as Python floats, applied in float32
    step_size = ft(cfg.lr / (1 - cfg.beta1**opt.t))
    root = ft(math.sqrt(1 - cfg.beta2**opt.t))
    return value - step_size * (m / (np.sqrt(v) / root + eps))


def _rmsprop(bn, opt: OptimizerState, p: str, g: np.ndarray, value: np.ndarray) -> np.ndarray:
    cfg, ft = opt.config, bn.ft
    lr, rho, eps = ft(cfg.lr), ft(cfg.rho), ft(cfg.eps)
    v = rho * opt.v.get(p, np.zeros_like(g)) + ft(1.0 - cfg.rho) * (g * g)
    opt.v[p] = v
    if bn.sem.rmsprop_form == "eps_outside":  # torch: addcdiv_(g, sqrt(v) + eps, value=-lr)
        return value - lr * (g / (np.sqrt(v) + eps))
    return value - lr * g / np.sqrt(v + eps)  # Keras 3: (lr * g) / sqrt(v + eps)
