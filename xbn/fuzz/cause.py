"""Root causes: what deduplicates findings. One finding per framework and mechanism.

A NaN output, a negative moving variance and a NaN gamma after ``fit`` are three symptoms of
one missing clamp on a one-pass variance; a maintainer wants one report for it, not three. A
finding's signature is therefore (framework, cause), where the cause is the mechanism the
reference can name:

* a hazard that the framework's declared profile shows (its rerun, or for outputs and running
  statistics its variance formula's rounding interval; for a float64 layer in float64, then
  in float32 arithmetic) is caused by the declared switch without which it disappears. For
  the one-pass variance ``E[x^2] - E[x]^2`` (``variance_algorithm = fast``) the test is
  sharper: the same formula clamped at 0
  (``fast_clamped``, Flax's) no longer shows it, so the cause is the missing clamp;
* an ``unexplained`` row of a float64 layer that the declared profile reproduces in float32 is
  caused by that narrower arithmetic; else by the switches whose single flip of the profile
  reproduces it (an undeclared setting), or by nothing xbn can name (one per framework);
* a NaN or inf that its own row's probe cannot name, downstream of a forward pass whose
  batch variance shows a hazard with a named cause (a NaN/inf output, a negative moving
  variance; the same step or an earlier one, the earliest first), takes that step's cause
  when the NaN flows from it. The derivation: a one-pass variance below -epsilon makes
  ``rsqrt(var + eps)`` NaN at that step; the output is ``gamma * (x - mean) * rsqrt(var + eps)
  + beta``, the input gradient and gamma's gradient are multiplied by the same ``rsqrt``
  (beta's gradient, the sum of the output gradient, is not), a fit's loss, gradients and so
  its updated gamma and beta are NaN, and every later step that reads them (a chained ``@N``
  input, the parameters, a moving statistic averaged from a NaN batch) is NaN too. The
  reference checks that flow instead of assuming it: it reruns the declared profile with that
  one step's epsilon set to NaN (``set`` steps around it, so that its ``rsqrt`` and nothing
  else is NaN) and the row must turn NaN/inf there. So the symptoms of a missing clamp (a grad
  step's input gradient, gamma after a fit, the moving variance after a chained NaN batch)
  share one signature even where the reference's own float32 rounding keeps its variance just
  above -epsilon and so does not show the NaN row itself; the output's cause is still decided
  by the reference (``variance_algorithm=fast`` shows it, ``fast_clamped`` does not);
* what the profile does not show at all keeps its symptom (quantity and kind) as its cause:
  xbn cannot tell two such rows apart, so it does not merge them. A moving variance NaN in the
  very step whose output is NaN is such a row: a variance below -epsilon averages to a finite
  (negative) moving variance, so only a NaN batch variance itself (float16's E[x^2] overflowing
  to inf - inf, which a clamp does not repair) makes it NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..explain.bounds import MONOTONE
from ..explain.reruns import describe, rerun
from ..explain.search import Search
from ..reference.batchnorm import Semantics
from ..reference.semantics import NUMERIC_SWITCH_VALUES, SWITCH_VALUES
from ..scenario.loader import Scenario
from ..scenario.model import Step
from ..scenario.observation import OK
from .verdict import Flag, Run, as_row, declared, hazards, reference


@dataclass(frozen=True)
class Cause:
    """``name``: what the signature holds and file names use; ``text``: the mechanism in words."""

    name: str
    text: str


# (declared switch, its value) -> the mechanism it names when it is what a hazard needs
MECHANISMS = {
    ("variance_algorithm", "fast"): (
        "one-pass-variance-not-clamped",
        "the batch variance is computed in one pass, E[x^2] - E[x]^2, and not clamped at 0: "
        "on a batch whose mean is large against its spread the two terms cancel to a value "
        "below -epsilon, whose rsqrt is NaN (the reference's variance_algorithm=fast; "
        "fast_clamped, the same formula clamped at 0, shows no hazard)"),
    ("variance_algorithm", "fast_clamped"): (
        "one-pass-variance",
        "the batch variance is computed in one pass, E[x^2] - E[x]^2 clamped at 0 (the "
        "reference's variance_algorithm=fast_clamped; the two-pass formula shows no hazard)"),
}


# a ``cancellation`` flag (xbn.fuzz.verdict) is, by its definition, the declared one-pass
# variance's own failure short of a NaN: one mechanism, whatever the row
CANCELLATION = (
    "one-pass-variance-cancellation",
    "the batch variance is computed in one pass, E[x^2] - E[x]^2: on a batch whose mean is "
    "large against its spread the two terms cancel to a variance far below the true one (yet "
    "above -epsilon), so the output is finite and far off; only the one-pass formula's "
    "unbounded rounding interval holds it, the two-pass formula's bound does not")


# the rows that show a step's batch variance hazard, and the kinds that show it: the output
# (NaN where rsqrt(var + eps) is) and the moving variance (negative where the batch variance
# is: a fit step records no output, only its loss and what the step left)
UPSTREAM = {"output": ("nan", "inf"), "moving_variance": ("negative_variance",)}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


class _Probe:
    """Whether the reference under a setting shows one flag's hazard: its rerun's row turned
    into an observation and judged by ``verdict.hazards``, or, for outputs and running
    statistics, the observed row inside that setting's variance formula's rounding interval
    (``xbn.explain.bounds``, what no summation order of a rerun matches bit for bit). Reruns
    end at the flag's step (nothing later is read) and are computed once per setting."""

    def __init__(self, flag: Flag, scenario: Scenario, rows: list[dict], k: float,
                 narrow: bool = False):
        self.flag, self.k = flag, k
        # the steps up to the flag's: nothing later changes its row (a dataclass copy)
        base = replace(scenario, steps=[s for s in scenario.steps if s.index <= flag.step])
        self.row = (flag.step, flag.quantity)
        self.own = [o for o in rows if (o["step"], o["quantity"]) == self.row]
        self.runs: dict = {}
        self.semantic, self.full = declared(flag.framework)
        self.scenario = base
        self.exact = self.observe(self.semantic)  # the layer's own dtype: the exact value
        row = self.own[0]
        if narrow:  # reruns and matching in float32: a float64 layer that computes in float32
            self.scenario, self.runs = replace(base, layer=replace(base.layer,
                                                                   dtype="float32")), {}
            row = {**row, "dtype": "float32"}
        self.search = Search({0: as_row(row)}, self.observe, k)

    def observe(self, change: dict) -> Run:
        key = tuple(sorted(change.items()))
        if key not in self.runs:
            run = Run()
            for o in rerun(self.scenario, change):
                run[(o["step"], o["quantity"])] = o
            self.runs[key] = run
        return self.runs[key]

    def rerun(self, change: dict) -> bool:
        theirs = self.observe(change).get(self.row, {})
        fake = [{**o, "value": theirs.get("value"), "status": theirs.get("status")}
                for o in self.own]
        return any(f.key == self.flag.key for f in
                   hazards(self.flag.framework, self.scenario, fake, self.exact, self.k))

    def shows(self, algorithm: str | None = None) -> bool:
        """The declared profile (with ``algorithm`` as its variance formula) shows it."""
        change = dict(self.full) if algorithm is None else \
            {**self.full, "variance_algorithm": algorithm}
        if self.rerun(change):
            return True
        algorithm = change.get("variance_algorithm", "two_pass")
        return self.flag.quantity in MONOTONE and \
            bool(self.search.bound_hits(self.semantic, algorithm))


def root_cause(flag: Flag, scenario: Scenario, rows: list[dict], k: float = 16.0) -> Cause:
    """The mechanism behind ``flag`` (one framework's rows of one scenario): see the module."""
    if flag.kind == "unexplained":
        return _unexplained(flag, scenario, rows, k)
    if flag.kind == "cancellation":  # flagged only where the profile declares a one-pass variance
        return Cause(*CANCELLATION)
    cause = _named(flag, scenario, rows, k)
    if cause is None and flag.kind in ("nan", "inf"):
        cause = _upstream(flag, scenario, rows, k)
    if cause is not None:
        return cause
    return Cause(_slug(f"{flag.quantity} {flag.kind}"),
                 f"{flag.quantity} {flag.kind.replace('_', ' ')} that its declared profile "
                 "does not reproduce: a mechanism xbn cannot name")


def _named(flag: Flag, scenario: Scenario, rows: list[dict], k: float) -> Cause | None:
    """The declared mechanism the reference shows behind ``flag``'s own row, else None."""
    probes = [_Probe(flag, scenario, rows, k)]
    if _wide(scenario):  # a float64 layer may compute in float32 (its own finding)
        probes.append(_Probe(flag, scenario, rows, k, narrow=True))
    for probe in probes:
        cause = _declared(flag, probe)
        if cause is not None:
            return cause
    return None


def _upstream(flag: Flag, scenario: Scenario, rows: list[dict], k: float) -> Cause | None:
    """The named cause of the earliest batch variance hazard (``UPSTREAM``) at or before
    ``flag``'s step from which the reference shows ``flag``'s NaN flowing (``_flows``): see
    the module."""
    semantic, full = declared(flag.framework)
    exact = reference(scenario, semantic)
    seen = [o for o in rows if o["quantity"] in UPSTREAM and o["step"] <= flag.step
            and (o["step"], o["quantity"]) != (flag.step, flag.quantity)]
    for step in sorted({o["step"] for o in seen}):
        mine = [o for o in seen if o["step"] == step]
        for hazard in hazards(flag.framework, scenario, mine, exact, k):
            if hazard.kind not in UPSTREAM[hazard.quantity]:
                continue
            cause = _named(hazard, scenario, rows, k)
            if cause is not None and _flows(flag, step, scenario, full):
                return cause
    return None


def _flows(flag: Flag, step: int, scenario: Scenario, full: dict) -> bool:
    """Whether the reference under the declared profile ``full``, with ``rsqrt(var + eps)`` of
    step ``step`` alone made NaN (its epsilon set to NaN by a ``set`` step before it and back
    after it), gives a non-finite value at ``flag``'s row: the NaN of that step's
    normalisation flows into it."""
    epsilon, steps = scenario.layer.epsilon, []
    index = {}  # old step index -> new one
    for s in scenario.steps:
        if s.index > flag.step:
            break
        if s.index == step:
            steps.append(Step(index=len(steps), op="set", epsilon=float("nan")))
        index[s.index] = len(steps)
        chained = s.input if isinstance(s.input, str) and s.input.startswith("@") else None
        steps.append(replace(s, index=len(steps),
                             input=f"@{index[int(chained[1:])]}" if chained else s.input))
        if s.op == "set" and s.epsilon is not None:
            epsilon = s.epsilon
        if s.index == step:
            steps.append(Step(index=len(steps), op="set", epsilon=epsilon))
    tainted = replace(scenario, steps=steps)
    for o in rerun(tainted, full):
        if (o["step"], o["quantity"]) == (index.get(flag.step), flag.quantity):
            value = np.asarray(o["value"] if o["value"] is not None else [], np.float64)
            return o["status"] == OK and bool((~np.isfinite(value)).any())
    return False


def _wide(scenario: Scenario) -> bool:
    return scenario.layer.dtype == "float64" and scenario.layer.state_dtype == "float64"


def _declared(flag: Flag, probe: _Probe) -> Cause | None:
    """The declared switch a hazard needs, where the profile (in the probe's arithmetic)
    shows the hazard at all."""
    full = probe.full
    if probe.shows():
        algorithm = full.get("variance_algorithm", "two_pass")
        if algorithm == "fast" and not probe.shows("fast_clamped"):
            return Cause(*MECHANISMS[("variance_algorithm", "fast")])
        if algorithm != "two_pass" and not probe.shows("two_pass"):
            return Cause(*MECHANISMS[("variance_algorithm", algorithm)])
        needed = [name for name in full if name != "precision" and not probe.rerun(
            {n: v for n, v in full.items() if n != name})]
        if needed:
            setting = {name: full[name] for name in needed}
            return Cause(_slug("declared " + " ".join(f"{n} {v}" for n, v in setting.items())),
                         f"its declared {describe(setting)} (without it the reference "
                         f"shows no {flag.kind})")
    return None


def _unexplained(flag: Flag, scenario: Scenario, rows: list[dict], k: float) -> Cause:
    """A narrower arithmetic than the layer's dtype (a float64 layer that the declared profile
    reproduces in float32), else an undeclared setting: the switches whose single flip of the
    profile reproduces the row."""
    probe = _Probe(flag, scenario, rows, k)
    full, search = probe.full, probe.search
    if _wide(scenario) and _Probe(flag, scenario, rows, k, narrow=True).search.hits(full):
        return Cause("float64-computed-in-float32",
                     "a float64 layer computes in float32: its declared profile run in "
                     "float32 arithmetic reproduces the row, in float64 it does not")
    values = {**SWITCH_VALUES, **NUMERIC_SWITCH_VALUES}
    found = sorted({name for name, options in values.items() for v in options
                    if full.get(name, getattr(Semantics(), name)) != v
                    and search.hits({**full, name: v})})
    if found:
        return Cause(_slug("undeclared " + " ".join(found)),
                     f"departs from its declared profile; flipping {', '.join(found)} of it "
                     "reproduces the row (a switch the profile declares wrongly, or a bug "
                     "that behaves like it)")
    return Cause("unexplained", "rows depart from its declared profile and neither a narrower "
                 "arithmetic nor a single flip of a switch reproduces them: a mechanism xbn "
                 "cannot name (one finding per framework; its symptoms list the rows seen)")
