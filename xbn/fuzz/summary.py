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
    "cancellation": "collapses the variance far outside the exact formula's rounding bound",
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


def summary(finding: Finding, name: str, versions: dict, seed: int, script: bool) -> str:
    """One paragraph: who, what, where, the signature, and how to see it again (naming only
    the files written)."""
    fw, quantity, kind = finding.flag.key
    where = f"step {finding.flag.step} ({_op(finding)})"
    layer = finding.scenario.layer
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in finding.scenario.inputs.items())
    pinned = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    see = f"`xbn run {name}.toml -f {fw}`" + (f" or `python {name}.py` (needs only {fw}'s "
                                              "packages and numpy)" if script else "")
    return (f"**{fw}** {KIND_TEXT[kind]}: at {where} {finding.flag.detail}. Layer: "
            f"{layer.features} feature(s), layout {layer.layout}, {layer.dtype}, momentum "
            f"{layer.momentum}, epsilon {layer.epsilon:g}; inputs {shapes}. Signature: {fw} / "
            f"{finding.cause.name}. Found by `xbn fuzz --seed {seed}` ({pinned}) and shrunk by "
            f"Hypothesis in {finding.shrink_calls} calls to this scenario; see it with {see}.")


def _table(finding: Finding) -> str:
    """Expected (the exact float64 value under the framework's own semantic switches) against
    observed, for every quantity of the finding's step."""
    exact = reference(finding.scenario, declared(finding.flag.framework)[0])
    lines = ["| quantity | observed | expected (exact) |", "|---|---|---|"]
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
             why_no_script: str, k: float = 16.0) -> str:
    """The whole ``.md``."""
    fw, quantity, kind = finding.flag.key
    files = [f"- `{name}.toml`: the shrunk scenario; `xbn run {name}.toml -f {fw}` shows it "
             "with every explanation."]
    if code is not None:
        files.append(f"- `{name}.py`: the standalone script below (`python {name}.py`; needs "
                     f"only {fw}'s packages and numpy, not xbn).")
    pinned = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    env = (f"{pinned}; Python {platform.python_version()}, numpy {np.__version__}, "
           f"{platform.system()} {platform.machine()}, CPU")
    script = (f"`{name}.py` (generated by `xbn repro`; it prints every value next to the exact "
              f"one and ends with one line stating the discrepancy):\n\n```python\n"
              f"{code.rstrip()}\n```" if code is not None else
              f"none: {why_no_script}. The scenario (`{name}.toml`) replays it with "
              f"`xbn run {name}.toml -f {fw}`.")
    return f"""# {name}

{summary(finding, name, versions, seed, code is not None)}

## Root cause

{_sentence(finding.cause.text)}{_symptoms(finding)}

## What xbn's explanation says

`xbn run {name}.toml -f {fw}` explains step {finding.flag.step} {quantity} as: "{explanation(finding, k)}".
Still a finding: {WHY[kind]}.

## Files

{chr(10).join(files)}

## Upstream report

**{fw} BatchNorm {KIND_TEXT[kind]}** ({finding.cause.name.replace('-', ' ')}).

{_sentence(description(finding.cause.name, finding.cause.text))} Observed at step
{finding.flag.step} ({_op(finding)}): {finding.flag.detail}.

Minimal script: {script}

Expected against observed at step {finding.flag.step} (expected: the exact float64 value of the
same computation with {fw}'s own semantics, its momentum convention and moving-average form):

{_table(finding)}

Versions: {env}.

Upstream status: {status_text(fw, finding.cause.name)}
"""
