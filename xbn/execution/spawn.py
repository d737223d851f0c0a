"""Start one worker process for one framework, or for a group of frameworks that share one
engine, and turn its protocol lines into one ``WorkerResult`` per framework.

Why groups: the JAX-family frameworks (flax, flax-nnx, haiku, equinox; ``runner.worker_groups``
says which) each spend most of a small scenario compiling JAX primitives for its shapes; in one
process JAX is imported once, and with the result cache on each framework compiles into the
persistent compilation cache that the next one reads. The worker runs the group's frameworks
one after the other and resets the global JAX configuration between them (``xbn.execution.worker``), so
every framework's rows are the bits it gives in a worker of its own
(``tests/test_worker_groups.py``).

Each framework of a group keeps what a worker of its own has: its versions and notes, its
timeout (counted from the moment it begins), its progress events and its seconds. A group
worker that crashes or times out costs only the frameworks it had not finished: the finished
ones keep their rows; the one it was running gets the error; the ones not begun are told why.
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
from dataclasses import dataclass, field

from ..adapters.base import primary_quantities
from ..frameworks.devices import run_id
from ..frameworks.registry import module_path
from ..scenario.loader import Scenario
from ..scenario.observation import ERROR
from .environment import group_env


@dataclass(frozen=True)
class Progress:
    """One progress event. ``kind``: "unavailable", "queued" (runs when a worker slot is free),
    "start" (the worker has imported its framework), "step" (``step`` of ``scenario`` is
    running), "scenario" (``scenario`` is done: ``done`` of ``count``), "done", "error"
    (``message``), "finished" (the whole run; ``framework`` empty). ``elapsed``: seconds since
    the framework's worker started (in a group: since the framework began)."""

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
DoneCallback = Callable[["WorkerResult"], None]
"""Called with a framework's result the moment its worker reports it finished cleanly (in a
group: before the group's other frameworks end), from the worker's reader thread."""


@dataclass
class WorkerResult:
    framework: str
    observations: list[dict] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    completed: list[str] = field(default_factory=list)  # scenarios the worker finished
    unavailable: str | None = None  # ID@DEVICE whose device the worker did not find: why
    # each scenario's notes, with the adapter's own (the hello's): what the cache stores
    scenario_notes: dict[str, list[str]] = field(default_factory=dict)
    # the distributions the worker had loaded code from when it finished (the cache's key)
    distributions: list[str] = field(default_factory=list)


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


class _Group:
    """The reading side of one worker process: which framework is running, since when, and
    each framework's result and tracker."""

    def __init__(self, todo: dict[str, list[Scenario]], notify: ProgressCallback | None,
                 on_done: DoneCallback | None = None):
        self.on_done = on_done
        self.order = list(todo)
        self.todo = todo
        self.results = {fid: WorkerResult(fid) for fid in todo}
        self.trackers = {fid: _Tracker(fid, todo[fid], notify) for fid in todo}
        self.finished: list[str] = []  # frameworks whose "framework_done" came
        self.hello_notes: dict[str, int] = {}  # how many of result.notes the hello gave
        self.current = self.order[0]
        self.began = time.monotonic()

    def handle(self, msg: dict) -> None:
        kind = msg.pop("type", None)
        fid = msg.get("framework", self.current)
        if fid not in self.results:
            return
        result, tracker = self.results[fid], self.trackers[fid]
        if kind == "obs":
            result.observations.append(msg)
            tracker.observation(msg)
        elif kind == "unavailable":
            result.unavailable = str(msg.get("reason"))
        elif kind == "hello":
            self.current = fid
            result.versions = msg.get("versions", {})
            result.notes = list(msg.get("notes", []))
            self.hello_notes[fid] = len(result.notes)
            tracker.hello()
        elif kind == "scenario_done":
            name = msg["scenario"]
            result.completed.append(name)
            hello = result.notes[:self.hello_notes.get(fid, 0)]
            result.scenario_notes[name] = list(dict.fromkeys(hello + msg.get("notes", [])))
            result.notes = list(dict.fromkeys(result.notes + msg.get("notes", [])))
            tracker.scenario_done(name)
        elif kind == "framework_done":
            now = time.monotonic()
            result.seconds = now - self.began
            result.distributions = list(msg.get("distributions", []))
            self.finished.append(fid)
            if result.unavailable is None:  # done now, not when the whole group is
                tracker.emit("done")
                if self.on_done is not None:
                    self.on_done(result)
            rest = [f for f in self.order if f not in self.finished]
            if rest:  # the next one begins now: its clock (timeout, elapsed) starts here
                self.current, self.began = rest[0], now
                self.trackers[rest[0]].start = now


def run_group(todo: dict[str, list[Scenario]], timeout: float,
              notify: ProgressCallback | None = None,
              env: dict[str, str] | None = None,
              on_done: DoneCallback | None = None) -> dict[str, WorkerResult]:
    """Run each framework's scenarios (``todo``: framework -> scenarios, in running order) in
    one fresh worker process; one ``WorkerResult`` per framework. ``timeout`` is each
    framework's, counted from when it begins; ``env`` is added to the worker's environment
    (``ResultCache.compile_env``); ``on_done`` hears of each framework that finishes cleanly
    as soon as it does (a crashed, timed-out or unavailable one is only returned)."""
    group = _Group(todo, notify, on_done)
    members = [{"framework": fid, "module": module_path(run_id(fid)),
                "scenarios": [s.to_dict() for s in todo[fid]]} for fid in todo]
    shared = group_env(list(todo))
    if shared is None:
        raise ValueError(f"frameworks {list(todo)} need different worker environments")
    shared.update(env or {})
    start = time.monotonic()
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xbn.execution.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, env=shared, text=True, start_new_session=True)
        finished = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue
                group.handle(msg)
            finished.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"group": members}))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        timed_out = False
        while not finished.wait(min(1.0, timeout)):
            if time.monotonic() - group.began > timeout:
                timed_out = True
                _kill(proc)
                break
        proc.wait()
        reader.join(5)
        stderr.seek(0)
        tail = [ln for ln in stderr.read().splitlines() if ln.strip()]
    error = None
    if timed_out:
        error = f"TimeoutError: worker exceeded {timeout:g} s"
    elif proc.returncode != 0:
        last = tail[-1].strip() if tail else "no output"
        error = f"WorkerCrashed: exit status {proc.returncode}: {last}"
    end = time.monotonic()
    for fid in group.order:  # the one running at the end ran since it began; later ones: 0
        ran = end - (start if fid == group.order[0] else group.began)
        _finish(group, fid, error, ran if fid == group.current else 0.0)
    return group.results


def _finish(group: _Group, fid: str, error: str | None, seconds: float) -> None:
    """One framework's result once its worker has ended: error rows for what it did not
    finish, and its last progress event."""
    result, tracker = group.results[fid], group.trackers[fid]
    if fid not in group.finished:
        result.seconds = seconds
        if error and fid != group.current:  # not begun: the worker ended before its turn
            error = (f"WorkerCrashed: not run: the worker of {', '.join(group.order)} ended "
                     f"while {group.current} ran ({error})")
        result.error = error
    if result.unavailable is not None and not result.error:
        tracker.emit("unavailable", message=result.unavailable)
        return
    missing = [s for s in group.todo[fid] if s.name not in result.completed]
    if missing:
        reason = result.error or "WorkerCrashed: worker ended early"
        result.observations.extend(_error_rows(fid, missing, result.observations, reason))
    if result.error:
        tracker.emit("error", message=result.error)
    elif fid not in group.finished:
        tracker.emit("done")


def run_worker(framework: str, scenarios: list[Scenario], timeout: float,
               notify: ProgressCallback | None = None,
               env: dict[str, str] | None = None,
               on_done: DoneCallback | None = None) -> WorkerResult:
    """Run all scenarios through one framework in a fresh process."""
    return run_group({framework: scenarios}, timeout, notify, env, on_done)[framework]


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
            reps = range(step.repeat) if step.trace else (None,)
            for rep in reps:  # a traced step has a row per repetition, as the worker writes
                for q in primary_quantities(step.op):
                    row = {"scenario": s.name, "step": step.index, "op": step.op,
                           "framework": framework, "quantity": q, "status": ERROR,
                           "value": None, "dtype": None, "message": reason}
                    if rep is not None:
                        row["rep"] = rep
                    yield row
