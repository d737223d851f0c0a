"""Flax linen and NNX BatchNorm on R host devices (issue 12), the way Flax users run them.

Synchronized: the layer's own ``axis_name`` names the shard_map mesh axis, so
``flax/linen/normalization.py:_compute_stats`` (NNX: ``flax/nnx/nn/normalization.py:
_compute_stats``) ``lax.pmean``s each replica's mean and mean of squares. Unequal splits are
padded with zeros to the largest replica and the real rows given as Flax's ``mask``; the local
moments are then means over each replica's own rows, and their pmean weights every replica
equally whatever its row count (``equal_weight`` statistics). The variance is
``E[x^2] - E[x]^2`` of those (biased), and the running variance is updated with it as is.

``[layer.native.flax] replicas_engine = "jit"`` (or ``flax-nnx``): one ``jax.jit`` over the
batch sharded with ``NamedSharding`` and no axis name, padded shards with ``mask`` as above;
XLA's SPMD partitioner reduces over every real row: count-weighted global statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ...scenario.loader import Layer
from .._jax.replicas import AXIS, PREDICT, ReplicatedJax
from ..base import Adapter
from .adapter_nnx import FlaxNnxAdapter


class LinenReplicas(ReplicatedJax):
    masks = True

    def sync_note(self) -> str:
        return f"flax.linen.BatchNorm(axis_name='{AXIS}')"

    def _module(self):
        module = self.base.module
        if self.axis_named:
            return module.clone(axis_name=AXIS)
        return module

    def host_tree(self) -> tuple:
        variables = self.base.variables
        return variables["params"], variables["batch_stats"]

    def load_host_tree(self, params, stats) -> None:
        self.base.variables["params"] = params
        self.base.variables["batch_stats"] = stats

    def config_key(self):
        return repr(self._module())

    def local(self, kind, masked: bool):
        module = self._module()

        def step(params, stats, x, mask):
            variables = {"params": params, "batch_stats": stats}
            if kind is PREDICT:  # the single-device adapter's predict, on each shard
                return module.apply(variables, x, use_running_average=True), stats
            flag = {} if kind is None else {"use_running_average": not kind}
            extra = {} if mask is None else {"mask": mask}
            y, mutated = module.apply(variables, x, mutable=["batch_stats"], **flag, **extra)
            return y, mutated.get("batch_stats", stats)

        return step


class NnxReplicas(ReplicatedJax):
    """``nnx.split`` into (graphdef, batch stats, params); ``nnx.merge`` on each device."""

    masks = True

    def adopt(self, layer: Layer) -> None:
        # a plain attribute of nnx.BatchNorm (part of the graphdef), read by every call
        self.base.bn.axis_name = AXIS if self.axis_named else None

    def sync_note(self) -> str:
        return f"flax.nnx.BatchNorm(axis_name='{AXIS}') through nnx.split/nnx.merge"

    def host_tree(self) -> tuple:
        _, stats, params = nnx.split(self.base.bn, nnx.BatchStat, ...)
        return params, stats

    def load_host_tree(self, params, stats) -> None:
        nnx.update(self.base.bn, *(jax.tree.map(jnp.asarray, t) for t in (params, stats)))

    def config_key(self):
        graphdef = nnx.graphdef(self.base.bn)
        try:
            hash(graphdef)
        except TypeError:
            return None
        return graphdef

    def local(self, kind, masked: bool):
        graphdef = nnx.graphdef(self.base.bn)

        def step(params, stats, x, mask):
            model = nnx.merge(graphdef, stats, params)
            extra = {} if mask is None else {"mask": mask}
            if kind is PREDICT:
                y = model(x, use_running_average=True)
            elif kind is None:  # a bare call: the module's attribute
                y = model(x, **extra)
            else:
                y = model(x, use_running_average=not kind, **extra)
            return y, nnx.state(model, nnx.BatchStat)

        return step


def make_replicated(base: Adapter) -> Adapter:
    """The replicated engine for the worker's flax or flax-nnx adapter."""
    if isinstance(base, FlaxNnxAdapter):
        return NnxReplicas(base)
    return LinenReplicas(base)
