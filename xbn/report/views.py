"""Views of observations and diffs for the writers: value texts (short or whole), the column
order every format shares, the side-by-side grid of one scenario, numbered messages, and the
"only what differs" subset. Pure formatting: nothing here computes a verdict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..comparison.diffs import QUANTITY_ORDER, REP, row_at
from ..scenario.loader import STATE_QUANTITIES

MARK = {"same": "", "differs": " ✗", "error": "", "n/a": ""}


def _number(v: float, digits: int) -> str:
    return f"{v:.{digits}g}"


def summarize(value, dtype: str | None = None, digits: int = 8, full: bool = False) -> str:
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


def is_cut(value) -> bool:
    """Whether ``summarize`` shortens this value (more than three elements)."""
    return value is not None and np.asarray(value).size > 3


def column_order(report) -> list[str]:
    """The columns of every side-by-side table, in every format: the reference, the other
    frameworks in run order (the order of ``--frameworks``, or the registry's), 'expected'."""
    return [report.reference, *[f for f in report.frameworks if f != report.reference],
            "expected"]


def framework_order(report) -> list[str]:
    """``column_order`` without 'expected': the frameworks a report has results for."""
    return [f for f in column_order(report) if f != "expected"]


def framework_lines(report) -> list[str]:
    """One line per framework: version and notes, its worker's error, or how to install it."""
    lines = []
    for fid, meta in report.frameworks.items():
        if meta.get("available"):
            extra = f" ({'; '.join(meta['notes'])})" if meta.get("notes") else ""
            err = f" — {meta['error']}" if meta.get("error") else ""
            lines.append(f"{fid} {meta.get('version') or ''}{extra}{err}")
        elif meta.get("reason"):  # an absent device (ID@DEVICE)
            lines.append(f"{fid}: unavailable ({meta['reason']})")
        else:
            lines.append(f"{fid}: unavailable (pip install \"xbn[{meta.get('extra')}]\")")
    return lines


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


class Footnotes:
    """Numbers for the messages of error and n/a cells: a table cell says ``error [2]`` and
    the message is printed once below the table, whichever frameworks and steps share it."""

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

    def lines(self, width: int | None = None) -> list[str]:
        """'[n] frameworks: message', cut to ``width`` characters unless it is None."""
        out = []
        for message, n in self._keys.items():
            line = f"[{n}] {', '.join(self._frameworks[message])}: {' '.join(message.split())}"
            out.append(line if width is None or len(line) <= width else line[:width - 1] + "…")
        return out

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


def side_by_side(obs: pd.DataFrame, diffs: pd.DataFrame, scenario: str,
                 frameworks: list[str] | None = None, notes: Footnotes | None = None,
                 full: bool = False) -> pd.DataFrame:
    """Values of every framework next to each other for one scenario, with verdict marks;
    columns in ``frameworks`` order (``column_order``)."""
    grid = cell_grid(obs, diffs, scenario)
    cols = frameworks or list(dict.fromkeys(f for cells in grid.values() for f in cells))
    rows = [{f: cell_text(c, f, notes, full) for f, c in cells.items()} for cells in grid.values()]
    names = ["step", "op", "quantity"] if all(len(k) == 3 for k in grid) else \
        ["step", REP, "op", "quantity"]
    index = pd.MultiIndex.from_tuples(list(grid), names=names)
    frame = pd.DataFrame(rows, index=index)
    return frame.reindex(columns=[c for c in cols if c in frame.columns]).fillna("")


def measure_text(v) -> str:
    """A max_abs or max_ulp for a table: '' when missing, whole numbers without a point."""
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.3g}"


def published_explanation(r) -> str:
    """The explanation of a published value ("expected" row), led by its source."""
    return f"published ({r.message}); {r.explanation}"


def _text(v) -> str:
    return v if isinstance(v, str) and v != "NaN" else ""


def differences(report, scenario: str) -> pd.DataFrame:
    """The rows of one scenario that differ, err or are n/a (an n/a that repeats one reason
    for every step is kept once), sorted by step, rep, quantity and ``column_order``;
    explanation and message as text ('' when missing); a ``rep`` column where it is traced."""
    d = report.diffs[(report.diffs["scenario"] == scenario)
                     & report.diffs["verdict"].isin(["differs", "error", "n/a"])]
    d = d.assign(explanation=d["explanation"].map(_text), message=d["message"].map(_text))
    na = d[d["verdict"] == "n/a"].drop_duplicates(["framework", "explanation", "message"])
    d = pd.concat([d[d["verdict"] != "n/a"], na])
    order = {f: i for i, f in enumerate(column_order(report))}
    quantities = {q: i for i, q in enumerate(QUANTITY_ORDER)}
    reps = traced(d)
    d = d.assign(_order=d["framework"].map(lambda f: order.get(f, len(order))),
                 _q=d["quantity"].map(lambda q: quantities.get(q, len(quantities))),
                 _r=[-1 if r is None or pd.isna(r) else r for r in d[REP]] if reps else 0)
    d = d.sort_values(["step", "_r", "_q", "_order"], kind="stable")
    if reps:
        d[REP] = ["" if r is None or pd.isna(r) else int(r) for r in d[REP]]
    return d[["step", *([REP] if reps else []), "quantity", "framework", "verdict", "max_abs",
              "max_ulp", "explanation", "message"]].reset_index(drop=True)


def verdict_counts(report) -> pd.DataFrame:
    """Verdict counts per framework (rows in ``framework_order``)."""
    d = report.diffs[report.diffs["framework"] != "expected"]
    counts = d.groupby(["framework", "verdict"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["same", "differs", "error", "n/a"], fill_value=0)
    order = [f for f in framework_order(report) if f in counts.index]
    return counts.reindex(order + [f for f in counts.index if f not in order])


ONLY_DIFFS_NOTE = ("only what differs (--only-diffs): rows where some framework differs, "
                   "errs or is n/a, and the scenarios that have one")


def only_diffs(report):
    """The report restricted to (scenario, step, quantity) rows where some verdict is not
    'same', and to the scenarios that have such a row."""
    d = report.diffs
    keys = {(r.scenario, *row_at(r)) for r in d[d["verdict"] != "same"].itertuples(index=False)}

    def keep(frame: pd.DataFrame) -> pd.Series:
        return pd.Series([(r.scenario, *row_at(r)) in keys
                          for r in frame.itertuples(index=False)],
                         index=frame.index, dtype=bool)

    names = {k[0] for k in keys}
    drift = report.drift
    if drift is not None:
        drift = drift[drift["scenario"].isin(names)]
    return dataclasses.replace(
        report, obs=report.obs[keep(report.obs)], diffs=d[keep(d)], drift=drift,
        scenarios=[s for s in report.scenarios if s.name in names],
        notes=[*report.notes, ONLY_DIFFS_NOTE])
