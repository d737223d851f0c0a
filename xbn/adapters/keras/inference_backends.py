"""Keras 3's inference-only backends, numpy and OpenVINO (``keras-numpy``, ``keras-openvino``).

Both run a layer's call and ``Model.predict`` (the moving statistics move in a training call:
the layer assigns them eagerly), but neither can train or differentiate: their trainers raise
``NotImplementedError`` in ``fit`` (keras/src/backend/numpy/trainer.py:151-170,
keras/src/backend/openvino/trainer.py:215-237) and neither backend has automatic
differentiation (numpy has none; OpenVINO compiles inference graphs). So ``fit`` and ``grad``
steps are ``n/a`` with that reason, never errors. ``adapter_keras3`` asks this module; it
imports nothing of Keras so that the adapter's own import stays the one that fixes the backend.
"""

from __future__ import annotations

import importlib

from ..errors import NotApplicable

# framework id -> the KERAS_BACKEND it needs (xbn.frameworks.registry sets it in the worker)
BACKENDS = {"keras-numpy": "numpy", "keras-openvino": "openvino"}

_WHY = {
    "numpy": ("Keras 3's numpy backend is inference only: NumpyTrainer.fit raises "
              "NotImplementedError('fit not implemented for NumPy backend.') "
              "(keras/src/backend/numpy/trainer.py:151-170) and numpy has no automatic "
              "differentiation"),
    "openvino": ("Keras 3's OpenVINO backend is inference only: OpenVINOTrainer.fit raises "
                 "NotImplementedError('`fit` is not supported with openvino backend') "
                 "(keras/src/backend/openvino/trainer.py:215-237) and OpenVINO compiles "
                 "inference graphs, with no gradients"),
}


def inference_only(backend: str) -> bool:
    return backend in _WHY


def backend_module(backend: str):
    """The package behind an inference-only backend (for its version)."""
    return importlib.import_module(backend)


def refuse(backend: str, op: str) -> None:
    """NotApplicable for ``op`` (fit, grad) on an inference-only backend; nothing elsewhere."""
    if backend in _WHY:
        raise NotApplicable(f"{op}: {_WHY[backend]}")


# Backends whose training-mode calls are n/a too. OpenVINO's eager ops build a graph that is
# compiled whenever a value is read (keras/src/backend/openvino/core.py:934-946
# convert_to_numpy: compile_model), about 1 to 2 s per BatchNormalization call on a loaded
# 2-core machine (measured): seed-keras' 1002 training calls alone outlast any timeout, and
# training is outside the backend's contract (inference only). numpy's training calls are
# cheap and kept: they show its unclamped one-pass variance
# (keras/src/backend/numpy/nn.py:947-951 moments), a real difference.
_TRAINING_CALLS = {
    "openvino": ("a training-mode call (training=True) on Keras 3's OpenVINO backend: the "
                 "backend is inference only (no fit, no gradients), and each eager call "
                 "compiles an OpenVINO model (~1-2 s), so training calls are not run; "
                 "inference calls and predict are"),
}


def refuse_training_call(backend: str, training: bool | None, trainable: bool) -> None:
    """NotApplicable for a call that trains (``training=True`` on a trainable layer: Keras 3
    runs a frozen layer in inference mode) on a backend of ``_TRAINING_CALLS``."""
    if backend in _TRAINING_CALLS and training and trainable:
        raise NotApplicable(_TRAINING_CALLS[backend])
