"""What one small model says: where torch (A) and another framework (B) part, and whose it is.

The model is built in both frameworks from one spec and one set of weights (``xbn.fuzz.models``
and each family's ``model_builder``), and ``xbn.port.per_layer.verify_per_layer`` captures every
BatchNorm's input, output and running statistics in an inference and a training pass, pairs the
BNs and names the first one whose own results differ. Then, in this order:

* ``agree``: no BN differs and neither does the model's output;
* ``outside``: the first difference is not a BatchNorm's: the first differing BN's *input*
  already differs (and no earlier BN differs), or no BN differs and the model's output does
  (after the last BN). Reported as "outside BatchNorm", never blamed on one;
* ``port``: the first differing BN held a different state (gamma, beta, running statistics) or
  configuration (epsilon, momentum in the old-value convention, freezing) in B than in A
  (``xbn.port.layer_cause``): a porting mistake (a planted one, or a builder's bug), not a
  framework's;
* otherwise the BN alone is judged the way the single-layer fuzzer judges a scenario: its
  captured input and state become a one-layer scenario (``layer_cause.build_scenario``, with
  one call in the mode that differed), run through both frameworks' real layers, and
  ``xbn.fuzz.verdict.flags_of`` applies the trust rule (not the framework's declared
  switches, not its arithmetic within float rounding, not a documented option's rounding
  bound, not a known divergence). A flag is a ``finding`` named (framework, root cause)
  (``xbn.fuzz.cause``); no flag is ``accounted`` (each framework does what its declared profile
  says: the two profiles differ, or rounding does) or, when the BN alone agrees across the two
  frameworks, ``rounding`` (its input agreed within float rounding and the BN amplified it: an
  ill-conditioned batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import models

K_MODEL = 64.0  # the per-layer tolerance: k * eps(float32) * max|A|
K_LAYER = 16.0  # the single-layer fuzzer's
REPORTED = ("finding", "outside", "port")
QUANTITY_ROW = {"output": "output", "running_mean": "moving_mean",
                "running_var": "moving_variance"}
_ADAPTERS: dict = {}


@dataclass
class ModelVerdict:
    """One framework pair's verdict on one spec (see the module doc for ``kind``)."""

    kind: str
    framework: str  # B's id (or A's, for a finding in A's rows)
    cause: str  # a file-name-safe name: what deduplicates reports with the framework
    text: str  # the cause in words
    layer: str | None = None  # the first differing BN (A's name), or None
    mode: str | None = None
    quantity: str | None = None
    max_abs: float | None = None
    tolerance: float | None = None
    scenario: object = None  # the one-layer scenario that was judged, if any
    flag: object = None
    layers: list[dict] = field(default_factory=list)  # per BN: name and verdict
    b: str | None = None  # the B of the pair that showed it (``framework`` may be torch's)

    @property
    def signature(self) -> tuple[str, str]:
        return (self.framework, self.cause)

    @property
    def reported(self) -> bool:
        return self.kind in REPORTED

    def to_dict(self) -> dict:
        return {"kind": self.kind, "framework": self.framework, "cause": self.cause,
                "text": self.text, "layer": self.layer, "mode": self.mode,
                "quantity": self.quantity, "max_abs": self.max_abs,
                "tolerance": self.tolerance, "b": self.b, "layers": self.layers}


class ModelPair:
    """A spec built once in torch (A, captured once per mode) and judged against each B."""

    def __init__(self, spec: dict, weights: dict | None = None):
        from ..adapters.captures import capture

        self.spec = spec
        self.weights = models.make_weights(spec) if weights is None else weights
        self.x = models.make_input(spec)
        self.torch = models.builder("torch")
        self.a = self.torch.build(spec, self.weights, "torch")
        self.captures = {"framework": "torch"}
        for mode in ("eval", "train"):
            self.captures[mode] = capture(self.a, self.x, mode == "train")[1]

    def build(self, framework: str):
        return models.builder(framework).build(self.spec, self.weights, framework)

    def judge(self, framework: str, b=None) -> ModelVerdict:
        """The verdict for B = ``framework`` (``b``: a model built by hand instead)."""
        from ..port.per_layer import verify_per_layer

        b = self.build(framework) if b is None else b
        perm = models.transpose_b(self.spec)
        report = verify_per_layer("torch", b, self.x, transpose_b=perm, k=K_MODEL,
                                  explain=False, captures_a=self.captures)
        layers = [{"a": p.a, "b": p.b, "verdict": p.verdict,
                   "input": "differs" if not p.input_agrees() else "same"}
                  for p in report.layers]
        if report.first is None:
            return self._after_last(framework, b, perm, layers)
        pair = report.layers[report.first]
        mode, check = next((c.mode, c) for c in pair.checks
                           if c.quantity != "input" and c.verdict == "differs")
        base = dict(framework=framework, b=framework, layer=pair.a, mode=mode, quantity=check.quantity,
                    max_abs=check.max_abs, tolerance=check.tolerance, layers=layers)
        if report.starts_before:
            before = report.layers[report.first - 1].a if report.first else "the model's input"
            return ModelVerdict("outside", cause="outside-batchnorm", text=(
                f"the input of {pair.a} already differs ({mode} pass) and no BatchNorm before "
                f"it differs: the divergence starts outside BatchNorm, between {before} and "
                f"{pair.a}"), **base)
        xa, xb = self._pair(mode, report, b, perm)
        port = port_mistake(xa, xb)
        if port is not None:
            return ModelVerdict("port", cause=port[0], text=port[1], **base)
        return judge_layer(xa, xb, mode, check.quantity, base)

    def _pair(self, mode: str, report, b, perm):
        """A's and B's captures of the first differing BN in ``mode``."""
        from ..adapters.captures import capture
        from ..port.per_layer import match, to_b

        cb = capture(b, to_b(self.x, perm), mode == "train")[1]
        return match(self.captures[mode], cb)[report.first]

    def _after_last(self, framework, b, perm, layers) -> ModelVerdict:
        from ..comparison.diffs import measure

        ya = self.torch.forward(self.a, self.x)
        yb = models.builder(framework).forward(b, self.x if perm is None
                                               else np.transpose(self.x, perm))
        if perm is not None:
            yb = np.transpose(yb, np.argsort(perm))
        m = measure(yb, ya, "float32", K_MODEL)
        if m["within"]:
            return ModelVerdict("agree", framework, "agree", "every BatchNorm and the output "
                                "agree", layers=layers, b=framework)
        return ModelVerdict("outside", framework, "outside-batchnorm", (
            "every BatchNorm agrees and the model's inference output does not: the divergence "
            "is after the last BatchNorm"), mode="eval", quantity="model output",
            max_abs=m["max_abs"], tolerance=m["tolerance"], layers=layers, b=framework)


def port_mistake(xa, xb) -> tuple[str, str] | None:
    """(cause, words) where B's BN holds another state or configuration than A's; a frozen BN
    frozen on both sides (each framework's way) is the port, not a mistake."""
    from ..port.layer_cause import config_diffs, state_diffs, summary

    state = state_diffs(xa, xb)
    config = [c for c in config_diffs(xa, xb) if not (c["key"] == "frozen"
                                                      and c["a"] == c["b"])]
    if not state["differs"] and not config:
        return None
    keys = (["swapped"] if state["swapped"] else state["differs"]) + [c["key"] for c in config]
    words = summary({"state": state, "config": config, "scenario": None})
    return "port-" + "-".join(k.replace("_", "-") for k in keys), words


def one_layer(xa, mode: str):
    """The first differing BN alone: A's captured input and state, one call in ``mode`` (in
    inference where A's BN ran so: a frozen one)."""
    from ..port.layer_cause import build_scenario
    from ..scenario.model import Step

    scenario = build_scenario(xa, xa)
    state = {k: [float(v) for v in np.ravel(xa.before[k])] for k in
             ("gamma", "beta", "moving_mean", "moving_variance") if xa.before.get(k) is not None}
    training = mode == "train" and (xa.info is None or xa.info.training is not False)
    steps = [Step(0, "set_weights", values=state),
             Step(1, "call", input="x", training=training)]
    return replace(scenario, name="model-layer", inputs={"x": np.asarray(xa.input, np.float64)},
                   steps=steps, title=f"{xa.name} of a fuzzed model, alone")


def layer_rows(framework: str, scenario) -> list[dict]:
    """``framework``'s real layer run through ``scenario`` in this process."""
    from ..adapters.base import run_scenario
    from ..frameworks.registry import load_adapter

    if framework not in _ADAPTERS:
        _ADAPTERS[framework] = load_adapter(framework)
    return [dict(o) for o in run_scenario(_ADAPTERS[framework], scenario)]


def judge_layer(xa, xb, mode: str, quantity: str, base: dict) -> ModelVerdict:
    """The single-layer fuzzer's verdict on the first differing BN (see the module doc)."""
    from ..comparison.diffs import measure
    from .cause import root_cause
    from .verdict import KINDS, flags_of

    scenario = one_layer(xa, mode)
    fa, fb = xa.info.framework, xb.info.framework
    rows = {fid: layer_rows(fid, scenario) for fid in (fa, fb)}
    flags = sorted((f for fid in (fb, fa) for f in flags_of(fid, scenario, rows[fid], K_LAYER)),
                   key=lambda f: KINDS.index(f.kind))
    if flags:
        flag = flags[0]
        cause = root_cause(flag, scenario, rows[flag.framework], K_LAYER)
        return ModelVerdict("finding", **{**base, "framework": flag.framework},
                            cause=cause.name, text=f"{cause.text} ({flag.detail})",
                            scenario=scenario, flag=flag)
    want = QUANTITY_ROW[quantity]
    got = [next((o for o in rows[fid] if o["step"] == 1 and o["quantity"] == want), None)
           for fid in (fa, fb)]
    alone = [np.asarray(g["value"], np.float64) if g and g["value"] is not None else None
             for g in got]
    if alone[0] is not None and alone[1] is not None and \
            measure(alone[1], alone[0], "float32", K_MODEL)["within"]:
        return ModelVerdict("rounding", cause="input-rounding-amplified", text=(
            f"{xa.name} alone, fed A's input and state, agrees across {fa} and {fb}: its "
            "input agreed within float rounding and the BN amplified that (an ill-conditioned "
            "batch)"), scenario=scenario, **base)
    return ModelVerdict("accounted", cause="declared-profiles", text=(
        f"{xa.name} alone differs across {fa} and {fb}, and each matches its declared profile "
        "within its rounding bound (or a known divergence): no claim about either"),
        scenario=scenario, **base)
