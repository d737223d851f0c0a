"""The embedded engine: each cell's environment built in the cache (``cells.build_env``, reused
across runs) and its snapshot run here, ``jobs`` cells at a time. A cell's log is kept in
``OUT/logs/ID.log``, and its process id in ``OUT/logs/ID.pid`` while it runs."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from ...execution.cache import cache_dir
from .cells import run_cell, scenario_payload


def env_root() -> Path:
    """Where cell environments live: the xbn cache directory's ``matrix-envs``."""
    return cache_dir() / "matrix-envs"


def run_local(cells: list[dict], out: Path, finished: Callable[[dict], None],
              jobs: int = 1, **_ignored) -> None:
    """Run ``cells``; ``finished(result)`` is called as each ends (in the calling thread)."""
    root = env_root()
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(run_cell, cell, scenario_payload(cell), out / "logs", root)
                   for cell in cells]
        for future in as_completed(futures):
            finished(future.result())
