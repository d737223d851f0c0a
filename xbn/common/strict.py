"""Strict reading of decoded TOML and JSON: one field checker and one error shape for every
file xbn reads (scenario files in ``xbn.scenario.loader``, snapshots in ``xbn.guard.snapshot``).

A defect stops the reading with one line: the file, where in it (a dotted path such as
``steps[2].optimizer.lr`` or ``observations[4].value``) and what is wrong. ``Fields`` does the
checking; each reader subclasses it to name its own error class and its own words (a TOML
"table" is a JSON "object"). A ground-floor module: it imports nothing from xbn but
``xbn.common.jsonio`` and ``xbn.common.dtypes``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Iterable
from typing import Any, NoReturn

from .jsonio import NONFINITE


class StrictError(ValueError):
    """A file that cannot be read as it stands: one line naming the file, where, and why."""

    def __init__(self, file: str, message: str, where: str | None = None):
        self.file, self.where, self.message = file, where, message
        super().__init__(f"{file}: {where + ': ' if where else ''}{message}")


def read_text(path, error: type[StrictError] = StrictError) -> str:
    """The text of a file, or ``error(file, "no such file" | "cannot read: ...")``."""
    from pathlib import Path

    file, path = str(path), Path(path)
    if not path.is_file():
        raise error(file, "no such file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(file, f"cannot read: {exc}") from None


def join(*parts: str | None) -> str | None:
    """'steps[0]', 'optimizer.lr' -> 'steps[0].optimizer.lr' (empty parts are left out)."""
    return ".".join(p for p in parts if p) or None


def closest(key: str, allowed: Iterable[str]) -> str:
    """' (did you mean ...?)' for a near miss, else the allowed keys."""
    match = difflib.get_close_matches(key, sorted(allowed), n=1)
    return f" (did you mean {match[0]!r}?)" if match else f" (allowed: {', '.join(sorted(allowed))})"


JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer",
              float: "a number", bool: "true or false", type(None): "null"}
TOML_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
              list: "a list", dict: "a table"}


class Fields:
    """Type and value checks of decoded data that raise ``error`` naming file and location.

    ``where`` arguments are dotted paths relative to this checker's own location (``within``
    makes a checker for a part of the document). A bool is never accepted as a number.
    """

    error: type[StrictError] = StrictError
    names: dict[type, str] = JSON_NAMES  # how a value found is named ("got ...")
    wanted: dict[type, str] = JSON_NAMES  # how a value asked for is named ("expected ...")
    missing = "required field is missing"

    def __init__(self, file: str, at: str | None = None):
        self.file, self.at = file, at

    def within(self, *parts: str | None) -> Fields:
        """The same checks for a part of the document: locations start at ``parts``."""
        return type(self)(self.file, join(self.at, *parts))

    def fail(self, message: str, where: str | None = None) -> NoReturn:
        raise self.error(self.file, message, join(self.at, where))

    def kind(self, value: Any) -> str:
        return self.names.get(type(value), type(value).__name__)

    # -- types -----------------------------------------------------------------------------
    def expect(self, value: Any, kinds: tuple[type, ...], where: str | None = None,
               want: str | None = None) -> Any:
        """``value`` if it is one of ``kinds``; ``want`` overrides the words for them."""
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            want = want or " or ".join(self.wanted.get(k, k.__name__) for k in kinds)
            self.fail(f"expected {want}, got {self.kind(value)}", where)
        return value

    def get(self, table: dict, key: str, kinds: tuple[type, ...], where: str | None = None,
            optional: bool = False) -> Any:
        """``table[key]`` checked against ``kinds``; optional: absent or null gives None."""
        if key not in table:
            if optional:
                return None
            self.fail(self.missing, join(where, key))
        value = table[key]
        if value is None and optional:
            return None
        return self.expect(value, kinds, join(where, key))

    def keys(self, table: Any, allowed: Collection[str], where: str | None = None,
             required: Iterable[str] = ()) -> dict:
        """A table with no key outside ``allowed`` and every key in ``required``."""
        self.expect(table, (dict,), where)
        for key in table:
            if key not in allowed:
                self.fail(f"unknown key{closest(key, allowed)}", join(where, key))
        for key in required:
            if key not in table:
                self.fail(self.missing, join(where, key))
        return table

    # -- scalars ---------------------------------------------------------------------------
    def choice(self, value: Any, choices: Collection, where: str | None = None) -> Any:
        if value not in choices:
            self.fail(f"must be one of {', '.join(choices)}; got {value!r}", where)
        return value

    def boolean(self, value: Any, where: str | None = None) -> bool:
        return self.expect(value, (bool,), where)

    def integer(self, value: Any, where: str | None = None, minimum: int = 1,
                maximum: int | None = None) -> int:
        self.expect(value, (int,), where)
        if value < minimum:
            self.fail(f"must be >= {minimum}, got {value}", where)
        if maximum is not None and value > maximum:
            self.fail(f"must be <= {maximum}, got {value}", where)
        return value

    def number(self, value: Any, where: str | None = None, positive: bool = False,
               finite: bool = True) -> float:
        value = self.expect(value, (int, float), where, want="a number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float64's range
            self.fail(f"must be finite, got an integer of {len(str(value))} digits", where)
        if finite and not math.isfinite(value):
            self.fail(f"must be finite, got {value}", where)
        if positive and not value > 0:
            self.fail(f"must be > 0, got {value}", where)
        return value

    def string(self, value: Any, where: str | None = None,
               choices: Collection[str] | None = None) -> str:
        self.expect(value, (str,), where)
        return value if choices is None else self.choice(value, choices, where)

    # -- arrays ----------------------------------------------------------------------------
    def numbers(self, value: Any, where: str | None = None) -> Any:
        """A number or nested list of numbers as strict JSON holds them: the strings "NaN",
        "Infinity" and "-Infinity" become floats."""
        if isinstance(value, list):
            return [self.numbers(v, where) for v in value]
        if isinstance(value, str) and value in NONFINITE:
            return NONFINITE[value]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"expected numbers, got {value!r:.40}", where)
        return value

    def array(self, value: Any, where: str | None = None, finite: bool = True):
        """A literal number or (nested, rectangular, non-empty) list of numbers, as float64."""
        import numpy as np

        def walk(v):
            if isinstance(v, bool) or not isinstance(v, (int, float, list)):
                self.fail(f"expected numbers, got {self.kind(v)}", where)
            if isinstance(v, list):
                if not v:
                    self.fail("empty list", where)
                for item in v:
                    walk(item)

        walk(value)
        try:
            arr = np.array(value, dtype=np.float64)
        except ValueError:
            self.fail("ragged list: every row must have the same length", where)
        except OverflowError:  # an integer beyond float64's range
            self.fail("non-finite value (an integer beyond float64's range)", where)
        if finite and not np.all(np.isfinite(arr)):
            self.fail("non-finite value (inf or nan) is not allowed here", where)
        return arr

    def rounded(self, arr, dtype: str, where: str | None = None):
        """``arr`` rounded to ``dtype`` (``xbn.common.dtypes.round_checked``); a finite value that
        overflows there is an error naming ``where``, never a silent inf."""
        from .dtypes import round_checked

        try:
            return round_checked(arr, dtype)
        except OverflowError as exc:
            self.fail(str(exc), where)

    def generated(self, spec: Any, where: str | None, max_elements: int):
        """An array drawn from a table: one of ``normal = { mean, std }``, ``uniform =
        { low, high }``, ``constant = v``, with ``shape``, ``seed`` (0) and ``offset``; drawn
        with ``numpy.random.default_rng(seed)`` in float64, every value finite."""
        import numpy as np

        raw = self.keys(spec, {"normal", "uniform", "constant", "shape", "seed", "offset"},
                        where, required=("shape",))
        kinds = [k for k in ("normal", "uniform", "constant") if k in raw]
        if len(kinds) != 1:
            self.fail("give exactly one of normal, uniform, constant", where)
        shape = raw["shape"]
        if not (isinstance(shape, list) and shape and all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            self.fail("expected a list of positive integers", join(where, "shape"))
        if math.prod(shape) > max_elements:
            self.fail(f"{math.prod(shape)} elements; at most {max_elements} per input",
                      join(where, "shape"))
        rng = np.random.default_rng(self.integer(raw.get("seed", 0), join(where, "seed"), 0))
        at = join(where, kinds[0])
        if kinds[0] == "normal":
            p = self.keys(raw["normal"], {"mean", "std"}, at)
            mean = self.number(p.get("mean", 0.0), join(at, "mean"))
            std = self.number(p.get("std", 1.0), join(at, "std"))
            if std < 0:
                self.fail(f"a standard deviation cannot be negative, got {std:g}",
                          join(at, "std"))
            arr = rng.normal(mean, abs(std), size=shape)  # -0.0 is 0 (numpy refuses it)
        elif kinds[0] == "uniform":
            p = self.keys(raw["uniform"], {"low", "high"}, at)
            low = self.number(p.get("low", 0.0), join(at, "low"))
            high = self.number(p.get("high", 1.0), join(at, "high"))
            if not high > low:
                self.fail("high must be greater than low", at)
            if not math.isfinite(high - low):
                self.fail("high - low is beyond float64's range", at)
            arr = rng.uniform(low, high, size=shape)
        else:
            arr = np.full(shape, self.number(raw["constant"], at))
        if "offset" in raw:
            with np.errstate(over="ignore"):  # an overflow is reported just below
                arr = arr + self.number(raw["offset"], join(where, "offset"))
        if not np.all(np.isfinite(arr)):
            self.fail("draws values beyond float64's range (inf or nan)", where)
        return arr
