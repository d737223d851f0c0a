"""Plain helpers with no BatchNorm knowledge: float dtypes and ULPs (``dtypes``), strict
loading of TOML/JSON with one-line errors naming file and key (``strict``), and JSON that
round-trips non-finite floats (``jsonio``). Everything above builds on them.
"""

from __future__ import annotations

from .dtypes import DTYPES, EPS, round_to, ulp_distance
from .jsonio import strict_dumps, strict_loads
from .strict import StrictError, read_text

__all__ = ["DTYPES", "EPS", "read_text", "round_to", "strict_dumps", "strict_loads", "StrictError",
           "ulp_distance"]
