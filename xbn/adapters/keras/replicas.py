"""Replicas for the Keras family: each framework id on the distributed engine its users have.

* ``keras`` (Keras 3 on TensorFlow) and ``tf-keras``: ``tf.distribute.MirroredStrategy`` over
  R logical CPU devices (``replicas_tf.py``). TensorFlow fixes its logical devices when its
  runtime starts, so ``replicas_devices.configure_logical_devices`` runs in ``make_adapter`` (before any
  op) when the worker asked for replicas (``XBN_REPLICAS``, ``xbn.execution.worker.prepare_replicas``).
* ``keras-jax``: ``keras.distribution.DataParallel`` over R JAX host devices
  (``replicas_jax.py``).
* ``keras-torch``: Keras 3 has no distribution backend for torch
  (``keras/src/backend/__init__.py`` sets ``distribution_lib = None`` for torch), so the
  user's first step, ``keras.distribution.list_devices()``, fails inside Keras; that error is
  the row (:class:`KerasTorchReplicas`).

``synchronized=True`` is Keras' own constructor argument; off TensorFlow the constructor
refuses it (``keras/src/layers/normalization/batch_normalization.py`` ``__init__``), and that
refusal is the row.
"""

from __future__ import annotations

from ...scenario.loader import Layer
from ..base import Adapter, NotApplicable
from .replicas_common import keras_refuses_synchronized


class KerasTorchReplicas(Adapter):
    """keras-torch: what a user meets when asking Keras 3 for data parallelism on torch."""

    def __init__(self, base: Adapter):
        super().__init__(base.framework_id)
        self.base = base
        self.notes = list(base.notes) + [
            "keras.distribution on torch: Keras 3 has no torch distribution backend "
            "(keras/src/backend/__init__.py: distribution_lib = None)"]

    def replicated(self) -> Adapter:
        return self

    def build(self, layer: Layer) -> None:
        keras_refuses_synchronized(layer)
        import keras

        # the documented first step of keras.distribution.DataParallel: on torch Keras itself
        # fails here (AttributeError on its distribution_lib = None)
        devices = keras.distribution.list_devices()
        raise NotApplicable(  # only reached if a future Keras lists torch devices
            f"keras.distribution lists {devices} on torch, but Keras 3's torch variables and "
            "trainer ignore a distribution (keras/src/backend/torch has no distribution_lib)")

    def call(self, x, training):  # pragma: no cover - build always raises
        raise NotApplicable("not built")

    def predict(self, x):  # pragma: no cover
        raise NotApplicable("not built")

    def fit(self, x, target, step, fresh_optimizer):  # pragma: no cover
        raise NotApplicable("fit is not supported with replicas")

    def grad(self, x, training, weights):  # pragma: no cover
        raise NotApplicable("grad is not supported with replicas")

    def set_weights(self, values) -> None:  # pragma: no cover
        raise NotApplicable("not built")

    def state(self) -> dict:  # pragma: no cover
        return {}

    def versions(self) -> dict[str, str]:
        return self.base.versions()


def make_replicated(base: Adapter) -> Adapter:
    """The replicated engine for ``base``'s framework id (one per worker)."""
    if base.framework_id in ("keras", "tf-keras"):
        from .replicas_tf import MirroredReplicas

        return MirroredReplicas(base)
    if base.framework_id == "keras-jax":
        from .replicas_jax import DataParallelReplicas

        return DataParallelReplicas(base)
    if base.framework_id == "keras-torch":
        return KerasTorchReplicas(base)
    raise NotApplicable(f"{base.framework_id}: no distributed engine is wired up for replicas")
