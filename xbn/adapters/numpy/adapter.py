"""The float64 reference as an adapter, so it runs through the same driver loop and tests.

``[layer.native.numpy]`` sets the reference's semantic switches (see ``xbn.reference.batchnorm``), e.g.
``variance_update = "unbiased"`` to reproduce PyTorch's running variance.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from ...reference import mask as reference_mask
from ...reference.batchnorm import NoSuchOperation, ReferenceBatchNorm, Semantics
from ...scenario.loader import Layer, Step, channel_axis
from ..base import Adapter, NotApplicable


class NumpyAdapter(Adapter):
    # Keras' Batch Renormalization and tf-keras' ghost batches (xbn.reference.renorm)
    layer_features = frozenset({"renorm", "virtual_batch_size"})

    def __init__(self, framework_id: str = "numpy", semantics: Semantics | None = None):
        super().__init__(framework_id)
        self.semantics = semantics or Semantics()

    def semantics_for(self, layer: Layer) -> Semantics:
        """The adapter's semantics with the layer's ``[layer.native.<id>]`` switches set."""
        native = layer.native.get(self.framework_id, {})
        if not native:
            return self.semantics
        known = {f.name for f in fields(Semantics)}
        unknown = sorted(set(native) - known)
        if unknown:
            raise TypeError(f"unknown reference switch(es) {unknown}; known: {sorted(known)}")
        return self.semantics.with_(**native)

    def build(self, layer: Layer) -> None:
        semantics = self.semantics_for(layer)
        if layer.renorm is not None and layer.cumulative:
            raise NotApplicable("Batch Renormalization keeps exponential moving averages "
                                "(Keras); a cumulative momentum has no renorm to model")
        self.bn = ReferenceBatchNorm(layer, semantics, axis=channel_axis(layer.layout))

    def call(self, x, training):
        try:
            return self.bn.call(x, training)
        except NoSuchOperation as exc:  # exported_training = "none"
            raise NotApplicable(str(exc)) from None

    def predict(self, x):
        return self.bn.predict(x)

    def set_trainable(self, trainable: bool) -> None:
        self.bn.trainable = trainable

    def set_mode(self, mode: str) -> None:
        self.bn.module_training = mode == "train"

    def set_hyper(self, momentum, epsilon) -> None:
        self.bn.set_hyper(momentum, epsilon)

    def reset(self) -> None:
        try:
            self.bn.reset()
        except NoSuchOperation as exc:
            raise NotApplicable(str(exc)) from None

    def fit(self, x, target, step: Step, fresh_optimizer: bool) -> float:
        return np.float64(self._masked(_fit, x, target, step, fresh_optimizer, None))

    def grad(self, x, training, weights) -> dict:
        return self._masked(ReferenceBatchNorm.grad, x, training, weights)

    # a step's mask: the valid positions' statistics (xbn.reference.mask); n/a where the
    # semantics model a framework whose BatchNorm takes none (mask = "none")
    def call_masked(self, x, training, mask):
        return self._masked(reference_mask.call, x, training, mask)

    def predict_masked(self, x, mask):
        return self._masked(reference_mask.predict, x, mask)

    def grad_masked(self, x, training, weights, mask) -> dict:
        return self._masked(reference_mask.grad, x, training, weights, mask)

    def fit_masked(self, x, target, step: Step, fresh_optimizer: bool, mask):
        return np.float64(self._masked(_fit, x, target, step, fresh_optimizer, mask))

    def _masked(self, op, *args):
        try:
            return op(self.bn, *args)
        except (reference_mask.NoMask, NoSuchOperation) as exc:  # trainer = "none" too
            raise NotApplicable(str(exc)) from None

    def set_weights(self, values) -> None:
        try:
            self.bn.set_weights(values)
        except KeyError as exc:
            raise NotApplicable(f"the layer has no {exc.args[0]}") from None

    def state(self) -> dict:
        return self.bn.state()

    def batches_tracked(self):
        return self.bn.batches_tracked()

    def magnitudes(self) -> dict[str, float | None]:
        return self.bn.magnitudes()

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__}


def _fit(bn: ReferenceBatchNorm, x, target, step: Step, fresh_optimizer: bool, mask) -> float:
    return bn.fit(x, target, step.optimizer, step.epochs, step.batch_size, fresh_optimizer, mask)


def make_adapter(framework_id: str) -> Adapter:
    return NumpyAdapter(framework_id)
