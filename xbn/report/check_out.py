"""Writers for ``xbn check``: a terminal table, Markdown (for a CI job summary or a pull-request
comment), JSON with the full values, and JUnit XML (one test case per scenario x framework,
so CI systems list which combination changed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .._version import __version__
from ..common.jsonio import review_dumps
from ..guard.check import Change, CheckResult
from .cells import summarize


def versions_text(meta: dict | None) -> str:
    """'keras 3.15.1, tensorflow 2.21.0' from a framework's metadata."""
    if not meta:
        return "-"
    versions = meta.get("versions") or {}
    if versions:
        return ", ".join(f"{pkg} {v}" for pkg, v in versions.items())
    return meta.get("version") or "-"


def version_change(old: dict | None, new: dict | None) -> str:
    """Only the packages whose versions differ ('keras 3.0.4 -> 3.15.1'), or 'same (...)'."""
    o = (old or {}).get("versions") or {}
    n = (new or {}).get("versions") or {}
    if not o and not n:
        o = {"version": (old or {}).get("version")}
        n = {"version": (new or {}).get("version")}
    moved = [f"{pkg} {o.get(pkg) or '-'} -> {n.get(pkg) or '-'}"
             for pkg in dict.fromkeys([*o, *n]) if o.get(pkg) != n.get(pkg)]
    return ", ".join(moved) if moved else f"same ({versions_text(old)})"


def tolerance_text(k: float) -> str:
    return "exact (0 ULP)" if k == 0 else f"{k:g} eps(dtype) x the old array's scale"


def _cell(side: dict | None) -> str:
    """A short form of one side of a change: the value's head, or the status and message."""
    if side is None:
        return "(absent)"
    if side["status"] == "ok":
        return summarize(side["value"]) if side["value"] is not None else "ok"
    message = side.get("message") or ""
    return f"{side['status']}: {message[:60]}" if message else side["status"]


def _step(c: Change) -> str:
    """'3 call', or '3 call rep 2' for a traced step's repetition."""
    return f"{c.step} {c.op}" + ("" if c.rep is None else f" rep {c.rep}")


def _row(result: CheckResult, c: Change) -> list[str]:
    fw = result.frameworks[c.framework]
    return [c.scenario, _step(c), c.framework, c.quantity, _cell(c.old), _cell(c.new),
            version_change(fw.old, fw.new), c.explanation]


HEADERS = ["scenario", "step", "framework", "quantity", "old", "new", "versions", "explanation"]


def _headline(result: CheckResult) -> str:
    n = len(result.changes)
    verdict = (f"CHANGED: {n} of {result.compared} observations differ" if n
               else f"unchanged: {result.compared} observations")
    return f"{verdict} (tolerance: {tolerance_text(result.k)})"


def _framework_lines(result: CheckResult) -> list[tuple[str, str, str]]:
    rows = []
    for fid, fw in result.frameworks.items():
        if fw.status == "checked":
            rows.append((fid, "checked", version_change(fw.old, fw.new)))
        else:
            rows.append((fid, "skipped", f"{fw.reason} (snapshot: {versions_text(fw.old)})"))
    return rows


def _aligned(rows: list[list[str]], headers: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    return ["  ".join([*(str(v).ljust(w) for v, w in zip(r[:-1], widths, strict=True)),
                       str(r[-1])]).rstrip() for r in [headers, *rows]]


def render_table(result: CheckResult) -> str:
    snap = result.snapshot
    out = [f"xbn check {snap.file}: {_headline(result)}",
           f"snapshot: xbn {snap.xbn_version}"
           + (f" on {snap.platform.get('system')} {snap.platform.get('machine')}"
              if snap.platform else "") + f"; now: xbn {__version__}", "frameworks:"]
    out += ["  " + line for line in _aligned([list(r) for r in _framework_lines(result)],
                                             ["id", "status", "versions (snapshot -> now)"])[1:]]
    if result.changes:
        out += ["", *_aligned([_row(result, c) for c in result.changes], HEADERS)]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(rows: list[list[str]], headers: list[str]) -> list[str]:
    return (["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(_md(v) for v in r) + " |" for r in rows])


def render_markdown(result: CheckResult) -> str:
    snap = result.snapshot
    mark = "❌ BatchNorm behaviour changed" if result.changed else "✅ BatchNorm behaviour unchanged"
    out = [f"## xbn check: {mark}", "",
           f"`{snap.file}`: {_headline(result)}. Snapshot made with xbn {snap.xbn_version}; "
           f"checked with xbn {__version__}.", ""]
    out += _md_table([list(r) for r in _framework_lines(result)],
                     ["framework", "status", "versions (snapshot → now)"]) + [""]
    if result.changes:
        out += _md_table([_row(result, c) for c in result.changes], HEADERS) + [""]
        out += ["Values: first elements, 8 significant digits; `xbn check --format json` has "
                "them in full.", ""]
    if result.warnings:
        out += [f"> warning: {w}" for w in result.warnings] + [""]
    return "\n".join(out)


def document(result: CheckResult) -> dict:
    snap = result.snapshot
    return {
        "kind": "xbn-check",
        "xbn_version": __version__,
        "snapshot": {"file": snap.file, "xbn_version": snap.xbn_version,
                     "platform": snap.platform},
        "tolerance_k": result.k,
        "verdict": "changed" if result.changed else "unchanged",
        "compared": result.compared,
        "frameworks": {fid: {"status": fw.status, "reason": fw.reason,
                             "snapshot": fw.old, "now": fw.new}
                       for fid, fw in result.frameworks.items()},
        "changes": [{"scenario": c.scenario, "step": c.step,
                     **({} if c.rep is None else {"rep": c.rep}), "op": c.op,
                     "framework": c.framework, "quantity": c.quantity, "kind": c.kind,
                     "old": c.old, "new": c.new, "max_abs": c.max_abs, "max_ulp": c.max_ulp,
                     "tolerance": c.tolerance,
                     "old_versions": versions_text(result.frameworks[c.framework].old),
                     "new_versions": versions_text(result.frameworks[c.framework].new),
                     "explanation": c.explanation}
                    for c in result.changes],
        "warnings": result.warnings,
    }


def render_json(result: CheckResult) -> str:
    return review_dumps(document(result))


def render(result: CheckResult, fmt: str) -> str:
    if fmt == "json":
        return render_json(result)
    if fmt == "markdown":
        return render_markdown(result)
    if fmt == "table":
        return render_table(result)
    raise ValueError(f"unknown format {fmt!r}")


def render_junit(result: CheckResult) -> str:
    """JUnit XML: a test case per scenario x framework; changed rows are its failure text."""
    by_case: dict[tuple[str, str], list[Change]] = {}
    for c in result.changes:
        by_case.setdefault((c.scenario, c.framework), []).append(c)
    failures = sum(1 for s, f, _ in result.cases if (s, f) in by_case)
    skipped = sum(1 for _, f, _ in result.cases if result.frameworks[f].status == "skipped")
    counts = {"tests": str(len(result.cases)), "failures": str(failures), "errors": "0",
              "skipped": str(skipped)}
    root = ET.Element("testsuites", {"name": "xbn check", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": f"xbn check {result.snapshot.file}",
                                              **counts})
    props = ET.SubElement(suite, "properties")
    for name, value in (("snapshot_xbn_version", result.snapshot.xbn_version),
                        ("xbn_version", __version__), ("tolerance", tolerance_text(result.k))):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for scenario, fid, n in result.cases:
        case = ET.SubElement(suite, "testcase", {"classname": f"xbn.{scenario}", "name": fid})
        fw = result.frameworks[fid]
        if fw.status == "skipped":
            ET.SubElement(case, "skipped", {"message": f"{fid} {fw.reason}"})
            continue
        rows = by_case.get((scenario, fid))
        if rows:
            fail = ET.SubElement(case, "failure", {
                "type": "xbn.changed",
                "message": f"{len(rows)} of {n} observations changed; versions: "
                           f"{version_change(fw.old, fw.new)}"})
            fail.text = "\n".join(
                f"step {_step(c)} {c.quantity}: {_cell(c.old)} -> {_cell(c.new)}; "
                f"{c.explanation}" for c in rows)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"
