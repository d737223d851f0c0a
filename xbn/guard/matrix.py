"""Behaviour across versions: any number of snapshots (one per version set, e.g. one CI job of a
version matrix each) merged into one table per framework of the switch values each release
shows, and the release at which each changed (``xbn matrix``).

No framework is re-run: each snapshot's recorded observations are analysed as ``xbn run``
would, against xbn's float64 reference computed here (it imports no framework and takes
milliseconds; a snapshot does not record the magnitude of the terms behind each reference value,
the tolerance's floor, so without it gradients whose terms cancel would read as differences), and
a release "has" a switch value when an explanation of one of its rows names it. A release whose
rows all agree with the reference names none: it has the reference's values. Rows nothing
explains are counted, so a release with new, unexplained behaviour stands out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SETTING = re.compile(r"([a-z_]+)=([^,;:() ]+)")


@dataclass
class Release:
    """One framework at one version, from one snapshot."""

    framework: str
    version: str
    snapshot: str
    switches: dict[str, set[str]] = field(default_factory=dict)  # switch -> values named
    unexplained: int = 0
    rows: int = 0  # rows that differ from the reference or fail


def settings(explanation: str) -> list[tuple[str, str]]:
    """The switch=value pairs an explanation names (before any 'partial:' or bound text)."""
    if not explanation or explanation.startswith(("known divergence", "unexplained")):
        return []
    head = explanation.split(";")[0].split(": within")[0]
    return SETTING.findall(head)


def releases(snapshot, k: float | None = None) -> list[Release]:
    """Each framework of one snapshot (numpy, the reference, left out) as a ``Release``."""
    import pandas as pd

    from ..analysis.pipeline import analyze
    from ..comparison.diffs import DEFAULT_K
    from ..execution.runner import RunResult
    from ..explain.reruns import rerun

    reference = [o for s in snapshot.scenarios for o in rerun(s)]
    observations = [o for o in snapshot.observations if o["framework"] != "numpy"] + reference
    result = RunResult(observations, snapshot.frameworks, snapshot.scenarios)
    diffs = analyze(result, "numpy", DEFAULT_K if k is None else k).diffs
    out = {}
    for fid, meta in snapshot.frameworks.items():
        if fid == "numpy" or not meta.get("available"):
            continue
        out[fid] = Release(fid, meta.get("version") or "?", snapshot.file)
    for r in diffs.itertuples(index=False):
        rel = out.get(r.framework)
        if rel is None or r.verdict not in ("differs", "error"):
            continue
        rel.rows += 1
        text = "" if pd.isna(r.explanation) else str(r.explanation)
        if text.startswith("unexplained"):
            rel.unexplained += 1
        for switch, value in settings(text):
            rel.switches.setdefault(switch, set()).add(value)
    return list(out.values())


def _order(version: str):
    try:
        from packaging.version import Version

        return (0, Version(version))
    except Exception:  # not a PEP 440 version: after the others, as given
        return (1, version)


def merge(snapshots: list, k: float | None = None) -> dict[str, list[Release]]:
    """Framework -> its releases in version order (one per snapshot that ran it)."""
    by_framework: dict[str, list[Release]] = {}
    for snap in snapshots:
        for rel in releases(snap, k):
            by_framework.setdefault(rel.framework, []).append(rel)
    return {fid: sorted(rels, key=lambda r: _order(r.version))
            for fid, rels in by_framework.items()}


def changes(rels: list[Release]) -> list[tuple[str, str, str, str]]:
    """(switch, release, before, after) wherever a switch's values differ from the release
    before ("-" where none of its rows named the switch: the reference's value)."""
    found = []
    for prev, cur in zip(rels, rels[1:], strict=False):
        for switch in sorted(set(prev.switches) | set(cur.switches)):
            a = ",".join(sorted(prev.switches.get(switch, ()))) or "-"
            b = ",".join(sorted(cur.switches.get(switch, ()))) or "-"
            if a != b:
                found.append((switch, cur.version, a, b))
    return found


def render_markdown(merged: dict[str, list[Release]]) -> str:
    """One section per framework: the switch values of each release, then what changed."""
    lines = ["# Behaviour across versions", "",
             "Switch values the explanations name for each release (`-`: none of its rows "
             "names the switch, i.e. the reference's value), from `xbn matrix`.", ""]
    for fid, rels in merged.items():
        switches = sorted({s for r in rels for s in r.switches})
        lines += [f"## {fid}", "", "| release | " + " | ".join(switches + ["differing rows",
                                                                        "unexplained"]) + " |",
                  "|" + " --- |" * (len(switches) + 3)]
        for r in rels:
            cells = [",".join(sorted(r.switches.get(s, ()))) or "-" for s in switches]
            lines.append(f"| {r.version} | " + " | ".join(cells + [str(r.rows),
                                                                   str(r.unexplained)]) + " |")
        moved = changes(rels)
        lines.append("")
        lines += [f"- `{s}` changed at {v}: {a} -> {b}" for s, v, a, b in moved] or \
            ["- no switch value changed between these releases"]
        lines.append("")
    return "\n".join(lines)


def to_json(merged: dict[str, list[Release]]) -> dict:
    return {fid: {"releases": [{"version": r.version, "snapshot": r.snapshot,
                                "switches": {s: sorted(v) for s, v in sorted(r.switches.items())},
                                "differing_rows": r.rows, "unexplained": r.unexplained}
                               for r in rels],
                  "changes": [{"switch": s, "at": v, "before": a, "after": b}
                              for s, v, a, b in changes(rels)]}
            for fid, rels in merged.items()}
