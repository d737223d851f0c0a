"""Replicas for ``torch``: one process per replica, ``torch.distributed`` over gloo, DDP.

This is how torch users run data-parallel training on CPU: R processes join one process group
(``init_process_group("gloo", store=...)``, rank 0's ``TCPStore`` listening on 127.0.0.1 only:
``ranks.loopback_store`` says why ``init_method="tcp://127.0.0.1:<port>"`` is not enough), each
wraps the same model in ``DistributedDataParallel`` and feeds it its own shard. The ranks
(``xbn.adapters.torch.ranks``) build the BatchNorm exactly as the single-process adapter does
and answer requests over a socket pair; this module, in the worker, splits every batch as
``layer.replicas`` says, gathers the ranks' outputs in batch order and reads the state back
as a user does: rank 0's module (the rank that saves checkpoints), plus every rank's own
running statistics.

What DDP does with BatchNorm buffers (torch 2.13, torch/nn/parallel/distributed.py): the
constructor broadcasts rank 0's parameters and buffers (``_sync_module_states``);
``_pre_forward`` broadcasts rank 0's buffers again (``_sync_buffers``) when
``forward_sync_buffers`` (``broadcast_buffers``, default True) and ``require_forward_param_sync``,
which ``_post_forward`` sets only after a forward with grad enabled. So a training call runs
with grad enabled, as in a training loop (every rank then starts its next forward from rank 0's
buffers, and updates them with its own shard's statistics); ``predict`` is ``eval()`` under
``no_grad`` (it too starts from rank 0's buffers after a training call). SyncBatchNorm on CPU:
DDP's constructor refuses it (``_passing_sync_batchnorm_handle``: "SyncBatchNorm layers only
work with GPU modules"), torch's own error.

The group is started once per worker and kept for every scenario with the same R (a build
builds a fresh model on it); it is restarted when R changes and after any failure. Every wait
is bounded: each collective by the process group's ``timeout`` (``XBN_RANK_TIMEOUT`` seconds),
each request by that plus a margin; a rank that dies or hangs ends the whole group (SIGKILL to
its process group, every process reaped), so no process and no port outlives a failure.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import os
import signal
import subprocess
import sys
import time
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from ...scenario.ddp import ddp_options
from ...scenario.loader import Layer, Step
from ...scenario.model import split_rows
from ..base import Adapter, NotApplicable
from ..rows import join_rows

TIMEOUT_ENV = "XBN_RANK_TIMEOUT"
DEFAULT_TIMEOUT = 10.0  # seconds a collective may wait for the other ranks
MARGIN = 3.0  # seconds beyond the collective timeout before a request is declared hung
STARTUP = 180.0  # seconds for R processes to import torch (CPUs may be shared)
# where a failure of the group itself comes from when no rank reported an exception: the
# process running the framework died or hung (neither torch's answer nor xbn's code)
PROCESS = "process"
STATE = ("gamma", "beta", "moving_mean", "moving_variance")


class RankFailure(RuntimeError):
    """A rank died or hung; the whole group was ended. ``xbn_origin`` says who reported it."""

    def __init__(self, message: str, origin: str):
        super().__init__(message)
        self.xbn_origin = origin


def _remote_exception(type_name: str, message: str, origin: str) -> Exception:
    """An exception raised in a rank, re-raised here under its own type name and message."""
    cls = getattr(builtins, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = type(type_name, (RuntimeError,), {})
    try:
        exc = cls(message)
    except Exception:  # an exception class that takes other arguments
        exc = type(type_name, (RuntimeError,), {})(message)
    exc.xbn_origin = origin
    return exc


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


class Group:
    """R rank processes in one process group of the OS, joined in one torch process group."""

    def __init__(self, world: int, timeout: float):
        self.world, self.timeout = world, timeout
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self.pgid: int | None = None
        self.port: int | None = None
        self.pids: list[int] = []
        try:
            self._start()
        except BaseException:
            self.kill()
            raise

    def _start(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])  # the folder that holds xbn/
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
        for rank in range(self.world):
            mine, theirs = Pipe()
            proc = subprocess.Popen(
                [sys.executable, "-m", "xbn.adapters.torch.ranks", str(theirs.fileno()),
                 str(rank), str(self.world), str(self.timeout)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
                process_group=0 if self.pgid is None else self.pgid)
            theirs.close()
            self.pgid = proc.pid if self.pgid is None else self.pgid
            self.procs.append(proc)
            self.conns.append(mine)
        # everyone has imported torch before the rendezvous starts its clock; rank 0's store
        # already listens, on the port the kernel gave it (no free port is picked and let go)
        replies = self.exchange(None, STARTUP, expect="imported")
        self.pids, self.port = [reply[1] for reply in replies], replies[0][3]
        self.exchange([("init", self.port)] * self.world, STARTUP, expect="ready")

    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def exchange(self, requests: list[tuple] | None, seconds: float,
                 expect: str | None = None) -> list[tuple]:
        """Send rank i ``requests[i]`` (None: only listen) and gather every reply within
        ``seconds``; a rank that died, hung or broke the protocol ends the group."""
        dead: dict[int, str] = {}
        pending: dict[Connection, int] = {}
        for i, conn in enumerate(self.conns):
            try:
                if requests is not None:
                    conn.send(requests[i])
                pending[conn] = i
            except OSError as exc:
                dead[i] = f"unreachable ({type(exc).__name__})"
        replies: list = [None] * self.world
        deadline = time.monotonic() + seconds
        while pending and (left := deadline - time.monotonic()) > 0:
            for conn in wait(list(pending), timeout=left):
                i = pending.pop(conn)
                try:
                    replies[i] = conn.recv()
                except (EOFError, OSError):
                    dead[i] = "died"
        for i in pending.values():
            dead[i] = f"did not answer within {seconds:g} s"
        wrong = [i for i, r in enumerate(replies) if expect and r is not None and r[0] != expect
                 and r[0] != "error"]
        if dead or wrong or (expect and any(r[0] == "error" for r in replies if r)):
            self._fail(dead, replies)
        return replies

    def _fail(self, dead: dict[int, str], replies: list) -> None:
        self.kill()
        parts, origin = [], PROCESS
        for i, why in sorted(dead.items()):
            code = self.procs[i].returncode
            if why == "died" and code is not None and code < 0:
                why = f"died ({signal.Signals(-code).name})"
            elif why == "died" and code is not None:
                why = f"died (exit code {code})"
            parts.append(f"rank {i} (pid {self.procs[i].pid}) {why}")
        for i, reply in enumerate(replies):
            if reply is not None and reply[0] == "error":
                if origin == PROCESS:
                    origin = reply[3]
                parts.append(f"rank {i}: {reply[1]}: {_first_line(reply[2])}")
        raise RankFailure("; ".join(parts) + " (the process group was ended)", origin)

    def close(self, grace: float = 2.0) -> None:
        """Stop the ranks politely (``destroy_process_group``), then end what is left."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        end = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group, reap every rank, close every pipe."""
        if self.pgid is not None and any(p.poll() is None for p in self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for conn in self.conns:
            conn.close()
        self.conns = []


class TorchReplicated(Adapter):
    """``torch`` on R ranks of torch.distributed; see the module's docstring."""

    def __init__(self, base: Adapter):
        super().__init__(base.framework_id)
        self.base = base
        self.notes = base.notes  # the worker sends the base adapter's notes
        self.timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        self.group: Group | None = None
        self.layer: Layer | None = None
        self._counter = None
        atexit.register(self.close)

    def replicated(self) -> Adapter:
        """Already the replicated engine (``run_scenario`` asks every adapter for it)."""
        return self

    # -- the group ---------------------------------------------------------------------
    def _ranks(self, requests: list[tuple]) -> list:
        """Every rank's answer to its request; a refusal or exception is raised here."""
        if self.group is None:
            raise RankFailure("the process group was ended by a failure at an earlier step "
                              "of this scenario", PROCESS)
        try:
            replies = self.group.exchange(requests, self.timeout + MARGIN)
        except RankFailure:
            self.group, self.layer = None, None
            raise
        kinds = {r[0] for r in replies}
        if kinds == {"ok"}:
            return [r[1] for r in replies]
        if len({tuple(r) for r in replies}) != 1:  # the ranks disagree: the group may be
            self.group.kill()  # out of step, so it is not reused
            self.group, self.layer = None, None
        first = next(r for r in replies if r[0] != "ok")
        if first[0] == "n/a":
            raise NotApplicable(first[1])
        raise _remote_exception(first[1], first[2], first[3])

    def _all(self, *request) -> list:
        return self._ranks([request] * self.group.world if self.group else [])

    def _note(self, layer: Layer) -> None:
        options = ", ".join(f"{k}={v}" for k, v in ddp_options(layer).items())
        note = ("replicas: torch.distributed gloo on CPU over 127.0.0.1, one process per "
                f"replica, DistributedDataParallel({options or 'its defaults'})"
                + ("; synchronized: nn.SyncBatchNorm.convert_sync_batchnorm before DDP"
                   if layer.synchronized else "")
                + ("; no parameter in the layer: DDP wraps it with a gain parameter of 1 "
                   "after it (DDP refuses a module without parameters; the output is the "
                   "layer's, bit for bit)" if not (layer.center or layer.scale) else ""))
        if note not in self.notes:
            self.notes.append(note)

    # -- construction ------------------------------------------------------------------
    def build(self, layer: Layer) -> None:
        self.layer = None
        world = len(layer.replicas or ())
        if self.group is not None and (self.group.world != world or not self.group.alive()):
            self.group.close()
            self.group = None
        if self.group is None:
            self.group = Group(world, self.timeout)
        self._note(layer)
        self._all("build", layer)
        self.layer = layer

    # -- operations --------------------------------------------------------------------
    def _shards(self, x) -> list[np.ndarray]:
        return split_rows(np.asarray(x, np.float64), self.layer.replicas)

    @staticmethod
    def _gather(outputs: list):
        return join_rows(outputs)  # bfloat16 comes back as (float64, "bfloat16")

    def call(self, x, training: bool | None):
        return self._gather(self._ranks([("call", s, training) for s in self._shards(x)]))

    def predict(self, x):
        return self._gather(self._ranks([("predict", s) for s in self._shards(x)]))

    def set_trainable(self, trainable: bool) -> None:
        self._all("set_trainable", trainable)

    def set_mode(self, mode: str) -> None:
        self._all("set_mode", mode)

    def set_hyper(self, momentum, epsilon) -> None:
        self._all("set_hyper", momentum, epsilon)

    def reset(self) -> None:
        self._all("reset")

    def set_weights(self, values: dict) -> None:
        self._all("set_weights", values)

    def fit(self, x, target, step: Step, fresh_optimizer: bool):
        raise NotApplicable("fit is not supported on replicas")

    def grad(self, x, training: bool | None, weights) -> dict:
        raise NotApplicable("grad is not supported on replicas")

    def state(self) -> dict:
        """Rank 0's module state, as a user reads it back (the checkpointing rank), and every
        rank's running statistics as ``replica_*`` [R, C]."""
        states = self._all("state")
        out = {k: v for k, v in states[0].items() if k in STATE}
        self._counter = states[0].get("num_batches_tracked")
        for name in ("moving_mean", "moving_variance"):
            copies = [s.get(name) for s in states]
            if any(c is None for c in copies):
                continue
            if isinstance(copies[0], tuple):
                out[f"replica_{name}"] = (np.stack([c[0] for c in copies]), copies[0][1])
            else:
                out[f"replica_{name}"] = np.stack(copies)
        return out

    def batches_tracked(self):
        """Rank 0's ``num_batches_tracked``, as read with the last ``state()``."""
        return self._counter

    def versions(self) -> dict[str, str]:
        return self.base.versions()

    def close(self) -> None:
        if self.group is not None:
            group, self.group = self.group, None
            group.close()


def make_replicated(base: Adapter) -> Adapter:
    if base.mode == "compile":  # the ranks build eager modules: never a silent eager row
        raise NotApplicable("torch+compile: the replica ranks run eager modules (a compiled "
                            "DistributedDataParallel model is not wired up)")
    return TorchReplicated(base)
