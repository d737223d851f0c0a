"""Compile time of a moded id, measured where the compiled program runs (``Adapter.notes``).

A compiled mode (``torch+compile``, ``keras+xla``, ``haiku+jit``) pays for tracing and
compiling at the first call of each program it builds (one per train/eval flag, shape, dtype
and whatever else its guards or trace cache key on), and then runs fast. xbn excludes compile
time from nothing: it records the first call of each program against the later calls of the
same program, in one note per scenario (the worker gives every scenario its own notes), so the
report's framework notes say what each id's mode cost. The key is the caller's: whatever makes
its framework trace or compile again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

PREFIX = "compile time"


class CompileTimer:
    """Times calls of a compiled function by program key; keeps one note up to date."""

    def __init__(self, run_id: str, compiler: str, notes: list[str]):
        self.run_id, self.compiler, self.notes = run_id, compiler, notes
        self.first: dict[Hashable, float] = {}  # program key -> seconds of its first call
        self.later: list[float] = []

    def __call__(self, key: Hashable, fn: Callable[..., Any], *args, **kwargs) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds = time.perf_counter() - start
        if key in self.first:
            self.later.append(seconds)
        else:
            self.first[key] = seconds
        self._note()
        return out

    def note(self) -> str:
        later = (f"; later calls {1e3 * sum(self.later) / len(self.later):.2f} ms each "
                 f"({len(self.later)})" if self.later else "; no later call")
        return (f"{self.run_id} {PREFIX}: {len(self.first)} program(s) built by "
                f"{self.compiler}, first calls {sum(self.first.values()):.2f} s in all{later}")

    def _note(self) -> None:
        """Rewrite this id's note in place (the notes list is the worker's, per scenario)."""
        text, head = self.note(), f"{self.run_id} {PREFIX}:"
        for i, existing in enumerate(self.notes):
            if existing.startswith(head):
                self.notes[i] = text
                return
        self.notes.append(text)
