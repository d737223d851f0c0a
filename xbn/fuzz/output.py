"""A finding on disk: the shrunk scenario as TOML, a one-paragraph summary, and (from
``xbn.fuzz.repro``) a standalone script. Names come from the signature, so a second campaign
that finds the same thing overwrites the same files instead of piling up copies."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..scenario.loader import parse
from .campaign import Finding

KIND_TEXT = {
    "nan": "returns NaN where the exact value is finite",
    "inf": "returns inf where the exact value is finite",
    "negative_variance": "stores a negative moving variance",
    "overshoot": "moves its moving mean outside the values it was given",
    "cancellation": "collapses the variance far outside the exact formula's rounding bound",
    "unexplained": "departs from its own declared profile",
}


def minimal_document(document: dict) -> dict:
    """The document without inputs no step uses (Hypothesis cannot drop a drawn input that an
    earlier choice made and a later one stopped using)."""
    used = {s.get(k) for s in document["steps"] for k in ("input", "target", "weights")}
    return {**document, "inputs": {k: v for k, v in document["inputs"].items() if k in used}}


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v} has no TOML spelling here")
        return repr(v)
    if isinstance(v, (int, str)):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")


def to_toml(document: dict, comment: str = "") -> str:
    """A scenario document as TOML that ``xbn run`` loads back to the same scenario."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for key in ("schema", "name", "title", "description"):
        if key in document:
            lines.append(f"{key} = {_value(document[key])}")
    lines += ["", "[layer]"] + [f"{k} = {_value(v)}" for k, v in document["layer"].items()]
    lines += ["", "[inputs]"] + [f"{k} = {_value(v)}" for k, v in document["inputs"].items()]
    for step in document["steps"]:
        lines += ["", "[[steps]]"] + [f"{k} = {_value(v)}" for k, v in step.items()]
    return "\n".join(lines) + "\n"


def slug(finding: Finding) -> str:
    fw, quantity, kind = finding.flag.key
    return f"{fw}-{quantity}-{kind}".replace("_", "-")


def summary(finding: Finding, versions: dict, seed: int) -> str:
    """One paragraph: who, what, where, the signature, and how to see it again."""
    fw, quantity, kind = finding.flag.key
    step = finding.scenario.steps[[s.index for s in finding.scenario.steps].index(
        finding.flag.step)]
    where = f"step {step.index} ({step.op}" + (f", training={str(step.training).lower()}"
                                             if step.training is not None else "") + ")"
    layer = finding.scenario.layer
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in finding.scenario.inputs.items())
    pinned = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    return (f"**{fw}** {KIND_TEXT[kind]}: at {where} {finding.flag.detail}. Layer: "
            f"{layer.features} feature(s), {layout_text(layer)}, inputs {shapes}. Signature: "
            f"{fw} / {quantity} / {kind} / switches {', '.join(finding.switches)}. Found by "
            f"`xbn fuzz --seed {seed}` ({pinned}) and shrunk by Hypothesis in "
            f"{finding.shrink_calls} calls to this scenario; see it with `xbn run "
            f"{slug(finding)}.toml -f {fw}` or `python {slug(finding)}.py` (needs only {fw}'s "
            "packages and numpy).\n")


def layout_text(layer) -> str:
    return f"layout {layer.layout}, {layer.dtype}, momentum {layer.momentum}, " \
           f"epsilon {layer.epsilon:g}"


def write(finding: Finding, out: Path, versions: dict, seed: int) -> list[Path]:
    """Write ``<slug>.toml``, ``<slug>.md`` and, where the family has a repro template,
    ``<slug>.py`` under ``out``; returns the paths written."""
    from .repro import ReproUnsupported, script

    out.mkdir(parents=True, exist_ok=True)
    name = slug(finding)
    document = {**minimal_document(finding.document), "name": name}
    text = summary(finding, versions, seed)
    toml = out / f"{name}.toml"
    toml.write_text(to_toml(document, f"xbn fuzz finding ({finding.flag.key[0]})"),
                    encoding="utf-8")
    md = out / f"{name}.md"
    md.write_text(f"# {name}\n\n{text}", encoding="utf-8")
    paths = [toml, md]
    try:
        code = script(parse(document, str(toml)), finding.flag.key[0], finding.flag)
    except ReproUnsupported:
        return paths
    py = out / f"{name}.py"
    py.write_text(code, encoding="utf-8")
    return paths + [py]
