"""Running scenarios through frameworks: one worker process per framework (or per group
sharing a runtime), each in the environment built by ``environment``; ``runner`` schedules
them, ``spawn`` reads their protocol (timeouts and crashes become ``error`` rows), ``worker``
is the process itself, ``session`` the fuzzer's long-lived workers, ``cache`` the result
cache, ``device_probe`` whether an ``ID@DEVICE``'s device is there. Frameworks are imported
only inside worker processes.
"""

from __future__ import annotations

from .cache import ResultCache, cache_dir
from .environment import DETERMINISM_ENV, worker_env
from .runner import DEFAULT_TIMEOUT, RunResult, run

__all__ = ["cache_dir", "DEFAULT_TIMEOUT", "DETERMINISM_ENV", "ResultCache", "run", "RunResult",
           "worker_env"]
