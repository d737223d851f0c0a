"""``xbn repro``: a standalone script for a framework's issue tracker.

The script imports only that framework and numpy (never xbn): it builds the layer with the
framework's own API, replays the scenario's steps, prints every observed value next to the
exact float64 one, and ends with one line stating the discrepancy. The exact values are
computed here, by xbn's float64 reference run with the framework's *semantic* switches (its
momentum convention, its EMA form, ...), and embedded as literals: what remains is the
framework's arithmetic. Framework knowledge lives in each family's folder
(``xbn/adapters/<family>/repro.py``, found through ``registry.family_module``), which turns a
layer into code defining ``call``, ``predict``, ``set_trainable``, ``set_weights`` and
``state``; this module writes the rest.
"""

from __future__ import annotations

import numpy as np

from ..adapters.repro import ReproUnsupported
from ..frameworks.registry import family_module, family_of
from ..scenario.loader import Scenario, channel_axis
from ..scenario.observation import OK

SUPPORTED_OPS = ("call", "predict", "set", "set_weights")
# ops a family's template writes only when it says so (``TRAINING = True``: it defines
# ``fit(x, target, epochs, batch_size, optimizer, fresh)`` and ``grad(x, training, weights)``)
TRAINING_OPS = ("fit", "grad")


def _literal(value) -> str:
    """Python source for a (nested) list of floats, exact (repr round-trips) and NaN-safe."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if value is None:
        return "None"
    v = float(value)
    return f"float({str(v)!r})" if not np.isfinite(v) else repr(v)


def template_module(framework: str):
    family = family_of(framework)
    if family is None:
        raise ReproUnsupported(f"{framework} has no family")
    try:
        return family_module(family.id, "repro")
    except ModuleNotFoundError:
        raise ReproUnsupported(f"no repro template for the {family.id} family "
                               f"(xbn/adapters/{family.id}/repro.py)") from None


def check(scenario: Scenario, framework: str | None = None) -> None:
    """ReproUnsupported unless every step has a template (``fit``/``grad``: in ``framework``'s
    family, when its template defines them)."""
    layer = scenario.layer
    training = framework is not None and getattr(template_module(framework), "TRAINING", False)
    for key in ("renorm", "virtual_batch_size", "replicas"):
        if getattr(layer, key, None):
            raise ReproUnsupported(f"layer {key} has no standalone form yet")
    for step in scenario.steps:
        if isinstance(step.input, str) and step.input.startswith("@"):
            raise ReproUnsupported(f"step {step.index}: a chained input ({step.input}) has no "
                                   "standalone form yet")
        if getattr(step, "mask", None) is not None:
            raise ReproUnsupported(f"step {step.index}: a mask has no standalone form yet")
        if step.op == "set" and (step.momentum is not None or step.epsilon is not None):
            raise ReproUnsupported(f"step {step.index}: set momentum/epsilon has no "
                                   "standalone form yet")
        if step.op in TRAINING_OPS and training:
            if step.op == "fit" and step.loss != "mse":
                raise ReproUnsupported(f"step {step.index}: loss {step.loss!r}")
            continue
        if step.op not in SUPPORTED_OPS:
            raise ReproUnsupported(f"step {step.index}: op {step.op!r} has no standalone form "
                                   f"(supported: {', '.join(SUPPORTED_OPS)})")
        if step.op == "call" and step.training is None:
            raise ReproUnsupported(f"step {step.index}: a bare call (no training flag)")
        if step.op == "set" and step.mode is not None:
            raise ReproUnsupported(f"step {step.index}: set mode has no standalone form")


def scriptable(scenario: Scenario, framework: str) -> bool:
    """Whether ``script`` can write a standalone script for this scenario and framework."""
    try:
        check(scenario, framework)
    except ReproUnsupported:
        return False
    return True


def _step_code(step, fresh: bool) -> list[str]:
    """``fresh``: a fit step whose optimizer is new (the driver's rule: another configuration
    than the last fit's, or trainable changed since)."""
    lines = [f"# step {step.index}: {step.op}"]
    if step.op == "fit":
        from dataclasses import asdict

        def call(new: bool) -> str:
            return (f"fit(INPUTS[{step.input!r}], INPUTS[{step.target!r}], {step.epochs}, "
                    f"{step.batch_size!r}, {asdict(step.optimizer)!r}, {new})")

        if step.repeat > 1:
            lines.append(call(fresh))
            lines += [f"for _ in range({step.repeat - 2}):", f"    {call(False)}"] \
                if step.repeat > 2 else []
            fresh = False
        lines.append(f"show({step.index}, 'loss', {call(fresh)})")
    elif step.op == "grad":
        call = f"grad(INPUTS[{step.input!r}], {step.training}, INPUTS[{step.weights!r}])"
        if step.repeat > 1:
            lines += [f"for _ in range({step.repeat - 1}):", f"    {call}"]
        lines.append(f"for name, value in {call}.items():\n    show({step.index}, name, value)")
    elif step.op in ("call", "predict"):
        call = f"call(INPUTS[{step.input!r}], {step.training})" if step.op == "call" \
            else f"predict(INPUTS[{step.input!r}])"
        if step.repeat > 1:
            lines += [f"for _ in range({step.repeat - 1}):", f"    {call}"]
        lines.append(f"show({step.index}, 'output', {call})")
    elif step.op == "set":
        lines.append(f"set_trainable({step.trainable})")
    else:
        lines.append(f"set_weights({ {k: v for k, v in step.values.items()}!r})")
    lines.append(f"for name, value in state().items():\n    show({step.index}, name, value)")
    return lines


def _fresh(steps) -> list[bool]:
    """Per step, whether a fit builds a new optimizer (``adapters.base.run_scenario``'s rule)."""
    out, last = [], None
    for step in steps:
        out.append(step.op == "fit" and last != step.optimizer)
        if step.op == "fit":
            last = step.optimizer
        if step.op == "set" and step.trainable is not None:
            last = None
    return out


def script(scenario: Scenario, framework: str, flag=None) -> str:
    """The standalone script's source. ``flag`` (a ``verdict.Flag``) names the row the closing
    statement is about; without it the worst row is."""
    from .verdict import declared, reference

    check(scenario, framework)
    shape = next(iter(scenario.inputs.values())).shape
    body = template_module(framework).template(framework, scenario.layer, shape)
    exact = reference(scenario, declared(framework)[0])
    rows = {f"{at[0]}|{at[1]}": o["value"] for at, o in exact.items() if len(at) == 2
            if o["status"] == OK and o["value"] is not None}
    layer = scenario.layer
    dtype = layer.dtype
    inputs = "\n".join(f"    {k!r}: np.array({_literal(v.tolist())}, dtype=np.{dtype}),"
                       for k, v in scenario.inputs.items())
    exact_text = "\n".join(f"    {k!r}: {_literal(v)}," for k, v in rows.items())
    focus = f"{flag.step}|{flag.quantity}" if flag is not None else None
    claim = (f"a departure from {framework}'s own profile (not float rounding: "
             f"{flag.kind.replace('_', ' ')})" if flag is not None else
             f"a departure from {framework}'s own profile")
    steps = "\n".join(line for s, fresh in zip(scenario.steps, _fresh(scenario.steps),
                                                 strict=True) for line in _step_code(s, fresh))
    layer_text = (f"{layer.features} feature(s), layout {layer.layout} (channel axis "
                  f"{channel_axis(layer.layout)}), {dtype}, momentum {layer.momentum} (weight of "
                  f"the old value), epsilon {layer.epsilon:g}")
    return f'''#!/usr/bin/env python3
# ruff: noqa: E402, E731, I001 - generated: environment set before imports, as a user writes it
"""{framework} BatchNorm: {scenario.name}. Standalone: needs only {framework}'s packages and numpy.

Layer: {layer_text}. Every observed value is printed next to the exact float64 value of the
same computation as {framework} documents it (written in by the generator, computed in float64
with its own semantics: momentum convention, moving-average form, variance formula); the last
line states the departure.
Generated by `xbn repro`; the script needs only the framework and numpy, not xbn.
"""
import numpy as np

{body}

INPUTS = {{
{inputs}
}}
EXACT = {{  # "step|quantity": exact float64 value
{exact_text}
}}
FOCUS = {focus!r}
# below this relative departure a row is float32 rounding (a fit's optimizer steps leave a few
# ulp of float32, ~1e-6 relative, on each parameter), not a discrepancy worth a line
ROUNDING = 1e-5
CLAIM = {claim!r}
OBSERVED = {{}}


def show(step, quantity, value):
    got = np.asarray(value, dtype=np.float64)
    OBSERVED[f"{{step}}|{{quantity}}"] = got
    want = EXACT.get(f"{{step}}|{{quantity}}")
    print(f"step {{step}} {{quantity:<16}} observed {{np.array2string(got.ravel(), precision=9)}}"
          f"  exact {{np.array2string(np.asarray(want, np.float64).ravel(), precision=9)}}")


def statement():
    """The one-line discrepancy: FOCUS if it is off, else the worst row."""
    worst, text = -1.0, "no discrepancy: every value is within float rounding of the exact one"
    for key, got in OBSERVED.items():
        if key not in EXACT:
            continue
        want = np.asarray(EXACT[key], np.float64)
        step, quantity = key.split("|")
        where = f"step {{step}} {{quantity}}"
        with np.errstate(all="ignore"):
            if (~np.isfinite(got) & np.isfinite(want)).any():
                score, what = np.inf, (f"{{where}} is {{got.ravel()[~np.isfinite(got.ravel())][0]}} "
                                       f"where {framework}'s own documented computation gives "
                                       f"{{want.ravel()[~np.isfinite(got.ravel())][0]:.9g}}")
            elif quantity == "moving_variance" and (got < 0).any():
                score, what = np.inf, f"{{where}} is negative ({{got.min():.9g}})"
            else:
                scale = max(float(np.abs(want).max()), 1e-30)
                score = float(np.abs(got - want).max()) / scale
                what = (f"{{where}} is {{np.array2string(got.ravel(), precision=9)}} where "
                        f"{framework}'s own documented computation gives "
                        f"{{np.array2string(want.ravel(), precision=9)}} "
                        f"({{'larger' if got.max() > want.max() else 'smaller'}}; relative "
                        f"departure {{score:.3g}})")
        if key == FOCUS and score > 0:  # the finding's row, however small the gap
            worst, text = np.inf, what
            break
        if score > worst and score > ROUNDING:
            worst, text = score, what
    print(f"{framework} ({{VERSIONS}}): {{text}}" + (f": {{CLAIM}}" if worst > 0 else ""))


{steps}
statement()
'''
