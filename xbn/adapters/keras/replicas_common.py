"""What the Keras family's replicated engines share: the single-device adapter builds the
layer (same kwargs, dtype policy, seed) inside the engine's scope, so a replicated layer is
the one a user would write, plus ``synchronized``; the set operations are the base adapter's.
"""

from __future__ import annotations

from dataclasses import replace

from ...scenario.loader import Layer
from ..base import Adapter, NotApplicable


def with_synchronized(layer: Layer, framework_id: str) -> Layer:
    """``layer`` whose native keyword arguments for ``framework_id`` carry
    ``synchronized=layer.synchronized``: the base adapter passes native arguments to the
    BatchNormalization constructor, so the replicated layer is built by the same code."""
    native = {**layer.native, framework_id: {**layer.native.get(framework_id, {}),
                                             "synchronized": bool(layer.synchronized)}}
    return replace(layer, native=native)


def keras_refuses_synchronized(layer: Layer) -> None:
    """Off TensorFlow, Keras 3's BatchNormalization constructor refuses synchronized=True
    (ValueError raised by keras itself); construct it as a user would so that error is the
    row before any distribution is set up."""
    if layer.synchronized:
        import keras

        keras.layers.BatchNormalization(synchronized=True)


class ReplicatedKeras(Adapter):
    """Delegates the set operations to the single-device adapter that built the layer;
    subclasses run call/predict on their engine and add every replica's copy to state()."""

    def __init__(self, base: Adapter):
        super().__init__(base.framework_id)
        self.base = base
        self.layer: Layer | None = None

    def _note(self, note: str) -> None:
        """Notes go on the base adapter's list too: the worker reports the notes of the
        adapter it made, not of its replicated engine."""
        if note not in self.base.notes:
            self.base.notes.append(note)
        self.notes = self.base.notes

    def replicated(self) -> Adapter:
        """Already the replicated engine (run_scenario asks every adapter for it)."""
        return self

    def _invalidate(self) -> None:
        """A set changed the layer (trainable, momentum, epsilon): traced steps are stale."""

    def set_trainable(self, trainable: bool) -> None:
        self.base.set_trainable(trainable)
        self._invalidate()

    def set_mode(self, mode: str) -> None:
        self.base.set_mode(mode)

    def set_hyper(self, momentum, epsilon) -> None:
        self.base.set_hyper(momentum, epsilon)
        self._invalidate()

    def reset(self) -> None:
        self.base.reset()

    def predict_masked(self, x, mask):
        return self.base.predict_masked(x, mask)  # Model.predict takes no mask: n/a

    def fit(self, x, target, step, fresh_optimizer):
        raise NotApplicable("fit is not supported with replicas")  # the loader refuses it

    def grad(self, x, training, weights):
        raise NotApplicable("grad is not supported with replicas")  # the loader refuses it

    def set_weights(self, values) -> None:
        self.base.set_weights(values)

    def versions(self) -> dict[str, str]:
        return self.base.versions()
