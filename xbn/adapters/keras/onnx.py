"""``keras+onnx`` and ``tf-keras+onnx``: the layer exported at the step and run in ONNX
Runtime's CPU provider.

Keras 3 exports with its own ``model.export(path, format="onnx")`` (on TensorFlow it converts
the serving function with its bundled tf2onnx; on JAX it needs ``jax2onnx``; on torch it calls
``torch.onnx.export``); tf-keras with ``tf2onnx.convert.from_keras``. Both write the
*inference* function (``training=False``): Keras has no training-mode export. So training
(``fit``, a training call of a trainable layer) runs in Keras as the user's training does,
its output Keras' own (noted; no exported graph computes it); every inference call and predict (and a training call of a frozen layer, which Keras
runs as inference) exports the layer as the preceding steps left it and runs the graph in
ONNX Runtime. ``grad`` is ``n/a`` (an inference session has no gradients). Each export is
checked with ``onnx.checker`` and its BatchNormalization attributes (or the folding) noted.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np

from .._export import runtime
from ..base import Adapter, NotApplicable

NO_TRAINING = ("{exporter} writes the inference function only (training=False): training calls "
               "run in Keras, as the user's training does before exporting")


def exporting() -> type:
    """The mixin every Keras export adapter puts before its framework's adapter."""
    return _Export


class _Export:
    """What both Keras adapters add: export at the step, run in ONNX Runtime."""

    exporter = ""

    def __init__(self, framework_id: str):
        super().__init__(framework_id)
        self.cache = runtime.Cache()  # one export per layer state and input shape

    def replicated(self):
        """Asked for before ``build`` where the layer has replicas (xbn.adapters.base)."""
        raise NotApplicable(runtime.NO_REPLICAS)

    def build(self, layer) -> None:
        super().build(layer)
        self.layer_dtype = layer.dtype

    def _export_note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def _onnx_model(self, x: np.ndarray):  # pragma: no cover - each subclass has one
        raise NotImplementedError

    def _run(self, x: np.ndarray):
        arr = np.asarray(x, self._dtype_name())
        variables = [np.asarray(v) for v in self.bn.weights]
        key = runtime.digest(variables, self.bn.epsilon, arr.shape, arr.dtype.name)

        def make():
            # Keras' export refuses a model never called ("The model provided has never
            # called", keras/src/export/export_utils.py), which a layer only ever called on
            # its own (xbn's eager calls) is; an inference call changes no state
            self.model(arr, training=False)
            model = self._onnx_model(arr)
            runtime.check(model)
            self._export_note(runtime.describe(model, self.exporter))
            return runtime.OrtRun(model)

        run = self.cache.get(key, make)
        return np.asarray(run(arr)[0])

    def _dtype_name(self) -> str:
        return self.layer_dtype

    def _training(self, training) -> bool:
        return bool(training) and bool(self.bn.trainable)

    def call(self, x, training):
        if self._training(training):  # the user's training step: in Keras
            self._export_note(NO_TRAINING.format(exporter=self.exporter))
            return super().call(x, training)
        return self._run(x)

    def predict(self, x):
        return self._run(x)

    def grad(self, x, training, weights, mask=None) -> dict:
        raise NotApplicable(f"{self.exporter}: an inference runtime computes no gradients "
                            "(training runs in Keras; the export is for inference)")

    def call_masked(self, x, training, mask):
        if self._training(training):  # the user's training step: in Keras, as unmasked
            self._export_note(NO_TRAINING.format(exporter=self.exporter))
            return super().call_masked(x, training, mask)
        raise NotApplicable(f"{self.exporter}: the exported function takes no mask")

    def predict_masked(self, x, mask):
        raise NotApplicable(f"{self.exporter}: the exported function takes no mask")


def _keras3(framework_id: str) -> Adapter:
    from .adapter_keras3 import KerasAdapter

    class KerasOnnxAdapter(_Export, KerasAdapter):
        exporter = "keras model.export(format='onnx')"

        def build(self, layer) -> None:
            super().build(layer)
            if self.backend == "jax":
                raise NotApplicable("Keras 3's ONNX export on JAX needs the jax2onnx package, "
                                    "which xbn's onnx extra does not install")

        def _onnx_model(self, x):
            import onnx

            with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = os.path.join(folder, "layer.onnx")
                self.model.export(path, format="onnx", verbose=False)
                return onnx.load(path)

        def versions(self) -> dict[str, str]:
            extra = ("onnx", "onnxruntime") + (("tf2onnx",) if self.backend == "tensorflow"
                                               else ())
            return {**super().versions(), **runtime.versions(extra)}

    return KerasOnnxAdapter(framework_id)


def _tf_keras(framework_id: str) -> Adapter:
    from .adapter_tf_keras import TfKerasAdapter

    class TfKerasOnnxAdapter(_Export, TfKerasAdapter):
        exporter = "tf2onnx.convert.from_keras(opset=15)"

        def _onnx_model(self, x):
            import tensorflow as tf
            import tf2onnx

            spec = tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, _ = tf2onnx.convert.from_keras(self.model, input_signature=(spec,),
                                                      opset=15)
            return model

        def versions(self) -> dict[str, str]:
            return {**super().versions(), **runtime.versions(("onnx", "onnxruntime", "tf2onnx"))}

    return TfKerasOnnxAdapter(framework_id)


def make_adapter(framework_id: str) -> Adapter:
    return _tf_keras(framework_id) if framework_id == "tf-keras" else _keras3(framework_id)
