"""A scenario's values as the report shows them: the text of a value (short or whole), the
grid of cells (one per framework, step and quantity, each with its verdict), the numbered
messages of error and n/a cells, and the grid as a frame of cell texts.

The view (``view.py``) builds these once per report; the renderers only lay them out. Nothing
here computes a verdict: the cells carry the verdicts of the report's finished diff table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..comparison.diffs import REP, row_at
from ..scenario.loader import STATE_QUANTITIES

MARK = {"same": "", "differs": " ✗", "error": "", "n/a": ""}
"""What a value's text carries after it for its verdict: only a difference is marked."""


def _number(v: float, digits: int) -> str:
    return f"{v:.{digits}g}"


def summarize(value: Any, dtype: str | None = None, digits: int = 8, full: bool = False) -> str:
    """Text for a value in tables: all of a small array, the head of a big one with its size
    (``… (16)``), or with ``full`` every element in its nesting, on one line."""
    if value is None:
        return ""
    arr = np.asarray(value, dtype=np.float64)
    flat = arr.ravel()
    if flat.size == 1:
        return _number(flat[0], digits)
    if full:
        text = np.array2string(arr, separator=", ", threshold=arr.size + 1,
                               max_line_width=10**9,
                               formatter={"float_kind": lambda v: _number(v, digits)})
        return text.replace("\n", "")  # rows of a 2-D array: one line, nesting kept
    if flat.size <= 3:
        return "[" + ", ".join(_number(v, digits) for v in flat) + "]"
    return "[" + ", ".join(_number(v, digits) for v in flat[:2]) + f", … ({flat.size})]"


def is_cut(value: Any) -> bool:
    """Whether ``summarize`` shortens this value (more than three elements)."""
    return value is not None and np.asarray(value).size > 3


def measure_text(v: Any) -> str:
    """A max_abs or max_ulp for a table: '' when missing, whole numbers without a point."""
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.3g}"


@dataclass(frozen=True)
class Cell:
    """One framework's observation of one quantity at one step, with its verdict ('' for the
    reference itself)."""

    status: str
    value: Any
    message: str | None
    verdict: str

    def short(self) -> str:
        return summarize(self.value) if self.status == "ok" else self.status


def _message(value) -> str | None:
    return value if isinstance(value, str) and value and value != "NaN" else None


Grid = dict[tuple, dict[str, Cell]]
"""(step, op, quantity), or (step, rep, op, quantity) in a traced scenario -> framework -> Cell."""


def traced(frame: pd.DataFrame) -> bool:
    """Whether some row of ``frame`` records a traced step's repetition: only then do the
    tables show a ``rep`` column."""
    return REP in frame.columns and bool(frame[REP].notna().any())


def cell_grid(obs: pd.DataFrame, diffs: pd.DataFrame, scenario: str) -> Grid:
    """(step, op, quantity) -> framework -> Cell for one scenario, in observation order, or
    (step, rep, op, quantity) when it has a traced step (rep '' elsewhere); a state row is
    kept only at its first step and where some framework's value changed."""
    o = obs[obs["scenario"] == scenario]
    d = diffs[diffs["scenario"] == scenario]
    verdict = {(*row_at(r), r.framework): r.verdict for r in d.itertuples(index=False)}
    reps = traced(o)
    grid: Grid = {}
    for r in o.itertuples(index=False):
        if r.quantity == "step" and r.status == "ok":
            continue
        at = row_at(r)
        cell = Cell(r.status, r.value if r.status == "ok" else None, _message(r.message),
                    verdict.get((*at, r.framework), ""))
        key = (r.step, at[2] if len(at) > 2 else "", r.op, r.quantity) if reps else \
            (r.step, r.op, r.quantity)
        grid.setdefault(key, {})[r.framework] = cell
    return _drop_unchanged_state(grid)


def _drop_unchanged_state(grid: Grid) -> Grid:
    """Keep a state row only at step 0 and where some framework's shown value changed."""
    last: dict[str, dict] = {}
    kept: Grid = {}
    for key, cells in grid.items():
        quantity = key[-1]
        if quantity in STATE_QUANTITIES:
            shown = {f: (c.short(), c.verdict) for f, c in cells.items() if f != "expected"}
            if last.get(quantity) == shown and "expected" not in cells:
                continue
            last[quantity] = shown
        kept[key] = cells
    return kept


@dataclass(frozen=True)
class Footnote:
    """One numbered message and the frameworks that gave it."""

    number: int
    frameworks: tuple[str, ...]
    message: str

    def line(self, width: int | None = None) -> str:
        """'[n] frameworks: message' on one line, cut to ``width`` characters unless None."""
        line = f"[{self.number}] {', '.join(self.frameworks)}: {' '.join(self.message.split())}"
        return line if width is None or len(line) <= width else line[:width - 1] + "…"


class Footnotes:
    """Numbers for the messages of error and n/a cells: a table cell says ``error [2]`` and
    the message is printed once below the table, whichever frameworks and steps share it.
    Numbers follow first use, so the view numbers the cells first, then the differences."""

    def __init__(self) -> None:
        self._keys: dict[str, int] = {}
        self._frameworks: dict[str, list[str]] = {}

    def key(self, framework: str, message: str) -> int:
        n = self._keys.setdefault(message, len(self._keys) + 1)
        fws = self._frameworks.setdefault(message, [])
        if framework not in fws:
            fws.append(framework)
        return n

    def __bool__(self) -> bool:
        return bool(self._keys)

    def entries(self) -> tuple[Footnote, ...]:
        """The messages in number order, frozen for the view."""
        return tuple(Footnote(n, tuple(self._frameworks[m]), m) for m, n in self._keys.items())

    def lines(self, width: int | None = None) -> list[str]:
        """'[n] frameworks: message', cut to ``width`` characters unless it is None."""
        return [note.line(width) for note in self.entries()]

    def cut(self, width: int | None) -> bool:
        return width is not None and any(len(line) > width for line in self.lines())


def cell_text(cell: Cell, framework: str, notes: Footnotes | None, full: bool = False) -> str:
    """A cell as text: the value with a ✗ when it differs, or the status with its message's
    footnote number."""
    if cell.status == "ok":
        return summarize(cell.value, full=full) + MARK.get(cell.verdict, "")
    if cell.message and notes is not None:
        return f"{cell.status} [{notes.key(framework, cell.message)}]"
    return cell.status


def present(grid: Grid, order: list[str]) -> list[str]:
    """The columns of ``order`` that some cell of the grid has, in that order."""
    frameworks = {f for cells in grid.values() for f in cells}
    return [c for c in order if c in frameworks]


def grid_texts(grid: Grid, columns: list[str], notes: Footnotes | None = None,
               full: bool = False) -> pd.DataFrame:
    """The grid as a frame of cell texts (values side by side, verdict marks, footnote numbers
    taken from ``notes`` in cell order), indexed by (step, [rep,] op, quantity); ``columns``
    in their order (``present``), '' where a framework has no value."""
    rows = [{f: cell_text(c, f, notes, full) for f, c in cells.items()} for cells in grid.values()]
    names = ["step", "op", "quantity"] if all(len(k) == 3 for k in grid) else \
        ["step", REP, "op", "quantity"]
    index = pd.MultiIndex.from_tuples(list(grid), names=names)
    frame = pd.DataFrame(rows, index=index)
    return frame.reindex(columns=[c for c in columns if c in frame.columns]).fillna("")
