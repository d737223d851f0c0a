"""Exported graphs for ``xbn audit MODEL.onnx`` and ``xbn verify A B.onnx``: read (a corrupt
file, a graph the checker refuses, a graph ONNX Runtime cannot load: one ``PortError`` line)
and run in ONNX Runtime's CPU provider. The export adapters' plumbing is ``_export.runtime``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._export.runtime import BN, bn_nodes, describe, opset_of
from .port_errors import PortError

__all__ = ["BN", "bn_nodes", "describe", "opset_of", "read_onnx", "run_onnx"]


def read_onnx(path: str | Path):
    """The ONNX model in ``path``, checked by ``onnx.checker``; bad input as one line."""
    if not Path(path).is_file():
        raise PortError(f"{path}: no such file")
    try:
        import onnx
    except ImportError:
        raise PortError(f"{path}: reading .onnx needs the onnx package (pip install "
                        "'xbn[onnx]')") from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise PortError(f"{path}: not an ONNX model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx.checker.ValidationError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PortError(f"{path}: onnx.checker refuses the graph: {first}") from None
    return model


def run_onnx(model, x: np.ndarray, path: str | Path = "model.onnx") -> np.ndarray:
    """The graph's first output for ``x`` in ONNX Runtime's CPU provider (one thread)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PortError(f"{path}: running .onnx needs onnxruntime (pip install "
                        "'xbn[onnx]')") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT's Fail/InvalidGraph/NotImplemented
        first = str(exc).strip().splitlines()[0][:300]
        raise PortError(f"{path}: ONNX Runtime {ort.__version__} cannot load the graph "
                        f"(opset {opset_of(model)}): {first}") from None
    inp = session.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    return np.asarray(session.run(None, {inp.name: np.asarray(x, dtype)})[0])
