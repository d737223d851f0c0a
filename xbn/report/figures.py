"""The HTML report's figures, drawn in parallel where that is safe.

Drawing the built-in suite's 49 drift plots is most of writing the report (about 7 of 10 s
on two cores) and the last thing a cold ``xbn report`` waits for, with every worker ended and
the cores free. Each figure is independent of the others, so they are drawn by forked
processes, one per core, which inherit the report's finished view instead of pickling it; the page
is the same, byte for byte, as one process draws it (figures are reproducible: ``plots``).

Forking is used only where it is safe and pays: the "fork" start method exists (not on
Windows), the process has no other Python thread and no framework whose native thread pools a
fork would copy half-way (a fork copies only the calling thread, so a lock another thread held
stays held in the child: JAX warns of deadlocks; xbn's own command line never imports a
framework in its main process, a program calling ``xbn.report`` may have), there are two or
more cores and enough figures to cover the start. Everywhere else the figures are drawn here,
one after the other.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

MIN_FIGURES = 8  # fewer: not worth starting processes for
THREADED_FRAMEWORKS = ("jax", "jaxlib", "torch", "tensorflow")  # start thread pools at import
_JOB: tuple | None = None  # (draw, view, scenarios by name), inherited by forked processes


def drawn(report: Any, draw: Callable) -> dict[str, str]:
    """``draw(report, scenario)`` for every scenario of ``report`` (the HTML page passes its
    view; anything with named ``scenarios`` will do), by scenario name."""
    scenarios = list(report.scenarios)
    workers = min(os.cpu_count() or 1, len(scenarios))
    if workers < 2 or len(scenarios) < MIN_FIGURES or not _fork_is_safe():
        return {s.name: draw(report, s) for s in scenarios}
    from concurrent.futures import ProcessPoolExecutor

    global _JOB
    _JOB = (draw, report, {s.name: s for s in scenarios})
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            names = [s.name for s in scenarios]
            return dict(zip(names, pool.map(_draw_one, names, chunksize=1), strict=True))
    finally:
        _JOB = None


def _fork_is_safe() -> bool:
    return ("fork" in multiprocessing.get_all_start_methods()
            and threading.active_count() == 1
            and not any(name in sys.modules for name in THREADED_FRAMEWORKS))


def _draw_one(name: str) -> str:
    draw, report, by_name = _JOB
    return draw(report, by_name[name])
