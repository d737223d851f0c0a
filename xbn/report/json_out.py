"""The contract's JSON: metadata, every observation, every diff. Strict JSON, stable order."""

from __future__ import annotations

import json
import math

from .. import __version__


def _clean(value):
    """Non-finite floats become the strings "NaN", "Infinity", "-Infinity" (strict JSON)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalar
        return _clean(value.item())
    return value


def _records(frame) -> list[dict]:
    out = []
    for rec in frame.to_dict(orient="records"):
        for key, val in rec.items():
            if isinstance(val, float) and math.isnan(val) and key in ("max_abs", "max_rel",
                                                                      "max_ulp", "tolerance"):
                rec[key] = None
            elif val is not None and not isinstance(val, (list, str, bool, int, float)) and \
                    hasattr(val, "item"):
                rec[key] = val.item()
        if "max_ulp" in rec and isinstance(rec["max_ulp"], float) and math.isfinite(rec["max_ulp"]):
            rec["max_ulp"] = int(rec["max_ulp"])
        out.append(rec)
    return out


def document(report) -> dict:
    frameworks = {fid: dict(meta) for fid, meta in report.result.frameworks.items()}
    return {
        "xbn_version": __version__,
        "schema": 1,
        "reference": report.reference,
        "tolerance_k": report.k,
        "frameworks": frameworks,
        "scenarios": [{"name": s.name, "title": s.title, "path": s.path, "sha256": s.digest}
                      for s in report.result.scenarios],
        "observations": _records(report.obs),
        "diffs": _records(report.diffs),
    }


def render(report) -> str:
    return json.dumps(_clean(document(report)), indent=1, allow_nan=False) + "\n"
