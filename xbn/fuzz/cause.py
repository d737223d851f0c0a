"""Root causes: what deduplicates findings. One finding per framework and mechanism.

A NaN output, a negative moving variance and a NaN gamma after ``fit`` are three symptoms of
one missing clamp on a one-pass variance; a maintainer wants one report for it, not three. A
finding's signature is therefore (framework, cause), where the cause is the mechanism the
reference can name:

* a hazard that the framework's declared profile shows (its rerun, or for outputs and running
  statistics its variance formula's rounding interval; for a float64 layer in float64, then
  in float32 arithmetic) is caused by the declared switch without which it disappears. For the one-pass variance ``E[x^2] - E[x]^2``
  (``variance_algorithm = fast``) the test is sharper: the same formula clamped at 0
  (``fast_clamped``, Flax's) no longer shows it, so the cause is the missing clamp;
* an ``unexplained`` row of a float64 layer that the declared profile reproduces in float32 is
  caused by that narrower arithmetic; else by the switches whose single flip of the profile
  reproduces it (an undeclared setting), or by nothing xbn can name (one per framework);
* what the profile does not show at all keeps its symptom (quantity and kind) as its cause:
  xbn cannot tell two such rows apart, so it does not merge them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..explain.bounds import MONOTONE
from ..explain.reruns import describe, rerun
from ..explain.search import Search
from ..reference.batchnorm import Semantics
from ..reference.semantics import NUMERIC_SWITCH_VALUES, SWITCH_VALUES
from ..scenario.loader import Scenario
from .verdict import Flag, Run, as_row, declared, hazards


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
    probes = [_Probe(flag, scenario, rows, k)]
    if _wide(scenario):  # a float64 layer may compute in float32 (its own finding)
        probes.append(_Probe(flag, scenario, rows, k, narrow=True))
    for probe in probes:
        cause = _declared(flag, probe)
        if cause is not None:
            return cause
    return Cause(_slug(f"{flag.quantity} {flag.kind}"),
                 f"{flag.quantity} {flag.kind.replace('_', ' ')} that its declared profile "
                 "does not reproduce: a mechanism xbn cannot name")


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
