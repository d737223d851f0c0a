"""The records of a per-layer verification (``xbn.port.per_layer``): one ``Check`` per mode and
quantity, one ``LayerPair`` per pair of BatchNorms, one ``PerLayerReport`` for the whole run.
Kept apart from the code that fills them so that the writers (``per_layer_text``,
``xbn.report.per_layer_html``) and the cause search (``layer_cause``) read them without
importing the capture machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Check:
    mode: str
    quantity: str
    max_abs: float | None
    tolerance: float | None
    verdict: str
    note: str | None = None


@dataclass
class LayerPair:
    index: int
    a: str
    b: str
    features: int
    checks: list[Check] = field(default_factory=list)

    def check(self, mode: str, quantity: str) -> Check | None:
        return next((c for c in self.checks if c.mode == mode and c.quantity == quantity), None)

    @property
    def verdict(self) -> str:
        """The worst verdict of the layer's own results (its input is the layer before's)."""
        own = [c.verdict for c in self.checks if c.quantity != "input"]
        return "differs" if "differs" in own else ("expected" if "expected" in own else "same")

    def diverges(self) -> bool:
        return self.verdict == "differs"

    def input_agrees(self) -> bool:
        """Whether the input agrees in every mode where this layer's own results differ."""
        for c in self.checks:
            if c.quantity != "input" and c.verdict == "differs":
                inp = self.check(c.mode, "input")
                if inp is None or inp.verdict == "differs":
                    return False
        return True


@dataclass
class PerLayerReport:
    a: str
    b: str
    k: float
    layers: list[LayerPair] = field(default_factory=list)
    first: int | None = None  # index into layers of the first diverging BN
    starts_before: bool = False  # the first diverging BN's input already differs
    cause: dict | None = None  # xbn.port.layer_cause.explain_layer
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first is None

    @property
    def explained(self) -> bool:
        return bool(self.cause and self.cause.get("explained"))

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"a": self.a, "b": self.b, "k": self.k, "ok": self.ok,
                "first": None if self.first is None else self.layers[self.first].a,
                "first_b": None if self.first is None else self.layers[self.first].b,
                "starts_before": self.starts_before, "cause": self.cause,
                "seconds": self.seconds, "notes": self.notes,
                "layers": [asdict(p) for p in self.layers]}

    def to_text(self) -> str:
        from .per_layer_text import report_text

        return report_text(self)
