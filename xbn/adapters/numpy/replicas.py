"""The float64 reference on replicas (``xbn.reference.replicas``) behind the Adapter interface.

``make_replicated(base)`` is what ``Adapter.replicated()`` calls for framework id numpy: the
replicated reference runs under ``base.semantics``, so an explanation's rerun with a changed
``Semantics`` changes the cross-replica switches too. No engine, no process: ``close`` has
nothing to release.
"""

from __future__ import annotations

from ...reference import mask as reference_mask
from ...reference.replicas import ReplicatedReference
from ...scenario.loader import Layer, Step, channel_axis
from ..base import Adapter, NotApplicable
from .adapter import NumpyAdapter


class ReplicatedNumpyAdapter(NumpyAdapter):
    """``NumpyAdapter`` whose ``bn`` is a ``ReplicatedReference``: one reference per replica,
    with the same state, weights and magnitudes interface."""

    def replicated(self) -> Adapter:
        return self  # already on replicas (a pretend framework in tests is made directly)

    def build(self, layer: Layer) -> None:
        self.bn = ReplicatedReference(layer, self.semantics_for(layer),
                                      axis=channel_axis(layer.layout))
        self.notes = [f"float64 reference on {len(layer.replicas)} replicas "
                      f"{list(layer.replicas)}, synchronized={str(layer.synchronized).lower()}"]

    def set_trainable(self, trainable: bool) -> None:
        self.bn.set_trainable(trainable)

    def set_mode(self, mode: str) -> None:
        self.bn.set_mode(mode)

    def set_hyper(self, momentum, epsilon) -> None:
        for bn in self.bn.replicas:
            bn.set_hyper(momentum, epsilon)

    def call_masked(self, x, training, mask):
        return self._masked_on_replicas(self.bn.call_masked, x, training, mask)

    def predict_masked(self, x, mask):
        return self._masked_on_replicas(self.bn.predict_masked, x, mask)

    def _masked_on_replicas(self, op, *args):
        try:
            return op(*args)
        except reference_mask.NoMask as exc:
            raise NotApplicable(str(exc)) from None

    def fit(self, x, target, step: Step, fresh_optimizer: bool) -> float:
        raise NotApplicable("fit is not supported with replicas")  # the loader refuses it

    def grad(self, x, training, weights) -> dict:
        raise NotApplicable("grad is not supported with replicas")  # the loader refuses it


def make_replicated(base: Adapter) -> Adapter:
    """The replicated reference under ``base``'s semantics (the reference's defaults when
    ``base`` carries none)."""
    return ReplicatedNumpyAdapter(base.framework_id, getattr(base, "semantics", None))
