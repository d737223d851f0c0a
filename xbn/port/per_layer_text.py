"""The terminal and Markdown faces of a per-layer verification (``xbn.port.per_layer``).

One row per BN pair: the largest difference of its input and output in each pass and of its
running statistics after the training pass, the worst verdict of its own results, then the
first diverging BN with its cause. Markdown is the same table with pipes (for a pull request
or an issue); the HTML page with the drift plot is ``xbn.report.per_layer_html``.
"""

from __future__ import annotations

from typing import Any

PerLayerReport = Any  # xbn.port.per_layer_model.PerLayerReport (not imported: it imports this)
COLUMNS = (("eval", "input"), ("eval", "output"), ("train", "input"), ("train", "output"),
           ("train", "running_mean"), ("train", "running_var"))
HEAD = ["#", "BN in A", "BN in B", "C", "eval in", "eval out", "train in", "train out",
        "run mean", "run var", "verdict"]


def _cell(check) -> str:
    if check is None:
        return ""
    if check.max_abs is None:
        return "n/a" if check.verdict == "same" else "✗"
    mark = {"differs": " ✗", "expected": " ~"}.get(check.verdict, "")
    return f"{check.max_abs:.2g}{mark}"


def rows(report: PerLayerReport) -> list[list[str]]:
    out = []
    for p in report.layers:
        marker = " <- first" if report.first == p.index else ""
        out.append([str(p.index), p.a, p.b, str(p.features),
                    *(_cell(p.check(m, q)) for m, q in COLUMNS), p.verdict + marker])
    return out


def cause_lines(report: PerLayerReport) -> list[str]:
    """The verdict and, for the first diverging BN, what moved it."""
    if report.first is None:
        expected = sum(p.verdict == "expected" for p in report.layers)
        tail = f" ({expected} with expected differences only)" if expected else ""
        return [f"all {len(report.layers)} BatchNorm pairs agree{tail}"]
    p = report.layers[report.first]
    c = report.cause or {}
    lines = [f"first diverging BatchNorm: {p.a} (A) / {p.b} (B), #{p.index} of "
             f"{len(report.layers)}"]
    if report.starts_before:
        lines.append("  its input already differs: " + (c.get("summary") or "a non-BN layer"))
        return lines
    for ch in p.checks:
        if ch.verdict == "differs":
            size = "" if ch.max_abs is None else f" by {ch.max_abs:.3g} (tolerance {ch.tolerance:.2g})"
            lines.append(f"  {ch.mode} {ch.quantity} differs{size}; its {ch.mode} input agrees")
    lines.append(f"  cause: {c.get('summary', 'not explained')}")
    sc = c.get("scenario")
    if sc:
        shape = "x".join(str(n) for n in sc["input_shape"])
        cut = " (captured input, spatial axes cut)" if sc["cropped"] else " (captured input)"
        lines.append(f"  one-layer scenario, input {shape}{cut}, A's state and configuration, "
                     f"B's constructor values:")
        for fid, f in sc["frameworks"].items():
            sw = ", ".join(f"{k}={v}" for k, v in f["switches"].items())
            sw = sw or ("the reference" if not f["unexplained"] else "no switch")
            un = f" ({f['unexplained']} row(s) unexplained)" if f["unexplained"] else ""
            lines.append(f"    {fid}: reproduced by {sw}{un}")
        for name, v in sc["expected"].items():
            lines.append(f"    {name}: A {v['a']}, B {v['b']} (framework arithmetic: expected)")
    verdict = ("named: the port differs at this layer (fix it there)" if report.explained else
               "unexplained: no state, configuration or switch accounts for it")
    lines.append(f"  {verdict}")
    return lines


def report_text(report: PerLayerReport) -> str:
    body = rows(report)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(HEAD)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [f"a = {report.a}, b = {report.b}, per-layer tolerance k = {report.k:g} eps(float32) "
           "x max|A| (~: expected difference, ✗: differs)", fmt.format(*HEAD).rstrip()]
    out += [fmt.format(*r).rstrip() for r in body]
    out += [*report.notes, *cause_lines(report)]
    if report.seconds is not None:
        out.append(f"captured, compared and explained in {report.seconds:.1f} s")
    return "\n".join(out) + "\n"


def report_markdown(report: PerLayerReport) -> str:
    out = [f"# Per-layer verification: {report.a} vs {report.b}", "",
           "| " + " | ".join(HEAD) + " |", "|" + " --- |" * len(HEAD)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows(report)]
    out += ["", "```", *cause_lines(report), "```", ""]
    return "\n".join(out)
