"""Spawn one worker process per framework, in parallel, and gather their observations.

Each framework runs in its own process so that TensorFlow and PyTorch never share one, the
slowest import sets the pace, and a crash or a hang costs only that framework's rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ._version import __version__
from .adapters.base import primary_quantities
from .dtypes import round_to
from .registry import FRAMEWORKS, availability, module_path
from .scenario import Scenario
from .worker import DETERMINISM_ENV

DEFAULT_TIMEOUT = 1800.0


@dataclass
class WorkerResult:
    framework: str
    observations: list[dict] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class RunResult:
    """What a run produced. ``frameworks`` is each framework's metadata as reports record it;
    ``seconds`` (each worker's wall time) is kept apart from it so that no written file
    carries a timing, which would differ on every run."""

    observations: list[dict]
    frameworks: dict[str, dict]
    scenarios: list[Scenario]
    seconds: dict[str, float] = field(default_factory=dict)

    def meta(self) -> dict:
        return {"xbn_version": __version__, "frameworks": self.frameworks}


def _worker_env(framework: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DETERMINISM_ENV)
    env.update(FRAMEWORKS[framework].env)
    return env


def run_worker(framework: str, scenarios: list[Scenario], timeout: float,
               on_scenario: Callable[[str, str], None] | None = None) -> WorkerResult:
    """Run all scenarios through one framework in a fresh process."""
    result = WorkerResult(framework)
    request = json.dumps({"framework": framework, "module": module_path(framework),
                          "scenarios": [s.to_dict() for s in scenarios]})
    start = time.monotonic()
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xbn.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, env=_worker_env(framework), text=True, start_new_session=True)
        done: set[str] = set()
        finished = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind = msg.pop("type", None)
                if kind == "obs":
                    result.observations.append(msg)
                elif kind == "hello":
                    result.versions = msg.get("versions", {})
                    result.notes = list(msg.get("notes", []))
                elif kind == "scenario_done":
                    done.add(msg["scenario"])
                    result.notes = list(dict.fromkeys(result.notes + msg.get("notes", [])))
                    if on_scenario:
                        on_scenario(framework, msg["scenario"])
            finished.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert proc.stdin is not None
            proc.stdin.write(request)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        timed_out = not finished.wait(timeout)
        if timed_out:
            _kill(proc)
        proc.wait()
        reader.join(5)
        result.seconds = time.monotonic() - start
        stderr.seek(0)
        tail = [ln for ln in stderr.read().splitlines() if ln.strip()]
    if timed_out:
        result.error = f"TimeoutError: worker exceeded {timeout:g} s"
    elif proc.returncode != 0:
        last = tail[-1].strip() if tail else "no output"
        result.error = f"WorkerCrashed: exit status {proc.returncode}: {last}"
    missing = [s for s in scenarios if s.name not in done]
    if missing:
        reason = result.error or "WorkerCrashed: worker ended early"
        result.observations.extend(_error_rows(framework, missing, result.observations, reason))
    return result


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _error_rows(framework: str, scenarios: list[Scenario], seen: list[dict], reason: str):
    have = {(o["scenario"], o["step"]) for o in seen}
    for s in scenarios:
        for step in s.steps:
            if (s.name, step.index) in have:
                continue
            for q in primary_quantities(step.op):
                yield {"scenario": s.name, "step": step.index, "op": step.op,
                       "framework": framework, "quantity": q, "status": "error", "value": None,
                       "dtype": None, "message": reason}


def expected_rows(scenario: Scenario) -> list[dict]:
    """Published values carried by the scenario, as the pseudo-framework ``expected``."""
    rows = []
    for step in scenario.steps:
        if not step.expect:
            continue
        for q, value in step.expect.items():
            if q == "source":
                continue
            rows.append({"scenario": scenario.name, "step": step.index, "op": step.op,
                         "framework": "expected", "quantity": q, "status": "ok",
                         "value": round_to(value, scenario.layer.dtype).tolist(),
                         "dtype": scenario.layer.dtype, "message": step.expect["source"]})
    return rows


def run(scenarios: list[Scenario], frameworks: list[str] | None = None, *,
        timeout: float = DEFAULT_TIMEOUT, jobs: int | None = None,
        progress: Callable[[str], None] | None = None) -> RunResult:
    """Run scenarios through frameworks (default: every installed one), in parallel workers."""
    avail = availability()
    wanted = list(frameworks) if frameworks else [f for f, a in avail.items() if a["available"]]
    meta: dict[str, dict] = {}
    runnable = []
    for fid in wanted:
        info = avail[fid]
        meta[fid] = {"available": info["available"], "version": info["version"]}
        if info["available"]:
            runnable.append(fid)
        else:
            meta[fid]["extra"] = info["extra"]
            meta[fid]["missing"] = info["missing"]
            if progress:
                progress(f"{fid}: unavailable (pip install \"xbn[{info['extra']}]\")")
    total = len(runnable) * len(scenarios)
    count = [0]
    lock = threading.Lock()

    def on_scenario(fid: str, name: str) -> None:
        with lock:
            count[0] += 1
            if progress:
                progress(f"[{count[0]}/{total}] {fid}: {name}")

    observations: list[dict] = []
    seconds: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=jobs or max(1, len(runnable))) as pool:
        futures = {fid: pool.submit(run_worker, fid, scenarios, timeout, on_scenario)
                   for fid in runnable}
        for fid, fut in futures.items():
            res = fut.result()
            observations.extend(res.observations)
            meta[fid].update({"versions": res.versions, "notes": res.notes})
            seconds[fid] = round(res.seconds, 2)
            if res.error:
                meta[fid]["error"] = res.error
                if progress:
                    progress(f"{fid}: {res.error}")
    for s in scenarios:
        observations.extend(expected_rows(s))
    return RunResult(observations, meta, scenarios, seconds)
