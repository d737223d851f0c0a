"""The scenario language: one layer, named inputs, and steps every framework runs identically.

``model`` holds the plain data (``Scenario``, ``Layer``, ``Step``, layouts, quantities),
``loader`` reads and strictly checks a TOML/JSON file (``load``, ``parse``; every error names
the file, the step and the key), ``steps`` parses each op with a small function of its own,
``additions`` and ``ddp`` the keys beyond the basics, and ``observation`` what a run records
(the typed ``Observation`` row, its statuses, and the one table of what each op records).
"""

from __future__ import annotations

from .loader import ScenarioError, builtin_paths, load, parse, resolve
from .model import Layer, Optimizer, Scenario, Step, channel_axis
from .observation import ERROR, NOT_APPLICABLE, OK, RECORDS, Observation, Status

__all__ = ["ERROR", "NOT_APPLICABLE", "OK", "RECORDS", "Layer", "Observation", "Optimizer",
           "Scenario", "ScenarioError", "Status", "Step", "builtin_paths", "channel_axis", "load",
           "parse", "resolve"]
