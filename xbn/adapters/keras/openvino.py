"""``keras+openvino``: Keras 3's ``model.export(path.xml, format="openvino")`` at the step, run
on OpenVINO's CPU plugin. As ``keras+onnx`` (``xbn.adapters.keras.onnx``): training runs in
Keras; inference calls and predict run the exported (inference) graph. ``grad`` is ``n/a``.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np

from .._export import runtime
from ..base import Adapter
from .onnx import exporting


def make_adapter(framework_id: str) -> Adapter:
    from .adapter_keras3 import KerasAdapter

    class KerasOpenVinoAdapter(exporting(), KerasAdapter):
        exporter = "keras model.export(format='openvino')"

        def _run(self, x):
            arr = np.asarray(x, self.layer_dtype)
            key = runtime.digest([np.asarray(v) for v in self.bn.weights], self.bn.epsilon,
                                 arr.shape, arr.dtype.name)

            def make():
                import openvino as ov

                with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    path = os.path.join(folder, "layer.xml")
                    self.model.export(path, format="openvino", verbose=False)
                    model = ov.Core().read_model(path)
                    run = runtime.OpenVinoRun(model)
                self._export_note(f"{self.exporter}: {runtime.openvino_ops(model)}")
                return run

            return np.asarray(self.cache.get(key, make)(arr)[0])

        def versions(self) -> dict[str, str]:
            return {**super().versions(), **runtime.versions(("openvino",))}

    return KerasOpenVinoAdapter(framework_id)
