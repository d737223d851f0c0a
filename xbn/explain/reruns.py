"""The one way to run the reference under a setting, for every package that asks "what would
the reference give if its switches were these?": the explanation search, the upgrade guard's
explanations, the fuzzer's verdicts and the version matrix.

A ``Setting`` is a mapping of switch names (fields of ``xbn.reference.semantics.Semantics``)
to values, the change from the reference's defaults; ``{}`` is the reference itself. Far-off
settings divide by zero or take roots of negative variances: those are answers ("this does not
reproduce it"), not news, so numpy's warnings are silenced while the reference runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import fields

import numpy as np

from ..adapters.base import run_scenario
from ..adapters.numpy.adapter import NumpyAdapter
from ..comparison.diffs import row_at
from ..reference.batchnorm import Semantics
from ..scenario.loader import Scenario

Setting = Mapping[str, object]
"""Switch name -> value: a change to the reference's default semantics."""


def rerun(scenario: Scenario, setting: Setting | None = None) -> Iterator[dict]:
    """The reference's observations of ``scenario`` under ``setting``, one at a time, computed
    only as far as the caller reads them (numpy's warnings silenced while each is computed)."""
    adapter = NumpyAdapter("numpy", Semantics().with_(**dict(setting or {})))
    source = run_scenario(adapter, scenario)
    while True:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            o = next(source, None)
        if o is None:
            return
        yield o


def rerun_rows(scenario: Scenario, setting: Setting | None = None) -> dict[tuple, dict]:
    """Every observation of ``rerun``, by row (``comparison.row_at``: step, quantity[, rep])."""
    return {row_at(o): o for o in rerun(scenario, setting)}


def setting_of(semantics: Semantics) -> dict[str, object]:
    """The setting that turns the default semantics into ``semantics``."""
    base = Semantics()
    return {f.name: getattr(semantics, f.name) for f in fields(semantics)
            if getattr(base, f.name) != getattr(semantics, f.name)}


class LazyRun:
    """One rerun of the reference, advanced only as far as rows are asked for. Most candidate
    settings miss a framework's row at the first step; a search that stops there never runs
    the thousand updates after it (the rerun that dominated ``xbn run``'s analysis time).
    Rows come in step order, so a row is absent once a later step (or the end) is reached."""

    def __init__(self, observations):
        self._source, self._rows, self._last = observations, {}, None

    def _advance(self) -> bool:
        o = next(self._source, None)
        if o is None:
            self._source = iter(())
            return False
        self._rows[row_at(o)] = o
        self._last = o["step"]
        return True

    def get(self, row: tuple) -> dict | None:
        while row not in self._rows and (self._last is None or self._last <= row[0]):
            if not self._advance():
                break
        return self._rows.get(row)

    def full(self) -> dict:
        while self._advance():
            pass
        return self._rows


def setting_key(change: Setting) -> tuple:
    """A cache key: the setting without the entries that are the reference's defaults."""
    base = Semantics()
    return tuple(sorted((k, v) for k, v in change.items() if getattr(base, k) != v))


def describe(change: Setting, exact: bool = False) -> str:
    """``name=value, ...`` as explanations print a setting; `` (bit-exact)`` when it
    reproduces the row to the last bit."""
    text = ", ".join(f"{k}={format_value(v)}" for k, v in change.items())
    return text + (" (bit-exact)" if exact else "")


def format_value(value) -> str:
    """A switch value as the explanations write it (booleans in lower case, as in TOML)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
