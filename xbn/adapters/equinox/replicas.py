"""``eqx.nn.BatchNorm`` on R host devices (issue 12), the way Equinox users run it.

Equinox normalizes over *named* axes only: each device runs the single-device adapter's
``jax.vmap(..., axis_name="batch")`` over its own rows inside shard_map. Synchronized: the
layer is made with ``axis_name=("batch", <mesh axis>)``, a tuple Equinox accepts
(equinox/nn/_batch_norm.py:BatchNorm.__init__, "Can also be a sequence"), so its
``lax.pmean`` covers every example on every device; the variance is the pmean of
``(x - mean)^2`` around that mean (biased). Unsynchronized: ``axis_name="batch"`` only.
Equinox's BatchNorm has no mask, so an unequal split (padded shards) is n/a.

The host model is the single-device adapter (its build, readback by mode, set_weights, mode);
a synchronized layer replaces its model and state with one made with the tuple axis name.
"""

from __future__ import annotations

import warnings

import equinox as eqx

from ...scenario.loader import Layer
from .._jax import common as jc
from .._jax.replicas import AXIS, PREDICT, ReplicatedJax
from ..base import Adapter
from .adapter import AXIS as VMAP_AXIS
from .adapter import _batched


class EquinoxReplicas(ReplicatedJax):
    mask_reason = "eqx.nn.BatchNorm.__call__ takes no mask"
    # State.set (equinox/nn/_stateful.py) refuses a value whose abstract type differs from
    # the old one's, and under shard_map's vma check a per-replica state entry is
    # device-varying while the flag BatchNorm writes (jnp.array(False)) is not: Equinox
    # state under shard_map needs the check off (the former check_rep=False)
    check_vma = False

    def adopt(self, layer: Layer) -> None:
        if not self.axis_named:
            return
        m = self.base.model
        kwargs = getattr(self.base, "kwargs", None) or {
            "input_size": m.input_size, "eps": m.eps, "channelwise_affine": m.channelwise_affine,
            "momentum": m.momentum, "inference": m.inference, "mode": m.mode,
            "dtype": jc.jax_dtype(layer.state_dtype)}
        kwargs = {**kwargs, "axis_name": (VMAP_AXIS, AXIS)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the mode warning: the base build noted it
            self.base.model, self.base.bn_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
                **kwargs)
        self.base.kwargs = kwargs  # what the host model's set_hyper rebuilds from

    def sync_note(self) -> str:
        return f"eqx.nn.BatchNorm(axis_name=('{VMAP_AXIS}', '{AXIS}')) under a per-device vmap"

    # The parameters travel as {"weight", "bias"} (the layer's only arrays), not as a
    # partitioned module: its static fields (momentum, eps) are pytree metadata, which a
    # rebuilt layer (the host's set_hyper) changes.
    def host_tree(self) -> tuple:
        m = self.base.model
        params = {k: getattr(m, k) for k in ("weight", "bias") if getattr(m, k) is not None}
        return params, self.base.bn_state

    @staticmethod
    def _with(model, params):
        if not params:
            return model
        names = sorted(params)
        return eqx.tree_at(lambda m: [getattr(m, k) for k in names], model,
                           [params[k] for k in names])

    def load_host_tree(self, params, stats) -> None:
        self.base.model, self.base.bn_state = self._with(self.base.model, params), stats

    def config_key(self):
        return None  # every build makes new state indices: compile once per build

    def to_device(self, x):
        return self.base._x(x)

    def from_device(self, y):
        return self.base._out(y)

    def local(self, kind, masked: bool):
        template = self.base.model

        def step(params, state, x, mask):
            model = self._with(template, params)
            if kind is PREDICT:  # the single-device adapter's predict: inference_mode
                y, _ = _batched(eqx.nn.inference_mode(model), None)(x, state)
                return y, state
            return _batched(model, None if kind is None else not kind)(x, state)

        return step


def make_replicated(base: Adapter) -> Adapter:
    """The replicated engine for the worker's equinox adapter."""
    return EquinoxReplicas(base)
