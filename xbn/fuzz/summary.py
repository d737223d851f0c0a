"""A finding's ``.md``: what was seen, its root cause, what xbn's own explanation says about the
row (the same text as ``xbn run``'s explanation column) and why that does not account for it,
the files beside it (only those written), and a report ready for the framework's tracker:
a minimal standalone script, expected against observed values, versions, and the upstream
status found in the framework's public tracker (``xbn.fuzz.upstream``).
"""

from __future__ import annotations

import platform

import numpy as np

from ..comparison.diffs import diff_table, observations_frame
from ..explain.reruns import rerun
from ..explain.search import explain_diffs
from ..scenario.observation import OK
from .campaign import Finding
from .upstream import description, status_text
from .verdict import declared, reference

KIND_TEXT = {
    "nan": "returns NaN where the exact value is finite",
    "inf": "returns inf where the exact value is finite",
    "negative_variance": "stores a negative moving variance",
    "overshoot": "moves its moving mean outside the values it was given",
    "cancellation": "moves its one-pass variance far from what its own formula gives within "
                    "rounding",
    "unexplained": "departs from its own declared profile",
}

# why the explanation column's setting does not account for a row of this kind
WHY = {
    "nan": "a NaN where the exact value is finite lies outside every finite rounding bound; a "
           "setting that reproduces it names how it arises (the root cause above), it does not "
           "make a NaN a documented result, and no known divergence covers it",
    "negative_variance": "a variance is never negative, and the same formula clamped at 0 "
                         "(or computed in two passes) in the framework's own float arithmetic "
                         "stores none: not rounding, and no documented option or known "
                         "divergence covers it",
    "overshoot": "an average cannot leave the hull of what it averages; it is outside by more "
                 "than the verdict's float tolerance, while the exact value is inside",
    "cancellation": "only an unbounded interval (a corner's variance below -epsilon) holds it, "
                    "which holds anything and accounts for nothing",
    "unexplained": "no declared switch, rounding order, rounding bound or known divergence "
                   "reproduces it",
}
WHY["inf"] = WHY["nan"].replace("NaN", "inf")


def _short(value, n: int = 4) -> str:
    if isinstance(value, str) or value is None:
        return str(value)
    flat = np.asarray(value, np.float64).ravel()
    text = ", ".join(f"{v:.9g}" for v in flat[:n])
    return f"[{text}{', ...' if flat.size > n else ''}]"


def explanation(finding: Finding, k: float) -> str:
    """xbn's explanation of the finding's row, as ``xbn run`` prints it (its explanation
    column): the reference rerun, diffed and explained by the same code."""
    scenario = finding.scenario
    rows = [{**o, "scenario": scenario.name} for o in finding.rows]
    obs = observations_frame(list(rerun(scenario, {})) + rows)
    diffs = explain_diffs(diff_table(obs, "numpy", k), obs, [scenario], "numpy", k)
    hit = diffs[(diffs["framework"] == finding.flag.framework) & (diffs["step"] ==
                finding.flag.step) & (diffs["quantity"] == finding.flag.quantity)]
    if hit.empty:
        return "no row (nothing to explain)"
    r = hit.iloc[0]
    return r.explanation if isinstance(r.explanation, str) else f"none (verdict {r.verdict})"


def summary(finding: Finding, name: str, versions: dict, command: str, script: bool,
            where: str = "") -> str:
    """One paragraph: who, what, where, the signature, and how to see it again (naming only
    the files written, by the path they have from where the campaign ran)."""
    fw, quantity, kind = finding.flag.key
    at = f"step {finding.flag.step} ({_op(finding)})"
    layer = finding.scenario.layer
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in finding.scenario.inputs.items())
    pinned = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    see = f"`xbn run {where}{name}.toml -f {fw}`" + (
        f" or `python {where}{name}.py` (needs only {fw}'s packages and numpy)" if script else "")
    return (f"**{fw}** {KIND_TEXT[kind]}: at {at} {finding.flag.detail}. Layer: "
            f"{layer.features} feature(s), layout {layer.layout}, {layer.dtype}, momentum "
            f"{layer.momentum}, epsilon {layer.epsilon:g}; inputs {shapes}. Signature: {fw} / "
            f"{finding.cause.name}. Found by `{command}` ({pinned}) and shrunk "
            f"in {finding.shrink_calls} calls to this scenario ({len(finding.scenario.steps)} "
            f"step(s), ending at the first that shows it); see it with {see}.")


def _table(finding: Finding) -> str:
    """Expected (the framework's own documented computation, its semantic switches, in exact
    arithmetic) against observed, for every quantity of the finding's step."""
    exact = reference(finding.scenario, declared(finding.flag.framework)[0])
    lines = ["| quantity | observed | expected (its own profile, exact) |", "|---|---|---|"]
    for o in finding.rows:
        if o["step"] != finding.flag.step:
            continue
        want = exact.get((o["step"], o["quantity"]))
        got = _short(o["value"]) if o["status"] == OK else o["message"]
        ref = _short(want["value"]) if want and want["status"] == OK else \
            (want or {}).get("message")
        mark = " **←**" if o["quantity"] == finding.flag.quantity else ""
        lines.append(f"| {o['quantity']}{mark} | {got} | {ref} |")
    return "\n".join(lines)


def _op(finding: Finding) -> str:
    step = next(s for s in finding.scenario.steps if s.index == finding.flag.step)
    return step.op + (f", training={str(step.training).lower()}" if step.training is not None
                      else "")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _symptoms(finding: Finding) -> str:
    others = sorted(finding.symptoms - {finding.flag.key[1:]})
    if not others:
        return ""
    seen = ", ".join(f"{q} {k.replace('_', ' ')}" for q, k in others)
    return (f" The campaign saw the same cause as {seen} too: one finding per framework "
            "and cause.")


def markdown(finding: Finding, name: str, versions: dict, seed: int, code: str | None,
             why_no_script: str, k: float = 16.0, command: str = "", where: str = "",
             toml: str = "") -> str:
    """The whole ``.md``: replayable from its own text (the scenario TOML is in it)."""
    fw, quantity, kind = finding.flag.key
    command = command or f"xbn fuzz -f {fw} --seed {seed}"
    run = f"xbn run {where}{name}.toml -f {fw}"
    files = [f"- `{where}{name}.toml`: the shrunk scenario; `{run}` shows it with every "
             "explanation."]
    if code is not None:
        files.append(f"- `{where}{name}.py`: the standalone script below (`python "
                     f"{where}{name}.py`; needs only {fw}'s packages and numpy, not xbn).")
    pinned = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    env = (f"{pinned}; Python {platform.python_version()}, numpy {np.__version__}, "
           f"{platform.system()} {platform.machine()}, CPU")
    script = (f"`{name}.py` (generated by `xbn repro`; it prints every value next to the value "
              f"of {fw}'s own documented computation in exact arithmetic and ends with one line "
              f"stating the departure):\n\n```python\n{code.rstrip()}\n```" if code is not None
              else f"none: {why_no_script}. The scenario below replays it with `{run}`.")
    scenario = (f"\n\nThe scenario (`{where}{name}.toml`; save it and run `{run}`):\n\n```toml\n"
                f"{toml.rstrip()}\n```" if toml else "")
    return f"""# {name}

{summary(finding, name, versions, command, code is not None, where)}

Campaign: `{command}`.{scenario}

## Root cause

{_sentence(finding.cause.text)}{_symptoms(finding)}

## What xbn's explanation says

`{run}` explains step {finding.flag.step} {quantity} as: "{explanation(finding, k)}".
Still a finding: {WHY[kind]}.

## Files

{chr(10).join(files)}

## Upstream report

**{fw} BatchNorm {KIND_TEXT[kind]}** ({finding.cause.name.replace('-', ' ')}).

{_sentence(description(finding.cause.name, finding.cause.text))} Observed at step
{finding.flag.step} ({_op(finding)}): {finding.flag.detail}.

Minimal script: {script}

Expected against observed at step {finding.flag.step} (expected: the exact value of the same
computation as {fw} documents it: its momentum convention, moving-average form and variance
formula, in float64):

{_table(finding)}

Versions: {env}.

Upstream status: {status_text(fw, finding.cause.name)}
"""
