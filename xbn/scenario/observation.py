"""What a run records: the observation row, its statuses, and which quantities each op records.

One observation is one quantity of one framework after one step (after one repetition of a
traced step). The driver (``xbn.adapters.base.run_scenario``) writes them, workers send them
as JSON lines, the result cache and snapshots store them, and the comparison turns them into
frames; they are declared once here so that each of those agrees on the keys and statuses.
At runtime an observation stays a plain dict (``Observation`` is a ``TypedDict``): it crosses
a process boundary as JSON and is read back as a dict, so a class would only add conversions.

``RECORDS`` is the one table of what a step of each op records besides the state: the loader
accepts an ``expect`` value only for those (or the state), and the driver records them, or a
``step`` row for an op that records no value. A ground-floor module: it imports nothing.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypedDict

# how a step went for one framework: it ran and recorded its value ("ok"); the framework cannot
# express it ("n/a": the adapter says why); or it raised ("error": the exception's message)
Status = Literal["ok", "n/a", "error"]
OK: Final = "ok"
NOT_APPLICABLE: Final = "n/a"
ERROR: Final = "error"
# in the order a snapshot's error message lists them ("must be one of ok, error, n/a")
STATUSES: tuple[Status, ...] = (OK, ERROR, NOT_APPLICABLE)

# the quantity of the one row an op that records no value leaves (set, set_weights, reset), so
# that every step says whether it ran; it never has a value
STEP: Final = "step"

# What a step of each op records besides the state (which every step records): the quantities
# an ``expect`` table may publish for that op, in the order the driver records them.
RECORDS: dict[str, tuple[str, ...]] = {
    "call": ("output",),
    "predict": ("output",),
    "set": (),
    "fit": ("loss",),
    "grad": ("output", "grad_input", "grad_gamma", "grad_beta"),
    "set_weights": (),
    "reset": (),
}


def primary_quantities(op: str) -> tuple[str, ...]:
    """What the driver always records for a step of ``op`` before the state, whatever happens
    (an error or n/a row stands in for each): its ``RECORDS``, or the ``step`` row."""
    return RECORDS[op] or (STEP,)


class _Recorded(TypedDict):
    """The keys every observation has."""

    scenario: str
    step: int  # the step's index in the scenario
    op: str
    framework: str  # the framework id (``ID@DEVICE`` off the CPU), or "expected"
    quantity: str  # one of ``xbn.scenario.model.QUANTITIES``, or ``STEP``
    status: Status
    value: Any  # ok: nested lists of floats (a float for the loss); None otherwise, and for STEP
    dtype: str | None  # the dtype the framework produced ``value`` in; None without a value
    message: str | None  # n/a: why; error: the exception; "expected": the published source


class Observation(_Recorded, total=False):
    """One observation, as the driver writes it; the optional keys are there only when set, so
    that runs which have none keep their bytes (reports, snapshots, the cache)."""

    rep: int  # a traced step's repetition, 0-based; an untraced row has no "rep"
    scale: float  # the magnitude of the terms behind ``value`` (the reference records it)
    origin: str | None  # error rows: where the exception came from (``xbn.adapters.errors``)


# The column order of observation tables (``xbn.comparison.diffs.COLUMNS``); ``REP`` goes after
# ``step`` where some row is traced (``with_rep``), and nowhere else, so untraced tables keep
# their columns.
FIELDS: tuple[str, ...] = ("scenario", "step", "op", "framework", "quantity", "status", "value",
                           "dtype", "message", "origin", "scale")
REP: Final = "rep"


def with_rep(columns: list[str]) -> list[str]:
    """``columns`` with ``rep`` after ``step``: a table's columns when some row is traced."""
    i = columns.index("step") + 1
    return [*columns[:i], REP, *columns[i:]]
