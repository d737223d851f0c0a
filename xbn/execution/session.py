"""One worker process per framework for a whole campaign (``python -m xbn.execution.worker --serve``).

Importing TensorFlow or JAX takes seconds and a scenario takes milliseconds, so a campaign that
spawned a worker per example would measure imports. A :class:`Session` keeps one worker up and
sends it a batch of scenarios per round trip; a worker that crashes or hangs is restarted and
its batch becomes error rows, like ``xbn.execution.runner`` does for a one-shot run.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ..frameworks.registry import module_path
from ..scenario.model import REPLICAS_ENV
from .environment import worker_env


class WorkerFailed(RuntimeError):
    """The worker died or went silent; the message carries its last stderr line."""


class Session:
    """A persistent worker for ``framework``. ``run(docs)`` returns name -> observations.

    ``seconds`` accumulates the time spent waiting for the worker (the frameworks' own step
    time plus the protocol), which the campaign compares with its total to state its overhead.
    """

    def __init__(self, framework: str, timeout: float = 120.0, replicas: int = 2):
        self.framework, self.timeout = framework, timeout
        self.replicas = replicas  # host devices offered for scenarios with replicas
        self.proc: subprocess.Popen | None = None
        self.versions: dict = {}
        self.seconds = 0.0
        self.examples = 0
        self.cpu_seconds = 0.0  # the worker's CPU after its start-up (imports excluded)
        self._cpu_start = 0.0

    def start(self) -> None:
        env = worker_env(self.framework)  # the runner's workers' environment, devices too
        if self.replicas > 1:  # read once, before the framework's import (worker.prepare_replicas)
            env[REPLICAS_ENV] = str(self.replicas)
            env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={self.replicas} "
                                f"{env.get('XLA_FLAGS', '')}").strip()
        self.stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xbn.execution.worker", "--serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.stderr, env=env, text=True, bufsize=1,
            start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()
        self._send({"framework": self.framework, "module": module_path(self.framework)})
        hello = self._next(self.timeout)
        self.versions = hello.get("versions", {})
        self._cpu_start = self._cpu()

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def _send(self, message: dict) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerFailed(f"{self.framework} worker is gone: {exc}") from exc

    def _next(self, timeout: float) -> dict:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise WorkerFailed(f"{self.framework} worker silent for {timeout:g} s") from None
            if line is None:
                self.stderr.seek(0)
                tail = [ln for ln in self.stderr.read().splitlines() if ln.strip()]
                raise WorkerFailed(f"{self.framework} worker exited: "
                                   f"{tail[-1] if tail else 'no output'}")
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue

    def run(self, documents: list[dict]) -> dict[str, list[dict]]:
        """Run scenario documents (``Scenario.to_dict`` form, unique names) in one round trip;
        a failed worker is restarted and the batch's scenarios get no observations."""
        if self.proc is None:
            self.start()
        out: dict[str, list[dict]] = {d["name"]: [] for d in documents}
        start = time.monotonic()
        try:
            self._send({"scenarios": documents})
            while True:
                msg = self._next(self.timeout)
                kind = msg.pop("type", None)
                if kind == "obs":
                    out.setdefault(msg["scenario"], []).append(msg)
                elif kind == "batch_done":
                    break
        except WorkerFailed:
            self.close()
            out = {d["name"]: [] for d in documents}
        self.seconds += time.monotonic() - start
        self.examples += len(documents)
        return out

    def _cpu(self) -> float:
        """The worker's CPU seconds so far, its waited-for children (torch replicas) included
        (user + system; Linux ``/proc``, else 0): what the fuzz benchmark sets against the
        campaign's own CPU to state its overhead."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:  # type: ignore[union-attr]
                fields = f.read().rsplit(")", 1)[1].split()
            return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AttributeError):
            return 0.0

    def close(self) -> None:
        """End the worker (its process group: a framework may have started helpers)."""
        if self.proc is not None:
            self.cpu_seconds += max(0.0, self._cpu() - self._cpu_start)
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()
        self.stderr.close()
