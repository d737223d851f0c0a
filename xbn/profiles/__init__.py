"""What each framework does, as data with sources: its value for every switch of the
reference (``facts``: ``PROFILES``, ``semantics_of``), the exceptions it raises where a switch
value refuses a step (``refusals``), and the known divergences users should not be alarmed by
(``divergences``, from ``divergences.toml``). ``edges`` and ``replicas`` hold the additions'
facts, merged into the tables of ``facts`` and ``refusals``.
"""

from __future__ import annotations

from .divergences import known_divergence, known_divergences, parse_divergences
from .facts import PROFILES, Fact, differences, profile_fact, profile_matrix, semantics_of
from .refusals import ERRORS, REFUSING, Raises, error_mismatch, error_problems

__all__ = ["differences", "error_mismatch", "error_problems", "ERRORS", "Fact", "known_divergence",
           "known_divergences", "parse_divergences", "profile_fact", "profile_matrix", "PROFILES",
           "Raises", "REFUSING", "semantics_of"]
