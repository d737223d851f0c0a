"""What counts as a finding: xbn's own verdicts, applied to one framework's rows of one scenario.

A difference from the reference is not news (every framework has its declared profile, and the
explanation column says which switch causes it). A row is a finding when

* ``unexplained``: the reference run with the framework's *own* profile does not reproduce it
  (the same matching rule as ``xbn.explain.search``: agreement, the declared exception for errors), nor
  does its rounding-error bound hold it (``xbn.explain.bounds``: a float32 framework never
  matches a float64 run bit for bit, and an ill-conditioned variance has no bit-exact rerun);
* a numerical hazard, whatever the profile says: ``nan``/``inf`` where the exact value is
  finite, a ``negative_variance``, a ``cancellation`` (a declared one-pass variance far outside
  the exact two-pass formula's rounding bound), or an ``overshoot`` (a moving mean outside every value the
  layer was ever given: an average cannot leave the hull of what it averages).

Rows covered by ``xbn/profiles/divergences.toml`` are known behaviour and stay quiet.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ..explain.bounds import MONOTONE
from ..explain.candidates import declared_profile
from ..explain.rerun import rerun
from ..explain.search import Search
from ..profiles.divergences import known_divergence
from ..profiles.facts import PROFILES
from ..reference.batchnorm import Semantics
from ..reference.semantics import NUMERIC_SWITCH_VALUES
from ..scenario.loader import Scenario
from ..scenario.observation import ERROR, OK

KINDS = ("nan", "inf", "negative_variance", "overshoot", "cancellation", "unexplained")
FAR = 1e-3  # relative error beyond which a one-pass variance has collapsed (float32 eps 1.2e-7)


@dataclass(frozen=True)
class Flag:
    """One finding row: ``key`` (framework, quantity, kind) is what the campaign deduplicates
    on while it searches; ``detail`` says what was seen."""

    framework: str
    quantity: str
    kind: str
    step: int
    detail: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.framework, self.quantity, self.kind)


class _Row(SimpleNamespace):
    """An observation as ``xbn.explain.search``'s search reads it: attributes, and ``_asdict`` for the
    error rule (``profiles.error_mismatch``) as on a DataFrame row."""

    def _asdict(self) -> dict:
        return dict(vars(self))


def _row(o: dict) -> _Row:
    return _Row(**{"origin": None, "scale": None, **o})


class _Run(dict):
    """A finished reference run in the shape ``xbn.explain.search``'s search reads (``get``,
    ``full``): the fuzzer's scenarios are a few steps, so every run is computed whole."""

    def full(self) -> dict:
        return self


def reference(scenario: Scenario, change: dict) -> _Run:
    """(step, quantity) -> observation of the float64 reference with ``change`` applied."""
    return _Run({(o["step"], o["quantity"]): o for o in rerun(scenario, change)})


def declared(framework: str) -> tuple[dict, dict]:
    """(semantic switches, semantic and numeric switches) of the framework's profile."""
    profile = declared_profile(framework)
    return (profile[0], profile[-1]) if profile else ({}, {})


def _array(value) -> np.ndarray:
    return np.asarray(value if value is not None else [], np.float64)


def _hull(scenario: Scenario, step_index: int) -> tuple[float, float]:
    """The smallest and largest value a moving mean may hold after ``step_index``: every input
    the layer saw, its initial 0 and any moving_mean loaded with set_weights."""
    lo = hi = 0.0
    for step in scenario.steps:
        if step.index > step_index:
            break
        values = [scenario.inputs[step.input]] if step.input else []
        if "moving_mean" in step.values:
            values.append(np.asarray(step.values["moving_mean"]))
        for v in values:
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    return lo, hi


def hazards(framework: str, scenario: Scenario, rows: list[dict], exact: dict) -> list[Flag]:
    """Numerical hazards in ``rows`` (one framework, one scenario); ``exact`` is the float64
    reference with the framework's semantic switches (the value a perfect float64 run of that
    framework would give)."""
    flags = []
    for o in rows:
        if o["status"] != OK or o["value"] is None or o["quantity"] == "loss":
            continue  # a loss is a mean over the output rows: their hazards are the news
        value = _array(o["value"])
        step, q = o["step"], o["quantity"]
        want = exact.get((step, q))
        finite = _array(want["value"]) if want and want["status"] == OK \
            and want["value"] is not None else None
        if finite is not None and finite.shape == value.shape:
            bad = ~np.isfinite(value) & np.isfinite(finite)
            if bad.any():
                kind = "nan" if np.isnan(value[bad]).any() else "inf"
                flags.append(Flag(framework, q, kind, step,
                                  f"{q} is {kind} where the exact value is "
                                  f"{finite[bad].flat[0]:.9g}"))
                continue
        if q == "moving_variance" and (value < 0).any():
            flags.append(Flag(framework, q, "negative_variance", step,
                              f"moving_variance {value.min():.9g} < 0"))
        if q == "moving_mean" and value.size:
            lo, hi = _hull(scenario, step)
            if value.max() > hi or value.min() < lo:
                far = value.max() if value.max() > hi else value.min()
                flags.append(Flag(framework, q, "overshoot", step,
                                  f"moving_mean {far:.9g} outside [{lo:.9g}, {hi:.9g}], the "
                                  "values the layer was given"))
    return flags


def unexplained(framework: str, scenario: Scenario, rows: list[dict], k: float) -> list[Flag]:
    """Rows that the framework's declared profile reproduces neither within the tolerance nor
    within its variance formula's rounding bound (``xbn.explain.search``'s own matching)."""
    if framework not in PROFILES:
        return []
    framework_rows = {}
    for i, o in enumerate(rows):
        if o["quantity"] == "loss":  # a mean of squares of the output rows, which are checked
            continue
        if known_divergence(framework, scenario.name, scenario.layer.dtype, o["quantity"],
                            o["op"]):
            continue
        framework_rows[i] = _row(o)
    runs: dict = {}

    def observe(change: dict) -> dict:
        key = tuple(sorted(change.items()))
        if key not in runs:
            runs[key] = reference(scenario, change)
        return runs[key]

    search = Search(framework_rows, observe, k)
    semantic, full = declared(framework)
    flags = _cancellations(framework, framework_rows, search, semantic, full, observe)
    left = set(framework_rows) - set(search.hits(full)) - set(search.hits(semantic))
    for name, options in NUMERIC_SWITCH_VALUES.items():  # one rounding order of the profile's
        for value in options:  # flipped: how XLA fuses under jit, TF's fused kernel, ...
            if left and name in full and value != full[name]:
                left -= set(search.hits({**full, name: value}))
    if left:
        algorithms = ["two_pass"] + [a for a in ("fast", "fast_clamped")
                                     if a == full.get("variance_algorithm")]
        for algorithm in algorithms:
            left -= set(search.bound_hits(semantic, algorithm))
            if not left:
                break
    for i in sorted(left):
        o = framework_rows[i]
        want = observe(full).get((o.step, o.quantity))
        shown = want["message"] if want and want["status"] == ERROR else \
            (want or {}).get("value")
        flags.append(Flag(framework, o.quantity, "unexplained", o.step,
                          f"{o.quantity} = {_short(o.value if o.status == 'ok' else o.message)}"
                          f" where its profile gives {_short(shown)}"))
    return flags


def _cancellations(framework, framework_rows, search, semantic, full, observe) -> list[Flag]:
    """Rows of a framework that declares a one-pass variance (E[x^2] - E[x]^2) lying far
    outside what the exact two-pass formula's rounding can produce: the declared formula
    explains them, which does not make a collapsed variance right."""
    if full.get("variance_algorithm", "two_pass") == "two_pass":
        return []
    inside = set(search.bound_hits(semantic, "two_pass"))
    inside |= set(search.hits({**full, "variance_algorithm": "two_pass"}))
    flags = []
    exact = observe(semantic)
    for i, o in framework_rows.items():
        want = exact.get((o.step, o.quantity))
        if i in inside or o.status != OK or not want or want["status"] != OK \
                or want["value"] is None or o.quantity not in MONOTONE:
            continue
        got, ref = _array(o.value), _array(want["value"])
        if got.shape != ref.shape or not np.isfinite(got).all():
            continue  # a NaN is its own hazard
        scale = max(float(np.abs(ref).max()), 1e-30)
        rel = float(np.abs(got - ref).max()) / scale
        if rel > FAR:
            flags.append(Flag(framework, o.quantity, "cancellation", o.step,
                              f"{o.quantity} = {_short(o.value)} where the exact value is "
                              f"{_short(want['value'])} (relative error {rel:.3g}, outside the "
                              "two-pass formula's rounding bound)"))
    return flags


def _short(value) -> str:
    if isinstance(value, str) or value is None:
        return str(value)
    flat = _array(value).ravel()
    text = ", ".join(f"{v:.9g}" for v in flat[:4])
    return f"[{text}{', ...' if flat.size > 4 else ''}]"


def flags_of(framework: str, scenario: Scenario, rows: list[dict], k: float) -> list[Flag]:
    """Every finding in one framework's rows of one scenario (empty: nothing to report)."""
    if not rows:
        return []
    exact = reference(scenario, declared(framework)[0])
    return hazards(framework, scenario, rows, exact) + unexplained(framework, scenario, rows, k)


def broken_switches(flag: Flag, scenario: Scenario, rows: list[dict]) -> tuple[str, ...]:
    """Which declared switches the finding is about, for its signature: for a hazard, the
    switches of the profile without which the reference stops reproducing it ("undeclared"
    when the profile does not reproduce it at all); for an unexplained row, the switches
    whose single flip of the profile would reproduce it ("none" when no flip does)."""
    from ..reference.semantics import SWITCH_VALUES

    _, full = declared(flag.framework)

    def hit(change: dict) -> bool:
        theirs = reference(scenario, change)
        own = [o for o in rows if (o["step"], o["quantity"]) == (flag.step, flag.quantity)]
        if flag.kind == "unexplained":
            framework_rows = {0: _row(own[0])}
            return bool(Search(framework_rows, lambda c: reference(scenario, c), 16.0).hits(change))
        fake = [{**o, "value": theirs.get((o["step"], o["quantity"]), {}).get("value"),
                 "status": theirs.get((o["step"], o["quantity"]), {}).get("status")}
                for o in rows]
        exact = reference(scenario, declared(flag.framework)[0])
        return any(f.key == flag.key for f in hazards(flag.framework, scenario, fake, exact))

    if flag.kind == "cancellation":  # by definition: the declared one-pass formula
        return ("variance_algorithm",)
    if flag.kind != "unexplained":
        if not hit(full):
            return ("undeclared",)
        return tuple(k for k in full if k != "precision" and not hit(
            {kk: v for kk, v in full.items() if kk != k})) or ("precision",)
    values = {**SWITCH_VALUES, **NUMERIC_SWITCH_VALUES}
    found = sorted({name for name, options in values.items() for v in options
                    if full.get(name, getattr(Semantics(), name)) != v
                    and hit({**full, name: v})})
    return tuple(found) or ("none",)
