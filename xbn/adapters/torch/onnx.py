"""``torch+onnx`` and ``torch+onnx-script``: the module exported at the step and run in ONNX
Runtime's CPU provider.

Training (``fit``) runs in torch, as the user's training loop does before exporting. Every
call and predict exports the module as the preceding steps left it (its weights, running
statistics and train/eval mode: ``torch.onnx.export`` with ``dynamo=True``, the
torch.export-based exporter, for ``+onnx``; ``dynamo=False`` with
``training=TrainingMode.PRESERVE``, the TorchScript-based exporter keeping the module's mode,
for ``+onnx-script``) and runs the graph in ONNX Runtime. Where the exported graph has a
training-mode BatchNormalization (``training_mode=1``, opset 15+), ONNX Runtime's updated
running statistics (the node's outputs 1 and 2) are written back into the module, so the
next step starts from the runtime's state, not torch's. ``grad`` is ``n/a``: an inference
session computes no gradients. Measured (torch 2.13): the TorchScript exporter traces a
train-mode module's forward, which updates its running statistics once (torch's rule) before
they become the graph's initializers, so a ``+onnx-script`` training call moves the
statistics twice (torch's update, then ONNX's); the dynamo exporter emits an inference node
(no ``training_mode``) for a train-mode module and leaves its buffers alone (onnxscript's
torchlib sets ``training = False``: onnxscript/function_libs/torch_lib/ops/core.py:7188, 7337),
though torch.export still traces the training forward, whose batch-of-one check raises. The
reference's switch for both: ``exported_training`` (xbn.profiles.mode_facts). Each export is
checked with ``onnx.checker`` and its BatchNormalization attributes are noted.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from .._export import runtime
from ..base import NotApplicable
from .adapter import TorchAdapter

EXPORTERS = {"onnx": "torch.onnx.export(dynamo=True)",
             "onnx-script": "torch.onnx.export(dynamo=False, training=PRESERVE)"}


def _module_error(exc: BaseException) -> BaseException:
    """What made torch.export fail: the module's forward raising (a batch of one in training)
    is reported as that error, as eager torch reports it; anything else as the exporter's."""
    seen, inner = {id(exc)}, exc.__cause__ or exc.__context__
    while inner is not None and id(inner) not in seen:
        if isinstance(inner, ValueError) and "per channel" in str(inner):
            return inner
        seen.add(id(inner))
        inner = inner.__cause__ or inner.__context__
    return exc


class TorchOnnxAdapter(TorchAdapter):
    """The torch adapter whose inference runs in the exported graph."""

    def __init__(self, framework_id: str = "torch"):
        super().__init__(framework_id)
        self.cache = runtime.Cache()
        # torch.export reads the legacy torch.backends.cudnn.allow_tf32 getter, which raises
        # once the new fp32_precision API has set "ieee" (torch 2.13: "a mix of the legacy and
        # new APIs", torch/backends/__init__.py); TF32 is CUDA-only and the export runs on
        # CPU, so the flag goes back to its default ("none") and the legacy switches are off
        if hasattr(torch.backends, "fp32_precision"):
            torch.backends.fp32_precision = "none"
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def replicated(self):
        """Asked for before ``build`` where the layer has replicas (xbn.adapters.base)."""
        raise NotApplicable(runtime.NO_REPLICAS)

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def _export(self, example: torch.Tensor):
        """The ONNX model of the module as it is now (its mode included)."""
        mode = self.mode or "onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "onnx":
                try:
                    program = torch.onnx.export(self.module, (example,), dynamo=True,
                                                verbose=False)
                except Exception as exc:  # the module's own refusal, as torch words it
                    inner = _module_error(exc)
                    if inner is exc:
                        raise
                    raise inner from exc
                model = program.model_proto
            else:
                buffer = io.BytesIO()
                torch.onnx.export(self.module, (example,), buffer, dynamo=False,
                                  training=torch.onnx.TrainingMode.PRESERVE,
                                  do_constant_folding=True)
                import onnx

                model = onnx.load_from_string(buffer.getvalue())
        runtime.check(model)
        self._note(runtime.describe(model, EXPORTERS[mode] + " (module in "
                                    f"{'train' if self.module.training else 'eval'} mode)"))
        exposed, names = runtime.expose_statistics(model)
        return runtime.OrtRun(exposed, names)

    def _run(self, x) -> object:
        t = self._tensor(x).cpu()
        state = [v.detach().cpu().numpy() for v in self.module.state_dict().values()]
        key = runtime.digest(state, self.module.training, self.mode, tuple(t.shape),
                             str(t.dtype), self.module.eps, self.module.momentum)
        run = self.cache.get(key, lambda: self._export(t))
        outputs = run(t.numpy())
        if run.statistics:  # a training-mode graph: the runtime's statistics are the state now
            mean, var = outputs[1], outputs[2]
            with torch.no_grad():
                self.module.running_mean.copy_(torch.from_numpy(np.asarray(mean)))
                self.module.running_var.copy_(torch.from_numpy(np.asarray(var)))
            self._note("training-mode graph: ONNX Runtime's running statistics (the node's "
                       "outputs 1 and 2) are written back into the module")
        return self._result(torch.from_numpy(np.asarray(outputs[0])))

    def call(self, x, training: bool | None):
        self._set_training(training)
        return self._run(x)

    def predict(self, x):
        was_training = self.module.training
        self.module.eval()
        try:
            return self._run(x)
        finally:
            self.module.train(was_training)

    def grad(self, x, training, weights) -> dict:
        raise NotApplicable("an ONNX Runtime inference session computes no gradients "
                            "(training runs in torch; the export is for inference)")

    def versions(self) -> dict[str, str]:
        names = ("onnx", "onnxruntime") + (("onnxscript",) if self.mode == "onnx" else ())
        return {**super().versions(), **runtime.versions(names)}


def make_adapter(framework_id: str) -> TorchOnnxAdapter:
    return TorchOnnxAdapter(framework_id)
