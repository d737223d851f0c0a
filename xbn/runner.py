"""Spawn one worker process per framework, in parallel, and gather their observations.

Each framework runs in its own process so that TensorFlow and PyTorch never share one, and a
crash or a hang costs only that framework's rows. Workers run one per CPU core at a time, the
slowest framework first: they are CPU-bound, so more at once only shares the cores and holds
every framework in memory together. With a result cache (``xbn.cache``) a worker runs only the
scenarios the cache does not hold, and none starts for a framework it holds entirely.

Progress is reported as ``Progress`` events (a framework started, is on a step, finished a
scenario, finished or failed, is unavailable; the run finished) so that the command line can
draw a live display on a terminal and print plain lines in a CI log from the same events.
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
from .cache import ResultCache
from .registry import FRAMEWORKS, availability, module_path
from .scenario import Scenario, quantity_dtype
from .worker import DETERMINISM_ENV

DEFAULT_TIMEOUT = 1800.0
TF_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu", "tf-keras"}


@dataclass(frozen=True)
class Progress:
    """One progress event. ``kind``: "unavailable", "queued" (runs when a worker slot is free),
    "start" (the worker has imported its framework), "step" (``step`` of ``scenario`` is
    running), "scenario" (``scenario`` is done: ``done`` of ``count``), "done", "error"
    (``message``), "finished" (the whole run; ``framework`` empty). ``elapsed``: seconds since
    the framework's worker started."""

    kind: str
    framework: str = ""
    scenario: str = ""
    done: int = 0
    count: int = 0
    step: int | None = None
    steps: int = 0
    op: str = ""
    repeat: int = 1
    elapsed: float = 0.0
    message: str = ""


ProgressCallback = Callable[[Progress], None]


@dataclass
class WorkerResult:
    framework: str
    observations: list[dict] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    completed: list[str] = field(default_factory=list)  # scenarios the worker finished
    scenario_notes: dict[str, list[str]] = field(default_factory=dict)  # notes at each end


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


class _Tracker:
    """Turns a worker's protocol messages into ``Progress`` events for one framework. The
    worker reports a step's observations once the step is done, so the first observation of
    step j means the step after j is now running."""

    def __init__(self, framework: str, scenarios: list[Scenario], notify: ProgressCallback | None):
        self.framework, self.notify = framework, notify
        self.scenarios = {s.name: s for s in scenarios}
        self.order = [s.name for s in scenarios]
        self.start = time.monotonic()
        self.done = 0
        self.seen: set[tuple[str, int]] = set()

    def emit(self, kind: str, **fields) -> None:
        if self.notify:
            self.notify(Progress(kind, self.framework, count=len(self.order), done=self.done,
                                 elapsed=time.monotonic() - self.start, **fields))

    def _running(self, name: str, position: int) -> None:
        steps = self.scenarios[name].steps
        if position < len(steps):
            step = steps[position]
            self.emit("step", scenario=name, step=step.index, steps=len(steps), op=step.op,
                      repeat=step.repeat)

    def hello(self) -> None:
        self.emit("start")
        if self.order:
            self._running(self.order[0], 0)

    def observation(self, msg: dict) -> None:
        key = (msg.get("scenario"), msg.get("step"))
        if key in self.seen or key[0] not in self.scenarios:
            return
        self.seen.add(key)
        steps = [s.index for s in self.scenarios[key[0]].steps]
        if key[1] in steps:
            self._running(key[0], steps.index(key[1]) + 1)

    def scenario_done(self, name: str) -> None:
        self.done += 1
        self.emit("scenario", scenario=name)
        if self.done < len(self.order):
            self._running(self.order[self.done], 0)


def run_worker(framework: str, scenarios: list[Scenario], timeout: float,
               notify: ProgressCallback | None = None) -> WorkerResult:
    """Run all scenarios through one framework in a fresh process."""
    result = WorkerResult(framework)
    tracker = _Tracker(framework, scenarios, notify)
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
                    tracker.observation(msg)
                elif kind == "hello":
                    result.versions = msg.get("versions", {})
                    result.notes = list(msg.get("notes", []))
                    tracker.hello()
                elif kind == "scenario_done":
                    done.add(msg["scenario"])
                    result.completed.append(msg["scenario"])
                    result.scenario_notes[msg["scenario"]] = list(msg.get("notes", []))
                    result.notes = list(dict.fromkeys(result.notes + msg.get("notes", [])))
                    tracker.scenario_done(msg["scenario"])
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
    if result.error:
        tracker.emit("error", message=result.error)
    else:
        tracker.emit("done")
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
                         "value": value,  # rounded by the loader to where q lives
                         "dtype": quantity_dtype(scenario.layer, q),
                         "message": step.expect["source"]})
    return rows


def run(scenarios: list[Scenario], frameworks: list[str] | None = None, *,
        timeout: float = DEFAULT_TIMEOUT, jobs: int | None = None,
        progress: ProgressCallback | None = None, cache: ResultCache | None = None) -> RunResult:
    """Run scenarios through frameworks (default: every installed one), in parallel workers.

    ``progress`` receives ``Progress`` events from the workers' reader threads, serialised by
    a lock, and a last "finished" event once every worker has ended. With a ``cache``
    (``xbn.cache``), a scenario x framework found there is not run, a framework with every
    scenario found starts no worker, and what a worker finishes without a worker error is
    stored; without one (the default, and always for ``xbn check``) everything runs."""
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
                progress(Progress("unavailable", fid, count=len(scenarios),
                                  message=f"pip install \"xbn[{info['extra']}]\""))
    lock = threading.Lock()

    def notify(event: Progress) -> None:
        if progress:
            with lock:
                progress(event)

    hits = {fid: _cached(cache, scenarios, fid) for fid in runnable}
    todo = {fid: [s for s in scenarios if s.name not in hits[fid]] for fid in runnable}
    observations: list[dict] = []
    seconds: dict[str, float] = {}
    for fid in runnable:
        notify(Progress("queued", fid, count=len(todo[fid])))
    # longest first, so that the slowest framework is not the one that starts last
    pending = sorted((f for f in runnable if todo[f]),
                     key=lambda f: -_estimate(cache, f, len(todo[f])))
    with ThreadPoolExecutor(max_workers=jobs or default_jobs(len(pending))) as pool:
        futures = {fid: pool.submit(run_worker, fid, todo[fid], timeout, notify)
                   for fid in pending}
        for fid in runnable:
            res = futures[fid].result() if fid in futures else WorkerResult(fid)
            if fid not in futures:
                notify(Progress("done", fid, count=len(scenarios), done=len(scenarios),
                                message="from the cache"))
            observations.extend(_merge(res, scenarios, hits[fid], cache))
            meta[fid].update({"versions": res.versions, "notes": res.notes})
            seconds[fid] = round(res.seconds, 2)
            if cache is not None and res.completed and not res.error:
                cache.note_seconds(fid, res.seconds / len(res.completed))
            if res.error:
                meta[fid]["error"] = res.error
    notify(Progress("finished", count=len(scenarios)))
    for s in scenarios:
        observations.extend(expected_rows(s))
    return RunResult(observations, meta, scenarios, seconds)


def default_jobs(workers: int) -> int:
    """Workers at once: one per CPU core. The work is CPU-bound (one thread per worker), so
    more at once only shares the cores and holds every framework in memory at the same time."""
    return max(1, min(workers, os.cpu_count() or 1))


def _estimate(cache: ResultCache | None, fid: str, count: int) -> float:
    """Expected seconds of ``count`` scenarios through ``fid``: the last run's per-scenario
    time where the cache kept one, else a prior from the built-in suite on a 2-core machine
    (the JAX family pays ~2 s per small scenario compiling primitives; TensorFlow-based
    Keras ~1.5 s; the rest less)."""
    known = cache.seconds(fid) if cache is not None else None
    if known is None:
        needs = {d for spec in FRAMEWORKS[fid].requires for d in spec.split("|")}
        known = 2.0 if "jax" in needs else 1.5 if needs & TF_DISTRIBUTIONS else 1.0
    return known * count


def _cached(cache: ResultCache | None, scenarios: list[Scenario], fid: str) -> dict[str, dict]:
    """Scenario name -> cache entry, for the scenarios the cache holds for ``fid``."""
    if cache is None:
        return {}
    found = {s.name: cache.get(s, fid) for s in scenarios}
    return {name: entry for name, entry in found.items() if entry is not None}


def _merge(res: WorkerResult, scenarios: list[Scenario], hits: dict[str, dict],
           cache: ResultCache | None) -> list[dict]:
    """One framework's observations in scenario order, from the cache or the worker (as if
    one worker had run them all: the same order, versions and notes); stores what the worker
    finished cleanly. A worker that crashed or timed out stores nothing: its rows may be
    incomplete, and its error must not outlive this run."""
    by_scenario: dict[str, list[dict]] = {}
    for o in res.observations:
        by_scenario.setdefault(o["scenario"], []).append(o)
    if cache is not None and not res.error:
        for s in scenarios:
            if s.name in res.completed:
                cache.put(s, res.framework, by_scenario.get(s.name, []), res.versions,
                          res.scenario_notes.get(s.name, []))
    notes = list(res.notes)
    out = []
    for s in scenarios:
        entry = hits.get(s.name)
        if entry is None:
            out.extend(by_scenario.pop(s.name, []))
            continue
        out.extend(entry["observations"])
        res.versions = res.versions or entry.get("versions", {})
        notes.extend(entry.get("notes", []))
    for rest in by_scenario.values():  # rows of a scenario the run was not asked for
        out.extend(rest)
    res.notes = list(dict.fromkeys(notes))
    return out
