"""The contract's JSON: metadata, every observation, every diff, and the cross-replica section
when there is one, from the report's view. Strict JSON, stable order."""

from __future__ import annotations

import math

from .._version import __version__
from ..common.jsonio import strict_dumps
from .replicas import ReplicaSection
from .view import ReportView

# Columns that hold data: a NaN there is a value, written "NaN" like the other non-finite
# numbers (strict JSON has none). Anywhere else a float NaN is how pandas marks an empty cell
# (a message, a dtype or a measure that does not exist), and is written null.
_DATA = ("value",)


def _records(frame) -> list[dict]:
    out = []
    for rec in frame.to_dict(orient="records"):
        for key, val in rec.items():
            if val is not None and not isinstance(val, (list, str, bool, int, float)) and \
                    hasattr(val, "item"):
                val = val.item()
            if key not in _DATA and isinstance(val, float) and math.isnan(val):
                val = None
            rec[key] = val
        if rec.get("rep", 0) is None:  # the contract: untraced observations have no rep
            del rec["rep"]
        if "max_ulp" in rec and isinstance(rec["max_ulp"], float) and math.isfinite(rec["max_ulp"]):
            rec["max_ulp"] = int(rec["max_ulp"])
        out.append(rec)
    return out


def records(section: ReplicaSection) -> dict:
    """The cross-replica section: its columns and rows (cell texts, switch values in
    backticks as in every format)."""
    return {"columns": section.columns, "rows": section.rows}


def document(view: ReportView) -> dict:
    """The JSON document of a report's view: its metadata and raw tables, whole."""
    frameworks = {fid: dict(meta) for fid, meta in view.metadata.items()}
    extra = {} if view.replicas is None else {"replicas": records(view.replicas)}
    return {
        "xbn_version": __version__,
        "schema": 1,
        "reference": view.header.reference,
        "tolerance_k": view.header.k,
        "frameworks": frameworks,
        "scenarios": [{"name": s.name, "title": s.title, "path": s.path, "sha256": s.digest}
                      for s in view.scenarios],
        "observations": _records(view.observations),
        "diffs": _records(view.diffs),
        **extra,  # the cross-replica section, only in a report with replicas
    }


def render(view: ReportView) -> str:
    """The JSON text of a report's view (strict JSON, stable order)."""
    return strict_dumps(document(view), indent=1) + "\n"
