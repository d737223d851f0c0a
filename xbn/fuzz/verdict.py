"""What counts as a finding: xbn's own verdicts, applied to one framework's rows of one scenario.

A finding is a claim about someone else's code, so a row is one only when nothing xbn already
knows accounts for it: not the framework's declared semantic switches, not its declared
arithmetic within float rounding, not a documented option within its rounding bound, not a
known divergence (``xbn/profiles/divergences.toml``, quiet for every kind). A row is a finding when

* ``unexplained``: the reference run with the framework's *own* profile does not reproduce it
  (the same matching rule as ``xbn.explain.search``: agreement, the declared exception for
  errors), nor does one rounding order flipped, nor its rounding-error bound
  (``xbn.explain.bounds``: a float32 framework never matches a float64 run bit for bit);
* a numerical hazard, where the exact value (the float64 reference with the framework's
  semantic switches) has none and float rounding cannot produce it: ``nan``/``inf`` where the
  exact value is finite, a ``negative_variance``, a ``cancellation`` (a declared one-pass
  variance far outside the exact two-pass formula's rounding bound that no *finite* bound of
  the declared formula holds and the declared profile does not reproduce: Flax's documented
  ``use_fast_variance`` stays quiet), or an ``overshoot`` (a moving mean outside every value the
  layer was given by more than the verdict's tolerance: an average cannot leave the hull of
  what it averages, but its last bit may). A hazard that the framework's own arithmetic with
  the stable two-pass variance reproduces (``precision=native``) is float rounding or range, not
  news. A hazard that the declared profile reproduces *is* news: no finite rounding bound holds
  a NaN or a negative variance, and the declared switch names the mechanism (the root cause,
  ``xbn.fuzz.cause``), it does not excuse it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ..common.dtypes import EPS
from ..comparison.diffs import agreement, row_at
from ..explain.bounds import MONOTONE, corner_changes
from ..explain.candidates import declared_profile
from ..explain.reruns import rerun
from ..explain.search import Search
from ..profiles.divergences import known_divergence
from ..profiles.facts import PROFILES
from ..profiles.refusals import declared_refusal
from ..reference.semantics import GATED_SWITCHES, NUMERIC_SWITCH_VALUES
from ..scenario.loader import Scenario
from ..scenario.observation import ERROR, NOT_APPLICABLE, OK

KINDS = ("nan", "inf", "negative_variance", "overshoot", "cancellation", "unexplained")
FAR = 1e-3  # relative error beyond which a one-pass variance has collapsed (float32 eps 1.2e-7)
REPLICA_REFUSALS = ("synchronized_statistics", "unsynchronized_statistics")
HAZARDS = KINDS[:4]  # the kinds ``hazards`` decides (cancellation needs the search)


@dataclass(frozen=True)
class Flag:
    """One finding row: ``key`` (framework, quantity, kind) is the symptom; the campaign
    deduplicates on the root cause (``xbn.fuzz.cause``); ``detail`` says what was seen."""

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


def as_row(o: dict) -> _Row:
    return _Row(**{"origin": None, "scale": None, **o})


class Run(dict):
    """A finished reference run in the shape ``xbn.explain.search``'s search reads (``get``,
    ``full``): the fuzzer's scenarios are a few steps, so every run is computed whole."""

    def full(self) -> dict:
        return self


_RUNS: dict[tuple, Run] = {}  # (scenario's text, setting) -> its run; see ``reference``
_RUNS_MAX = 4096


def _scenario_key(scenario: Scenario) -> str:
    """The scenario's whole text (its name included: rows carry it), computed once per object:
    a campaign hands every framework's verdict the same parsed scenario."""
    key = scenario.__dict__.get("_xbn_fuzz_key")
    if key is None:
        key = json.dumps(scenario.to_dict(), sort_keys=True, default=str)
        object.__setattr__(scenario, "_xbn_fuzz_key", key)
    return key


def reference(scenario: Scenario, change: dict) -> Run:
    """(step, quantity) -> observation of the float64 reference with ``change`` applied.

    Cached by (scenario, setting): ten frameworks' verdicts on one scenario ask for the same
    few settings (the Keras family shares its profile; every framework's exact run is its
    semantic switches), and a shrinking campaign re-asks for scenarios it has seen. Rerunning
    them was most of the fuzzer's own CPU (a ``repeat = 1000`` step is a thousand forward
    passes per setting). A Run is never modified by its readers."""
    key = (_scenario_key(scenario), tuple(sorted((k, repr(v)) for k, v in change.items())))
    run = _RUNS.get(key)
    if run is None:
        if len(_RUNS) >= _RUNS_MAX:
            _RUNS.clear()
        run = _RUNS[key] = Run()
        for o in rerun(scenario, change):  # a traced row under (step, quantity, rep) too:
            run[(o["step"], o["quantity"])] = o  # the last repetition, and where the search
            run[row_at(o)] = o  # (``row_at``) pairs each repetition
    return run


def declared(framework: str) -> tuple[dict, dict]:
    """(semantic switches, semantic and numeric switches) of the framework's profile, gated
    switches included: the explanation search leaves those out where a scenario cannot show
    them (to save reruns), but the fuzzer's truth is the whole profile, whatever the scenario
    (an export id's ``exported_training``, an inference-only backend's ``trainer``)."""
    profile = declared_profile(framework, set(GATED_SWITCHES))
    return (profile[0], profile[-1]) if profile else ({}, {})


def stable(framework: str) -> dict:
    """The framework's declared profile with the two-pass variance: its own arithmetic
    (precision, rounding order) with the formula a careful implementation uses. What this
    reproduces is float rounding or range, not the framework's choice."""
    full = declared(framework)[1]
    return {**full, "variance_algorithm": "two_pass"} if "precision" in full else full


def _array(value) -> np.ndarray:
    return np.asarray(value if value is not None else [], np.float64)


def _hull(scenario: Scenario, step_index: int) -> tuple[float, float]:
    """The smallest and largest value a moving mean may hold after ``step_index``: every input
    the layer saw, its initial 0 and any moving_mean loaded with set_weights."""
    lo = hi = 0.0
    for step in scenario.steps:
        if step.index > step_index:
            break
        if isinstance(step.input, str) and step.input.startswith("@"):
            return -np.inf, np.inf  # an earlier step's output: not known here, no claim
        values = [scenario.inputs[step.input]] if step.input else []
        if "moving_mean" in step.values:
            values.append(np.asarray(step.values["moving_mean"]))
        for v in values:
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    return lo, hi


def _finite(want: dict | None) -> np.ndarray | None:
    return _array(want["value"]) if want and want["status"] == OK \
        and want["value"] is not None else None


def _largest(o: dict, scenario: Scenario) -> float:
    """The largest finite value of the row's dtype: an exact value beyond it overflows in
    any implementation (range, not a bug: a float16 output of 3e5 is inf everywhere)."""
    dtype = o.get("dtype") or scenario.layer.dtype
    if dtype == "bfloat16":
        return 3.3895e38
    try:
        return float(np.finfo(dtype).max)
    except (TypeError, ValueError):  # a count (num_batches_tracked): no overflow to excuse
        return float("inf")


def _hazard(framework: str, scenario: Scenario, o: dict, want: dict | None,
            k: float) -> Flag | None:
    """The hazard of one observed row ``o`` whose exact counterpart is ``want`` (None: none)."""
    value = _array(o["value"])
    step, q = o["step"], o["quantity"]
    finite = _finite(want)
    if finite is not None and finite.shape == value.shape:
        bad = ~np.isfinite(value) & np.isfinite(finite) & (np.abs(finite) < _largest(o, scenario))
        if bad.any():
            kind = "nan" if np.isnan(value[bad]).any() else "inf"
            return Flag(framework, q, kind, step,
                        f"{q} is {kind} where the exact value is {finite[bad].flat[0]:.9g}")
    if q == "moving_variance" and (value < 0).any() and \
            (finite is None or finite.shape != value.shape or (finite >= 0).all()):
        return Flag(framework, q, "negative_variance", step,
                    f"moving_variance {value.min():.9g} < 0")
    if q == "moving_mean" and value.size:
        lo, hi = _hull(scenario, step)
        scale = max(abs(lo), abs(hi), float(np.abs(finite).max()) if finite is not None
                    and finite.size and np.isfinite(finite).all() else 0.0)
        tol = k * EPS.get(o.get("dtype"), EPS[scenario.layer.dtype]) * scale  # rounding
        exact_inside = finite is None or finite.shape != value.shape or \
            bool(((finite >= lo - tol) & (finite <= hi + tol)).all())
        if exact_inside and (value.max() > hi + tol or value.min() < lo - tol):
            far = value.max() if value.max() > hi + tol else value.min()
            return Flag(framework, q, "overshoot", step,
                        f"moving_mean {far:.9g} outside [{lo:.9g}, {hi:.9g}], the values the "
                        f"layer was given, by more than float rounding ({tol:.3g})")
    return None


def hazards(framework: str, scenario: Scenario, rows: list[dict], exact: dict,
            k: float = 16.0, rounding: dict | None = None) -> list[Flag]:
    """Numerical hazards in ``rows`` (one framework, one scenario); ``exact`` is the float64
    reference with the framework's semantic switches (the value a perfect float64 run of that
    framework would give); ``rounding``: the reference with the framework's arithmetic and
    the stable formula (``stable``): a hazard it shows too is float rounding, left quiet."""
    flags = []
    for o in rows:
        if o["status"] != OK or o["value"] is None or o["quantity"] == "loss":
            continue  # a loss is a mean over the output rows: their hazards are the news
        row = (o["step"], o["quantity"])
        flag = _hazard(framework, scenario, o, exact.get(row), k)
        if flag is None or rounding is None:
            flags += [flag] if flag else []
            continue
        seen = rounding.get(row)
        if not (seen and seen["status"] == OK and seen["value"] is not None and
                (f := _hazard(framework, scenario, {**o, "value": seen["value"]},
                              exact.get(row), k)) and f.kind == flag.kind):
            flags.append(flag)
    return flags


def unknown_rows(framework: str, scenario: Scenario, rows: list[dict]) -> dict:
    """Row index -> observation (as the search reads it) of every row a finding may be about:
    not a loss (a mean of squares of the output rows, which are checked), not a known
    divergence."""
    framework_rows = {}
    for i, o in enumerate(rows):
        if o["quantity"] == "loss":  # a mean of squares of the output rows, which are checked
            continue
        if known_divergence(framework, scenario, o["step"], o["quantity"]):
            continue
        framework_rows[i] = as_row(o)
    return framework_rows


def unexplained(framework: str, scenario: Scenario, rows: list[dict], k: float) -> list[Flag]:
    """Rows that the framework's declared profile reproduces neither within the tolerance nor
    within its variance formula's rounding bound (``xbn.explain.search``'s own matching), and
    declared one-pass variances that only an unbounded interval holds (``_cancellations``)."""
    if framework not in PROFILES:
        return []
    framework_rows = unknown_rows(framework, scenario, rows)
    def observe(change: dict) -> dict:
        return reference(scenario, change)

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
    left -= _refused(rows, framework_rows, left, observe(full))
    if left:  # the two-pass interval's corners: already run by ``bound_hits`` above
        nearby = [observe(full)] + [observe(c) for c in corner_changes(
            {**semantic, "variance_algorithm": "two_pass"})]
        left -= _ill_conditioned(framework_rows, left, nearby, observe(semantic), k)
    for i in sorted(left):
        o = framework_rows[i]
        want = observe(full).get((o.step, o.quantity))
        shown = want["message"] if want and want["status"] == ERROR else \
            (want or {}).get("value")
        flags.append(Flag(framework, o.quantity, "unexplained", o.step,
                          f"{o.quantity} = {_short(o.value if o.status == 'ok' else o.message)}"
                          f" where its profile gives {_short(shown)}"))
    return flags


def _refused(rows: list[dict], framework_rows: dict, left: set, profile: dict) -> set:
    """Rows of a step that the framework refuses (an exception at that step) and its declared
    profile refuses too: both answer with an exception, at another point of the step (torch's
    optimizer refuses a layer without parameters before the forward pass, the declared
    refusal after it), which is no claim about the framework's numbers."""
    theirs = {o["step"] for o in rows if o["status"] == ERROR}
    ours = {at[0] for at, o in profile.items() if o["status"] == ERROR}
    return {i for i in left if framework_rows[i].step in theirs & ours}


def _ill_conditioned(framework_rows: dict, left: set, nearby: list[dict], exact: dict,
                     k: float) -> set:
    """Rows whose value float rounding does not determine: the exact run (``exact``) and a run
    as near as rounding allows (``nearby``: the declared profile in its own precision, the
    batch statistics moved by their rounding-error bound) disagree on them beyond the
    tolerance. A gradient of a batch whose spread is 1e-8 of its mean, or one that is 0 in
    exact arithmetic and whose sign Adam turns into a whole step, is rounding noise: no
    summation order reproduces another's, and a difference there is no claim about anyone."""
    found = set()
    for i in left:
        o = framework_rows[i]
        want = exact.get((o.step, o.quantity))
        for run in nearby:
            near = run.get((o.step, o.quantity))
            if want is not None and near is not None and want["status"] == near["status"] == OK \
                    and not agreement(near, want, k).agree:
                found.add(i)
                break
    return found


def _cancellations(framework, framework_rows, search, semantic, full, observe) -> list[Flag]:
    """Rows of a framework that declares a one-pass variance (E[x^2] - E[x]^2) lying far
    outside what the exact two-pass formula's rounding can produce, which neither the
    declared profile reproduces nor a *finite* rounding bound of the declared formula holds
    (the interval xbn's explanation prints: inside it, the collapse is what the documented
    formula does), but only its unbounded interval (a corner's variance below -eps: it holds
    anything and accounts for nothing). A row that no interval holds is ``unexplained``."""
    algorithm = full.get("variance_algorithm", "two_pass")
    if algorithm == "two_pass":
        return []
    exact = observe(semantic)
    far = {}
    for i, o in framework_rows.items():
        want = exact.get((o.step, o.quantity))
        if o.status != OK or not want or want["status"] != OK or want["value"] is None \
                or o.quantity not in MONOTONE:
            continue
        got, ref = _array(o.value), _array(want["value"])
        if got.shape != ref.shape or not np.isfinite(got).all():
            continue  # a NaN is its own hazard
        rel = float(np.abs(got - ref).max()) / max(float(np.abs(ref).max()), 1e-30)
        if rel > FAR:
            far[i] = (rel, want)
    if not far:
        return []
    accounts = (lambda: search.hits(full),  # the cheapest first: one rerun each
                lambda: search.hits({**full, "variance_algorithm": "two_pass"}),
                lambda: {i for i, w in search.bound_hits(semantic, algorithm).items()
                         if np.isfinite(w.bound)},
                lambda: search.bound_hits(semantic, "two_pass"))
    inside: set = set()
    for held in accounts:
        inside |= set(held())
        if set(far) <= inside:
            return []
    unbounded = {i for i, w in search.bound_hits(semantic, algorithm).items()
                 if not np.isfinite(w.bound)}  # elsewhere nothing holds it: ``unexplained``
    return [Flag(framework, o.quantity, "cancellation", o.step,
                 f"{o.quantity} = {_short(o.value)} where the exact value is "
                 f"{_short(want['value'])} (relative error {rel:.3g}, outside the two-pass "
                 "formula's rounding bound; only the declared formula's unbounded interval "
                 "holds it)")
            for i, (rel, want) in far.items() if i not in inside and i in unbounded
            for o in [framework_rows[i]]]


def _short(value) -> str:
    if isinstance(value, str) or value is None:
        return str(value)
    flat = _array(value).ravel()
    text = ", ".join(f"{v:.9g}" for v in flat[:4])
    return f"[{text}{', ...' if flat.size > 4 else ''}]"


def expressed(rows: list[dict]) -> list[dict]:
    """The rows to judge: those before the first step the framework could not express (an
    ``n/a`` row: a mask torch takes no argument for, a ghost batch only tf-keras has, a reset
    Keras lacks) or refused with the replica refusal its profile declares, which the
    single-device reference reruns do not model (keras-torch's replicas, Keras'
    ``synchronized=True`` off TensorFlow). What follows ran on a layer that skipped that step:
    no claim about its numbers."""
    skipped = [o["step"] for o in rows if o.get("status") == NOT_APPLICABLE or
               declared_refusal(o.get("framework", ""), o) in REPLICA_REFUSALS]
    rows = [o for o in rows if o["step"] < min(skipped)] if skipped else rows
    # a traced repeat's rows: only its last repetition, which a reference run holds under
    # (step, quantity) (``Run``); the earlier ones are the trajectory, for plots
    last: dict = {}
    for o in rows:
        if o.get("rep") is not None:
            key = (o["step"], o["quantity"])
            last[key] = max(last.get(key, -1), o["rep"])
    return [o for o in rows if o.get("rep") is None or o["rep"] == last[(o["step"],
                                                                          o["quantity"])]]


def flags_of(framework: str, scenario: Scenario, rows: list[dict], k: float,
             hazards_only: bool = False) -> list[Flag]:
    """Every finding in one framework's rows of one scenario (empty: nothing to report);
    ``hazards_only``: NaN, inf, negative variances and overshoots only (two reruns, not the
    search: what a shrinking campaign asks first)."""
    rows = expressed(rows)
    if not rows:
        return []
    exact = reference(scenario, declared(framework)[0])
    quiet = unknown_rows(framework, scenario, rows)
    mine = [o for i, o in enumerate(rows) if i in quiet]
    found = hazards(framework, scenario, mine, exact, k)
    if found and framework in PROFILES:
        found = hazards(framework, scenario, mine, exact, k,
                        rounding=reference(scenario, stable(framework)))
    if hazards_only:
        return found
    hazardous = {(f.step, f.quantity) for f in found}  # a NaN off the profile is the NaN's news
    return found + [f for f in unexplained(framework, scenario, rows, k)
                    if (f.step, f.quantity) not in hazardous]
