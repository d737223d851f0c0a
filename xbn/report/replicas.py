"""The "Cross-replica BatchNorm" section: per framework, the engine it ran replicas on, what it
declares about synchronization, weighting, Bessel's count and read-back (the four replica
switches of its profile, ``xbn.profiles.facts``), and what really happened in each replicated
scenario of the report (its rows' verdicts and explanations).

The section's data, part of the report's view (``view.py``): the declared values are read
from the profiles (data), the outcomes from the report's finished diff table; nothing here
runs a framework or searches an explanation. The section exists only when the report has a
scenario with replicas (``replica_section`` returns None otherwise). Its cells are text with
switch values marked as code by backticks, the one form every format starts from: the JSON
and the terminal keep them, Markdown shows them as code, the HTML page as ``<code>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from ..frameworks.devices import base_id
from ..reference.semantics import REPLICA_SWITCHES

if TYPE_CHECKING:
    from ..analysis.model import Report

TITLE = "Cross-replica BatchNorm"
INTRO = ("What each framework does when a BatchNorm runs data parallel on its own distributed "
         "engine: the statistics a replica normalizes with when synchronized and when not, the "
         "count of Bessel's correction for the running variance, and what the host reads back "
         "when every replica holds its own copy of the running statistics. The four middle "
         "columns are each framework's declared profile (`xbn explain ID` gives the source of "
         "each value); the last ones say what happened in each scenario with replicas: same as "
         "the reference, explained by the named switches, a known divergence, n/a or an error.")

# Plain words for every value of the replica switches (xbn.reference.semantics.SWITCH_VALUES)
WORDS: dict[str, dict[object, str]] = {
    "synchronized_statistics": {
        "global": "count-weighted over all replicas",
        "equal_weight": "mean of the replicas' moments",
        "local": "its own rows (the flag is ignored)",
        "error": "refused: the framework's own error"},
    "unsynchronized_statistics": {
        "local": "its own rows",
        "global": "the global batch (one program over the sharded batch)",
        "error": "refused: no data parallelism"},
    "replica_variance_count": {
        "global": "all replicas' rows",
        "local": "the replica's own rows"},
    "replica_readback": {
        "first_replica": "replica 0's copy",
        "mean_of_replicas": "mean of the copies",
        "broadcast_from_first": "rank 0's buffers broadcast before each forward",
        "global": "one copy"},
}
HEADERS = {"synchronized_statistics": "synchronized statistics",
           "unsynchronized_statistics": "unsynchronized statistics",
           "replica_variance_count": "running-variance count (Bessel)",
           "replica_readback": "read-back"}
# words in a framework's notes that name its distributed engine (xbn/adapters/*/replicas*.py)
ENGINE_MARKS = ("replicas:", "MirroredStrategy", "DataParallel", "shard_map", "pmap",
                "NamedSharding", "torch.distributed")
CUT = 180  # characters of a message (an error's, an n/a's reason) kept in a cell


@dataclass
class ReplicaSection:
    """The section's table: ``rows`` are dicts keyed by ``columns`` (cells as text, switch
    values in backticks)."""

    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)
    scenarios: list[str] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)


def _cut(text: str, width: int = CUT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _segments(note: str) -> list[str]:
    """A note cut at the commas and semicolons outside parentheses and brackets."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(note):
        depth += (ch in "([") - (ch in ")]")
        if depth == 0 and ch in ",;":
            out.append(note[start:i])
            start = i + 1
    out.append(note[start:])
    return [s.strip() for s in out if s.strip()]


def engine(notes: list[str] | None) -> str:
    """The distributed engine as the adapters' notes name it ('—' when no note does). A
    worker's notes repeat the engine once per replicated layer (synchronized or not, other
    rows): each distinct part is kept once, in the order of first appearance."""
    parts: list[str] = []
    for note in notes or []:
        if any(mark in note for mark in ENGINE_MARKS):
            note = re.sub(r"^[\w@-]* ?replicas: ", "", note)
            note = re.sub(r" \(rows \[[^\]]*\]\)", "", note)  # the split: the scenario's
            parts += _segments(note)
    return ", ".join(dict.fromkeys(parts)) or "—"


def declared(framework_id: str) -> dict[str, str]:
    """The four replica switches of a framework's profile, in words with the value in code
    font; the Bessel count says when the running variance is biased (no count used)."""
    from ..profiles.facts import PROFILES

    profile = PROFILES.get(base_id(framework_id))
    if profile is None:
        return {sw: "—" for sw in REPLICA_SWITCHES}
    out = {}
    for sw in REPLICA_SWITCHES:
        value = profile[sw].value
        words = WORDS[sw].get(value, str(value))
        out[sw] = f"{words} (`{value}`)"
    variance = profile["variance_update"].value
    count = "replica_variance_count"
    if variance == "biased":
        out[count] = f"none: the running variance is biased (`variance_update={variance}`)"
    elif variance == "fused":  # unbiased only on the fused 4-D/5-D path (xbn.reference.semantics)
        out[count] = (f"{out[count]} on the fused 4-D/5-D path, the only unbiased one "
                      f"(`variance_update={variance}`); elsewhere none (biased)")
    return out


def _text(v) -> str:
    return v if isinstance(v, str) and v and v != "NaN" else ""


def _switches(explanation: str) -> str:
    """The switches an explanation names (``a=b, c=d``, xbn.explain.search.describe) in code font,
    with what qualifies them (a rounding bound, a partial reproduction); other text cut."""
    head = re.split(r" \(bit-exact\)|: within|; partial:", explanation)[0]
    parts = [p.strip() for p in head.split(",")]
    if not all(re.fullmatch(r"[a-z_]+=[\w.+-]+", p) for p in parts):
        return _cut(explanation)
    text = ", ".join(f"`{p}`" for p in parts)
    if ": within" in explanation:
        text += " within a rounding bound"
    partial = re.search(r"; partial: (reproduces \d+ of \d+ rows)", explanation)
    return text + (f" ({partial.group(1)})" if partial else "")


def outcome(rows: pd.DataFrame) -> str:
    """One cell: what a framework's rows in one scenario say, worst first (error, differs,
    n/a), each distinct explanation once."""
    if rows.empty:
        return "—"
    verdicts = set(rows["verdict"])
    if verdicts == {"same"}:
        return "same"
    out: list[str] = []
    for verdict in ("error", "differs", "n/a"):
        part = rows[rows["verdict"] == verdict]
        for r in part.drop_duplicates(["explanation", "message"]).itertuples(index=False):
            why, message = _text(r.explanation), _text(r.message)
            message = message.removeprefix("layer not built: ")
            said = f": {_cut(message)}" if message else ""
            if why.startswith("known divergence"):
                text = "known divergence" + said
            elif verdict == "error":
                switches = _switches(why) if why else ""
                text = (f"error as declared ({switches})" if "`" in switches else "error") + said
            elif verdict == "n/a":
                text = f"n/a: {_cut(message or why)}"
            elif why.startswith("unexplained") or not why:
                text = "differs, unexplained"
            else:
                text = f"explained by {_switches(why)}"
            if not any(o.startswith(text) for o in out):  # 'known divergence' said once
                out.append(text)
    return "; ".join(_merge_explained(out))


def _merge_explained(parts: list[str]) -> list[str]:
    """Each row's explanation names the switches that have acted by its step, so one scenario
    gives several "explained by" parts that repeat switches: one part naming each switch once,
    in order of first appearance (qualified parts, bounds or partial, stay as they are)."""
    plain = [p for p in parts if p.startswith("explained by `") and
             re.fullmatch(r"explained by (`[^`]+`(, )?)+", p)]
    if len(plain) < 2:
        return parts
    switches = list(dict.fromkeys(s for p in plain for s in re.findall(r"`[^`]+`", p)))
    merged = "explained by " + ", ".join(switches)
    out = []
    for p in parts:
        if p in plain:
            if merged not in out:
                out.append(merged)
        else:
            out.append(p)
    return out


def replica_section(report: Report) -> ReplicaSection | None:
    """The section of a report, or None when none of its scenarios has replicas."""
    names = [s.name for s in report.scenarios if getattr(s.layer, "replicas", None)]
    if not names:
        return None
    columns = ["framework", "engine", *(HEADERS[sw] for sw in REPLICA_SWITCHES), *names]
    section = ReplicaSection(columns, scenarios=names)
    d = report.diffs
    order = [report.reference, *[f for f in report.frameworks if f != report.reference]]
    for fid in order:
        meta = report.frameworks.get(fid, {})
        row = {"framework": fid, "engine": engine(meta.get("notes"))}
        if row["engine"] == "—" and base_id(fid) == "numpy":
            row["engine"] = "none: xbn's float64 model of the switches (xbn/reference/replicas.py)"
        row.update({HEADERS[sw]: text for sw, text in declared(fid).items()})
        for name in names:
            if fid == report.reference:
                row[name] = "reference"
            elif meta and not meta.get("available", True):
                row[name] = "unavailable"
            else:
                row[name] = outcome(d[(d["scenario"] == name) & (d["framework"] == fid)])
        section.rows.append(row)
    return section
