"""``torch+openvino``: the module converted at the step with ``openvino.convert_model`` and
run on OpenVINO's CPU plugin. As ``torch+onnx`` (``xbn.adapters.torch.onnx``): training runs in
torch, every call and predict converts the module as the preceding steps left it; OpenVINO's
converter traces an inference graph (the BatchNorm folded into Multiply/Add, noted), so a
training-mode call's output is the runtime's inference output. The converter calls
``module.eval()`` before tracing (openvino/frontend/pytorch/ts_decoder.py:129, OpenVINO
2026.4.1; openvinotoolkit/openvino#17255) and never restores the mode, so the module stays in
eval mode after a converted call, as the user's would: a bare call after it is inference
(``exported_training = "inference"``, xbn.profiles.mode_facts). ``grad`` is ``n/a``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .._export import runtime
from ..base import NotApplicable
from .onnx import TorchOnnxAdapter


class TorchOpenVinoAdapter(TorchOnnxAdapter):
    def _run(self, x) -> object:
        t = self._tensor(x).cpu()
        state = [v.detach().cpu().numpy() for v in self.module.state_dict().values()]
        key = runtime.digest(state, self.module.training, tuple(t.shape), str(t.dtype),
                             self.module.eps)

        def make():
            import openvino as ov

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = ov.convert_model(self.module, example_input=t)
            self._note(f"openvino.convert_model (module in "
                       f"{'train' if self.module.training else 'eval'} mode): "
                       f"{runtime.openvino_ops(model)}")
            return runtime.OpenVinoRun(model)

        outputs = self.cache.get(key, make)(t.numpy())
        return self._result(torch.from_numpy(np.asarray(outputs[0])))

    def grad(self, x, training, weights) -> dict:
        raise NotApplicable("an OpenVINO compiled model computes no gradients")

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, **runtime.versions(("openvino",))}


def make_adapter(framework_id: str) -> TorchOpenVinoAdapter:
    return TorchOpenVinoAdapter(framework_id)
