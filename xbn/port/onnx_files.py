"""``xbn audit MODEL.onnx`` and ``xbn verify A B.onnx``: an exported graph's BatchNorms.

The audit lists each BatchNormalization node with its attributes and flags the export
pitfalls: ``training_mode=1`` in a graph meant for inference (the node computes batch
statistics at serving time), float16 statistics, an epsilon other than the source's (given
with ``--epsilon``), and a BatchNormalization right after a Conv that the exporter left
unfolded. A graph with no BatchNormalization (folded into Mul/Add or Conv, or never there) is
bad input for the audit: one line, exit 2. ``verify`` runs A (any model ``xbn verify`` runs,
or another .onnx) and the .onnx B on the same inputs in inference mode; folding changes the
float32 operation order only, so the agreement is judged within the rounding tolerance, and
the explanation names what the exporter did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..adapters.exported import BN, bn_nodes, describe, opset_of, read_onnx, run_onnx
from ..adapters.port_errors import PortError


@dataclass
class OnnxAudit:
    source: str
    opset: int | None
    nodes: list[dict]
    flags: list[tuple[str, str, str]] = field(default_factory=list)  # node, level, text

    def to_dict(self) -> dict:
        return {"source": self.source, "framework": "onnx", "opset": self.opset,
                "layers": self.nodes, "flags": [dict(zip(("layer", "level", "text"), f, strict=True))
                                                for f in self.flags]}

    def to_text(self) -> str:
        lines = [f"{self.source} (onnx, opset {self.opset}): {len(self.nodes)} "
                 "BatchNormalization node(s)"]
        lines += [f"  {n['name']}: epsilon={n['epsilon']!r} momentum={n['momentum']!r} "
                  f"training_mode={n['training_mode']} statistics={n['stats_dtype']}"
                  for n in self.nodes]
        if self.flags:
            lines += ["", "flags:"] + [f"  {n}: [{lvl}] {t}" for n, lvl, t in self.flags]
        return "\n".join(lines) + "\n"


def audit_onnx(path: str | Path, epsilon: float | None = None) -> OnnxAudit:
    model = read_onnx(path)
    nodes = bn_nodes(model)
    if not nodes:
        raise PortError(f"{path}: nothing to audit: {describe(model, 'exported graph')}")


    result = OnnxAudit(str(path), opset_of(model), nodes)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    inputs = {n.name or n.output[0]: n.input[0] for n in model.graph.node if n.op_type == BN}
    for n in nodes:
        if n["training_mode"] == 1:
            result.flags.append((n["name"], "error", "training_mode=1: the node normalizes "
                                 "with the batch's statistics at inference (an exporter given "
                                 "a module in train mode; onnxscript#1791)"))
        if n["stats_dtype"] == "float16":
            result.flags.append((n["name"], "warn", "float16 running statistics: a variance "
                                 "under 6e-8 or over 65504 is not representable"))
        if epsilon is not None and not np.isclose(n["epsilon"], epsilon, rtol=1e-6):
            result.flags.append((n["name"], "warn", f"epsilon {n['epsilon']!r} differs from "
                                 f"the source's {epsilon!r}"))
        if producers.get(inputs.get(n["name"], "")) == "Conv":
            result.flags.append((n["name"], "info", "left unfolded after a Conv: runtimes that "
                                 "fold at load time (ORT's graph optimizations) change the "
                                 "float32 operation order"))
    return result


@dataclass
class OnnxVerify:
    a: str
    b: str
    max_abs: float
    bound: float
    explanation: str
    ok: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def to_text(self) -> str:
        verdict = "same" if self.ok else "differs"
        return (f"mode  quantity  verdict  max|A-B|  bound\n"
                f"eval  output    {verdict:<7}  {self.max_abs:.3g}  {self.bound:.3g}\n"
                f"explanation: {self.explanation}\n")


def verify_onnx(a, b_path: str | Path, arrays: list[np.ndarray], k: float | None,
                a_label: str) -> OnnxVerify:
    """A (a runner's ``eval`` or another .onnx) against the .onnx B, in inference mode."""
    from ..adapters.live import runner_for

    model_b = read_onnx(b_path)
    nodes = bn_nodes(model_b)
    worst, bound = 0.0, 0.0
    k = 64.0 if k is None else k
    for x in arrays:
        ya = run_onnx(a, x, a_label) if type(a).__name__ == "ModelProto" else \
            np.asarray(runner_for(a, x).eval(x))
        yb = run_onnx(model_b, x, b_path)
        if ya.shape != yb.shape:
            raise PortError(f"{b_path}: output shape {yb.shape} differs from A's {ya.shape}")
        worst = max(worst, float(np.max(np.abs(ya.astype(np.float64) - yb))))
        bound = max(bound, k * float(np.finfo(np.float32).eps) * float(np.max(np.abs(ya))))
    if nodes:
        how = "the BatchNorm kept as BatchNormalization: " + "; ".join(
            f"epsilon={n['epsilon']!r} training_mode={n['training_mode']}" for n in nodes)
    else:
        how = ("the exporter folded the BatchNorm (" + describe(model_b, "B") + "): the same "
               "rule, another float32 operation order")
    if worst > bound:
        how += "; the difference exceeds float32 rounding: a rule changed " + (
            "(training_mode=1: batch statistics at inference)"
            if any(n["training_mode"] for n in nodes) else
            "(check epsilon and the statistics exported)")
    return OnnxVerify(a_label, str(b_path), worst, bound, how, worst <= bound)
