"""Strict JSON for every file xbn writes: non-finite floats as the strings "NaN", "Infinity"
and "-Infinity", and readers that refuse the bare constants ``NaN``/``Infinity`` (which
Python's json module accepts but JSON does not).

A ground-floor module: it imports nothing from xbn, so the report writers, the snapshot format
and anything else can share it without an import cycle.
"""

from __future__ import annotations

import json
import math

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def clean(value):
    """A copy of ``value`` that strict JSON can hold: non-finite floats become "NaN",
    "Infinity", "-Infinity"; numpy scalars become Python numbers; lists and dicts are walked."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalar
        return clean(value.item())
    return value


def strict_dumps(value, **kwargs) -> str:
    """``json.dumps`` of ``clean(value)``, refusing anything that is not strict JSON."""
    return json.dumps(clean(value), allow_nan=False, **kwargs)


def reject_constant(name: str):
    """``parse_constant`` hook: a bare NaN/Infinity is an error, naming the string to write."""
    raise ValueError(f"{name} is not strict JSON (xbn writes it as the string \"{name}\")")


def strict_loads(text: str):
    """``json.loads`` that refuses the bare constants NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=reject_constant)


def review_dumps(value) -> str:
    """Strict JSON text laid out for review in a pull request: one line per record of scalars
    and arrays (an observation, a framework's versions) and per array, objects indented, so
    that a regenerated file's diff shows exactly the records that moved. Ends with a newline."""
    return _layout(clean(value), 0) + "\n"


def _flat(value) -> bool:
    """No object inside (an array, or a record of scalars and arrays): fits on one line."""
    if isinstance(value, dict):
        return all(_flat(v) and not isinstance(v, dict) for v in value.values())
    if isinstance(value, list):
        return all(_flat(v) and not isinstance(v, dict) for v in value)
    return True


def _layout(value, level: int) -> str:
    if not isinstance(value, (dict, list)) or not value or \
            (isinstance(value, list) and _flat(value)):
        return json.dumps(value, allow_nan=False)
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(value, list):
        items = [json.dumps(v, allow_nan=False) if _flat(v) else _layout(v, level + 1)
                 for v in value]
        return "[\n" + ",\n".join(inner + i for i in items) + "\n" + pad + "]"
    items = [f"{json.dumps(k)}: {_layout(v, level + 1)}" for k, v in value.items()]
    return "{\n" + ",\n".join(inner + i for i in items) + "\n" + pad + "}"
