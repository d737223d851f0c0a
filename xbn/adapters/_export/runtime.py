"""An exported graph, checked and run: ONNX Runtime (CPU provider) or OpenVINO (CPU plugin).

Every export adapter goes through :class:`Exported` so that the checks and the notes are the
same for every exporter: ``onnx.checker`` on the graph, each BatchNormalization node's
attributes (epsilon, momentum, training_mode, the opset) as a note, and what the exporter did
to the BatchNorm (kept as a node, or folded into Mul/Add constants) said in words. A session
is cached per key (the layer's state and the call's shape), so a scenario that repeats an
inference call exports once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

BN = "BatchNormalization"
# why every export id is n/a for a layer with replicas (each adapter's ``replicated``)
NO_REPLICAS = ("an exported graph runs on one device: a layer split over replicas (its "
               "data-parallel training) has no export form")
ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


def digest(arrays: Iterable, *extra: object) -> str:
    """A key for the layer's state: the bytes of every array, plus anything else that decides
    the export (mode, shape, dtype)."""
    h = hashlib.sha256(repr(extra).encode())
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def opset_of(model) -> int | None:
    """The default-domain opset the graph imports (the BatchNormalization version)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def bn_nodes(model) -> list[dict]:
    """Each BatchNormalization node with its attributes as ONNX defines their defaults
    (epsilon 1e-5, momentum 0.9, training_mode 0: onnx/defs/nn/defs.cc) and its inputs'
    dtypes where the graph's initializers give them."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != BN:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        stats = [inits[n] for n in node.input[3:5] if n in inits]
        out.append({"name": node.name or node.output[0],
                    "epsilon": float(attrs.get("epsilon", 1e-5)),
                    "momentum": float(attrs.get("momentum", 0.9)),
                    "training_mode": int(attrs.get("training_mode", 0)),
                    "outputs": len([o for o in node.output if o]),
                    "stats_dtype": ONNX_DTYPES.get(stats[0].data_type) if stats else None})
    return out


def describe(model, exporter: str) -> str:
    """One note: what the exporter made of the BatchNorm, with the attributes as exported."""
    ops = [n.op_type for n in model.graph.node]
    nodes = bn_nodes(model)
    head = f"{exporter}: opset {opset_of(model)}"
    if not nodes:
        return f"{head}, no BatchNormalization node (folded into {'/'.join(dict.fromkeys(ops))})"
    parts = [f"BatchNormalization epsilon={n['epsilon']!r} momentum={n['momentum']!r} "
             f"training_mode={n['training_mode']}" for n in nodes]
    return f"{head}, {'; '.join(parts)}"


def check(model) -> None:
    """``onnx.checker.check_model``: a graph the checker refuses is the exporter's bug, raised
    as the checker words it."""
    import onnx

    onnx.checker.check_model(model)


def expose_statistics(model):
    """A copy of the graph whose training-mode BatchNormalization nodes also output their
    running mean and variance (the node's optional outputs 1 and 2, which exporters leave
    unnamed): how ONNX's training mode hands back the updated statistics."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    names, types = [], {}
    graph = copy.graph
    known = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info)}
    known.update({t.name: t.data_type for t in graph.initializer})
    for i, node in enumerate(copy.graph.node):
        if node.op_type != BN or not any(
                a.name == "training_mode" and a.i == 1 for a in node.attribute):
            continue
        outs = list(node.output) + [""] * (3 - len(node.output))
        for k, what in ((1, "running_mean"), (2, "running_var")):
            if not outs[k]:
                outs[k] = f"xbn_{what}_{i}"
            names.append(outs[k])
            # the statistic's own type (a float64 module's is DOUBLE: typed FLOAT, ORT
            # refuses the graph), read from the running statistic the node is given
            types[outs[k]] = known.get(node.input[k + 2], onnx.TensorProto.FLOAT) \
                if len(node.input) > k + 2 else onnx.TensorProto.FLOAT
        del node.output[:]
        node.output.extend(outs[:3])
    for name in names:
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    return copy, names


@dataclass
class OrtRun:
    """An ONNX Runtime CPU session of one exported graph."""

    model: object
    statistics: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the same numbers on every run
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        feed = {self.session.get_inputs()[0].name: x}
        return self.session.run(None, feed)


@dataclass
class OpenVinoRun:
    """An OpenVINO model compiled for its CPU plugin."""

    model: object

    def __post_init__(self) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(self.model, "CPU")

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        result = self.compiled(x)
        return [np.asarray(result[o]) for o in self.compiled.outputs]


def openvino_ops(model) -> str:
    """The OpenVINO graph's operations in order (what became of the BatchNorm)."""
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    return "/".join(k for k in dict.fromkeys(kinds) if k not in ("Parameter", "Result"))


class Cache:
    """One runnable export per key: a scenario exports again only when the layer's state,
    its mode or the input's shape changed."""

    def __init__(self, limit: int = 8):
        self.runs: dict[str, object] = {}
        self.limit = limit

    def get(self, key: str, make: Callable[[], object]):
        if key not in self.runs:
            if len(self.runs) >= self.limit:
                self.runs.pop(next(iter(self.runs)))
            self.runs[key] = make()
        return self.runs[key]


def versions(names: Iterable[str]) -> dict[str, str]:
    """The versions of the export packages an adapter really imported."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # not installed: the adapter could not have imported it
            continue
    return out
