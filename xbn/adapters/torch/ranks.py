"""One rank of the torch replicas engine: the process a torch user starts per replica.

``xbn.adapters.torch.replicas`` starts R of these (``python -m xbn.adapters.torch.ranks``)
and talks to each over a socket pair (``multiprocessing.connection.Connection``; the file
descriptor is the first argument). A rank imports torch (rank 0 also starts the rendezvous
store, see ``loopback_store``), says ``imported`` (rank 0 with the store's port), waits for
``("init", port)``, joins ``torch.distributed.init_process_group("gloo", store=...)`` with a
bounded timeout and then serves requests until ``stop`` or EOF. Inside, the layer is built
exactly as the single-process torch adapter builds it (``TorchAdapter.build``: module class,
dtype, momentum conversion, memory format), put in a small ``nn.Module`` (``Net``) and wrapped
in ``DistributedDataParallel`` on CPU (no ``device_ids``), after
``nn.SyncBatchNorm.convert_sync_batchnorm`` when the layer is ``synchronized``, as users do.

Every reply is ("ok", value), ("n/a", why) or ("error", type name, message, origin): the
origin is found here, where the traceback is (``xbn.adapters.errors.exception_origin``).
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import os
import signal
import socket
import sys
from dataclasses import replace
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ...scenario.ddp import ddp_options, without_ddp_options
from ..base import NotApplicable
from ..errors import exception_origin
from .adapter import TorchAdapter

# this module's code is xbn's own, also when it runs as ``__main__`` (``python -m``)
OWN = {__name__, "xbn.adapters.torch.ranks"}


def _die_with_parent() -> None:
    """Linux: SIGKILL this rank when the worker that started it dies, so that a worker killed
    by its own timeout leaves no rank behind (prctl PR_SET_PDEATHSIG). Best effort."""
    with contextlib.suppress(Exception):  # not Linux: nothing to do
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def split_native(layer) -> tuple:
    """(layer without the DDP options, the DDP keywords given): the engine's options are not
    BatchNorm constructor arguments, so the module is built from the rest; DDP gets only the
    keywords the scenario wrote (its own defaults otherwise: torch 2.13 warns on an explicit
    ``broadcast_buffers``, a deprecated name)."""
    return replace(layer, native=without_ddp_options(layer.native)), ddp_options(layer)


def loopback_store(world: int, timeout: float) -> dist.TCPStore:
    """Rank 0's rendezvous store, listening on 127.0.0.1 only, on a port the kernel picked.

    torch's store server binds every interface whatever host name it is given: libuv's
    ``UvTcpServer::makeWithPort`` binds ``::`` (or ``0.0.0.0``) and the host name only tells
    clients where to connect (torch/csrc/distributed/c10d/TCPStoreLibUvBackend.cpp), so
    ``init_method="tcp://127.0.0.1:<port>"`` listened on ``*:<port>``. The one way torch
    offers to choose the address is ``master_listen_fd``: a socket bound here to
    127.0.0.1:0, which also ends the race of picking a free port, closing it and handing the
    number on (the socket is never closed before the store listens on it). SO_REUSEADDR as
    libuv's own bind sets it (``uv__tcp_bind``): without it, the connections rank 0 still held
    when it died leave TIME_WAIT entries that keep the port from being bound for a minute."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        store = dist.TCPStore("127.0.0.1", sock.getsockname()[1], world, True,
                              timedelta(seconds=timeout), wait_for_workers=False,
                              master_listen_fd=sock.fileno())
    except BaseException:
        sock.close()
        raise
    sock.detach()  # the store's server owns the descriptor now and closes it
    return store


class Net(torch.nn.Module):
    """The smallest model a user wraps in DDP: one BatchNorm layer, and a gain of 1 after
    it when the layer has no parameter that trains.

    DDP refuses a module without such a parameter ("DistributedDataParallel is not needed
    when a module doesn't have any parameter that requires a gradient",
    torch/nn/parallel/distributed.py), so a user's parameter-free BatchNorm always sits in a
    model with other layers (torch's own SyncBatchNorm_No_Affine test wraps
    ``BatchNormNet(affine=False)``, Linear - BatchNorm - Linear,
    torch/testing/_internal/distributed/distributed_test.py). The gain is such a layer whose
    output is the BatchNorm's bit for bit: ``y * 1`` is exact in IEEE arithmetic (zeros keep
    their sign, infinities and NaNs stay), and a 0-dim float32 parameter does not promote
    ``y``'s dtype (16-bit outputs stay 16-bit). It is created on the CPU: a CPU 0-dim tensor
    multiplies tensors of any device. A layer with parameters gets no gain: the model is then
    exactly the one-layer model users and torch's docs wrap."""

    def __init__(self, bn: torch.nn.Module):
        super().__init__()
        self.bn = bn
        trains = any(p.requires_grad for p in bn.parameters())
        self.gain = None if trains else torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        return y if self.gain is None else y * self.gain


class Rank:
    """The rank's model and the requests it answers (one method per request name)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        self.adapter = TorchAdapter("torch")
        self.model = None

    def build(self, layer) -> None:
        self.model = None
        plain, options = split_native(layer)
        accepted = inspect.signature(DistributedDataParallel).parameters
        for key in options:
            if key not in accepted:
                raise NotApplicable(f"torch {torch.__version__}'s DistributedDataParallel "
                                    f"has no {key} argument")
        self.adapter.build(plain)
        net = Net(self.adapter.module)
        if layer.synchronized:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
            self.adapter.module = net.bn  # state, set_weights and reset act on the new module
        # CPU: no device_ids (torch/nn/parallel/distributed.py: DistributedDataParallel)
        self.model = DistributedDataParallel(net, **options)

    def call(self, x, training):
        """A training-loop forward: grad enabled, so DDP syncs buffers as in training
        (``_pre_forward``/``_post_forward`` decide on ``torch.is_grad_enabled()``)."""
        if training is not None:
            self.model.train(training)
        return self.adapter._result(self.model(self.adapter._tensor(x)))

    def predict(self, x):
        """``model.eval()`` and a forward under ``torch.no_grad()``, as evaluation loops do;
        the mode is restored as the single-process adapter does."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.adapter._result(self.model(self.adapter._tensor(x)))
        finally:
            self.model.train(was_training)

    def set_mode(self, mode: str) -> None:
        self.model.train(mode == "train")

    def set_trainable(self, trainable: bool) -> None:
        self.adapter.set_trainable(trainable)

    def set_hyper(self, momentum, epsilon) -> None:
        self.adapter.set_hyper(momentum, epsilon)

    def reset(self) -> None:
        self.adapter.reset()

    def set_weights(self, values) -> None:
        """Every rank loads the same values into its module, as every rank of a user's job
        loads the same checkpoint."""
        self.adapter.set_weights(values)

    def state(self) -> dict:
        out = self.adapter.state()
        out["num_batches_tracked"] = self.adapter.batches_tracked()
        return out


def _answer(rank: Rank, request: tuple):
    name, args = request[0], request[1:]
    try:
        return ("ok", getattr(rank, name)(*args))
    except NotApplicable as exc:
        return ("n/a", str(exc))
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc), exception_origin(exc, OWN))


def serve(conn: Connection, rank: int, world: int, timeout: float) -> int:
    """The rank's life: say it is up (torch imported; rank 0: the store listens, on this
    port), rendezvous when told the port, answer requests; EOF (the worker went away) or
    ``stop`` ends it."""
    server = Rank(rank, world)
    try:
        store = loopback_store(world, timeout) if rank == 0 else None
    except Exception as exc:
        conn.send(("error", type(exc).__name__, str(exc), exception_origin(exc, OWN)))
        return 1
    conn.send(("imported", os.getpid(), torch.__version__, store and store.port))
    try:
        request = conn.recv()
    except EOFError:
        return 0
    try:
        if store is None:  # a client of rank 0's store
            store = dist.TCPStore("127.0.0.1", request[1], world, False,
                                  timedelta(seconds=timeout))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout))
    except Exception as exc:
        conn.send(("error", type(exc).__name__, str(exc), exception_origin(exc, OWN)))
        return 1
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            break
        if request[0] == "stop":
            dist.destroy_process_group()
            conn.send(("ok", None))
            break
        conn.send(_answer(server, request))
    return 0


def main(argv: list[str]) -> None:
    _die_with_parent()
    fd, rank, world, timeout = int(argv[0]), int(argv[1]), int(argv[2]), float(argv[3])
    code = serve(Connection(fd), rank, world, timeout)
    # nothing is left to clean up after destroy_process_group; a normal interpreter exit
    # waits the process group's timeout on torch.distributed's objects (5 s measured for 5 s)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
