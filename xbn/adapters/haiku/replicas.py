"""``hk.BatchNorm`` on R host devices (issue 12), the way Haiku users run it.

Synchronized: ``hk.BatchNorm(cross_replica_axis=...)`` names the shard_map mesh axis, and
``haiku/_src/batch_norm.py:BatchNorm.__call__`` ``jax.lax.pmean``s each replica's mean and
mean of squares, then takes ``var = E[x^2] - E[x]^2`` (biased) for the output and the EMAs.
With equal shards that is the global batch's statistics. Haiku's BatchNorm has no mask, so an
unequal split (which shard_map must pad to equal shards) is n/a.

The host model is the single-device adapter: its ``init`` on zeros (without the axis name,
which has no meaning outside the mapped function; same parameters and state), its readback
of each EMA's ``average``, and its ``set_weights``; every replica holds its own state copy.
"""

from __future__ import annotations

import haiku as hk

from .._jax.replicas import AXIS, PREDICT, ReplicatedJax
from ..base import Adapter


class HaikuReplicas(ReplicatedJax):
    mask_reason = "hk.BatchNorm.__call__ takes no mask"

    def sync_note(self) -> str:
        return f"hk.BatchNorm(cross_replica_axis='{AXIS}')"

    def _kwargs(self) -> dict:
        kwargs = dict(self.base.kwargs)
        if self.axis_named:
            kwargs["cross_replica_axis"] = AXIS
        return kwargs

    def host_tree(self) -> tuple:
        return self.base.params, self.base.bn_state

    def load_host_tree(self, params, stats) -> None:
        self.base.params, self.base.bn_state = params, stats

    def config_key(self):
        return tuple(sorted((k, repr(v)) for k, v in self._kwargs().items()))

    def local(self, kind, masked: bool):
        kwargs = self._kwargs()

        def forward(x, **call_kwargs):
            return hk.BatchNorm(**kwargs)(x, **call_kwargs)

        fn = hk.transform_with_state(forward)

        def step(params, state, x, mask):
            if kind is PREDICT:
                y, _ = fn.apply(params, state, None, x, is_training=False)
                return y, state
            # a bare call reaches hk.BatchNorm without is_training, and fails there
            flag = {} if kind is None else {"is_training": kind}
            return fn.apply(params, state, None, x, **flag)

        return step


def make_replicated(base: Adapter) -> Adapter:
    """The replicated engine for the worker's haiku adapter."""
    return HaikuReplicas(base)
