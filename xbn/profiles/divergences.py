"""Known divergences as data (``xbn/profiles/divergences.toml``): rows a framework gets wrong
on purpose or by a reported bug, each with a reason and a link, which the explanations and the
fuzzer leave quiet.
"""

from __future__ import annotations

from fnmatch import fnmatch
from functools import cache
from pathlib import Path

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from ..common.dtypes import DTYPES
from ..frameworks import registry
from ..scenario.loader import OPS, QUANTITIES

DIVERGENCES = Path(__file__).parent / "divergences.toml"
_DIVERGENCE_KEYS = ("framework", "scenario", "dtype", "op", "quantity", "reason", "link")
_REQUIRED = ("framework", "quantity", "reason", "link")


def parse_divergences(text: str, source: str = "xbn/profiles/divergences.toml") -> tuple[dict, ...]:
    """Known divergences from TOML text, checked: each names its framework, the quantities it
    covers (a name or a list), a reason and a link; ``scenario`` (a glob), ``dtype`` and ``op``
    narrow it. ``quantity``, ``dtype`` and ``op`` come back as tuples. Raises ValueError naming
    the entry and the key."""
    allowed = {"quantity": QUANTITIES, "dtype": DTYPES, "op": OPS}
    out = []
    for i, entry in enumerate(tomllib.loads(text).get("divergence", [])):
        where = f"{source}: divergence[{i}]"
        for key in entry:
            if key not in _DIVERGENCE_KEYS:
                raise ValueError(f"{where}.{key}: unknown key (keys: {', '.join(_DIVERGENCE_KEYS)})")
        for key in _REQUIRED:
            if not entry.get(key):
                raise ValueError(f"{where}: {key} is required")
        if entry["framework"] not in registry.FRAMEWORKS:
            raise ValueError(f"{where}.framework: unknown framework {entry['framework']!r}")
        d = dict(entry)
        for key, values in allowed.items():
            if key in d:
                d[key] = (d[key],) if isinstance(d[key], str) else tuple(d[key])
                bad = [v for v in d[key] if v not in values]
                if bad or not d[key]:
                    raise ValueError(f"{where}.{key}: {bad[0] if bad else 'empty'!r} is not one of "
                                     f"{', '.join(values)}")
        out.append(d)
    return tuple(out)


@cache
def known_divergences() -> tuple[dict, ...]:
    """Entries of xbn/profiles/divergences.toml (package data), checked by ``parse_divergences``."""
    return parse_divergences(DIVERGENCES.read_text(encoding="utf-8"))


def known_divergence(framework: str, scenario: str, dtype: str, quantity: str,
                     op: str | None = None) -> dict | None:
    """The known divergence that covers this row, if any. An entry that names ``op`` covers
    only rows whose op is given and is one of them."""
    for d in known_divergences():
        if d["framework"] != framework or not fnmatch(scenario, d.get("scenario", "*")):
            continue
        if "dtype" in d and dtype not in d["dtype"]:
            continue
        if quantity not in d["quantity"] or "op" in d and op not in d["op"]:
            continue
        return d
    return None
