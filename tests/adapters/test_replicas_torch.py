"""torch replicas (``xbn.adapters.torch.replicas``) against torch.distributed + DDP by hand.

The expectation comes from two processes started here with ``multiprocessing`` (spawn) that
do what a torch user does, with no xbn code: ``init_process_group("gloo")``, a one-layer
model wrapped in ``DistributedDataParallel``, two training forwards on each rank's shard and
an evaluation forward. The engine under test must give the same numbers bit for bit, keep
one process group for scenarios with the same R, report torch's own error where torch
refuses (SyncBatchNorm on CPU), and end the whole group within seconds when a rank dies or
hangs, leaving no process and no listening port behind. While a group runs, none of its
processes listens on an address other than loopback (read from /proc). A parameter-free layer
(``center = false, scale = false``), which DDP refuses on its own, runs as users run it: inside
a model with a parameterised layer after it (torch's own SyncBatchNorm_No_Affine test wraps
``BatchNormNet(affine=False)``), its output read from the BatchNorm itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import multiprocessing
import os
import signal
import socket
import time
from datetime import timedelta

import numpy as np
import pytest
import torch

from xbn.adapters.base import run_scenario
from xbn.frameworks.registry import load_adapter
from xbn.scenario.loader import parse

pytestmark = pytest.mark.slow  # process groups of ranks per case

# the G: arange(24).reshape(8, 3)**1.5 / 10 in float32, split [3, 5]
G = (np.arange(24, dtype=np.float64).reshape(8, 3) ** 1.5 / 10).astype(np.float32)
SPLIT = [3, 5]
G4, SPLIT4 = G[:4], [2, 2]  # the parameter-free scenario: replicas = [2, 2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Net(torch.nn.Module):
    def __init__(self, bn):
        super().__init__()
        self.bn = bn

    def forward(self, x):
        return self.bn(x)


def _hand_rank(rank: int, port: int, out) -> None:
    """One rank of a user's DDP job on CPU (spawned; no xbn code)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=2, timeout=timedelta(seconds=60))
    start = sum(SPLIT[:rank])
    x = torch.from_numpy(G[start:start + SPLIT[rank]].copy())
    result = {}
    for name, kwargs in (("default", {}), ("no_broadcast", {"broadcast_buffers": False})):
        bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-3)  # Keras momentum 0.9
        seen: list = []  # the running mean the layer holds when its forward starts
        bn.register_forward_pre_hook(
            lambda m, _, seen=seen: seen.append(m.running_mean.clone().numpy()))
        model = DDP(_Net(bn), **kwargs)
        steps = []
        model.train()
        for _ in range(2):  # a training loop's forward: grad enabled
            y = model(x)
            steps.append((y.detach().numpy().copy(), bn.running_mean.numpy().copy(),
                          bn.running_var.numpy().copy()))
        model.eval()
        with torch.no_grad():
            y = model(x)
        steps.append((y.numpy().copy(), bn.running_mean.numpy().copy(),
                      bn.running_var.numpy().copy()))
        result[name] = {"steps": steps, "seen": seen}
    result["no_affine"] = _no_affine_by_hand(rank)
    try:  # synchronized, as users ask for it: convert_sync_batchnorm, then DDP
        DDP(torch.nn.SyncBatchNorm.convert_sync_batchnorm(
            _Net(torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-3))))
        result["sync_error"] = None
    except Exception as exc:
        result["sync_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    torch.distributed.destroy_process_group()
    out.put((rank, result))


def _no_affine_by_hand(rank: int) -> dict:
    """BatchNorm1d(affine=False) on a [2, 2] split as a user runs it: DDP refuses the bare
    layer, so it sits in a model with a Linear after it (torch's BatchNormNet(affine=False),
    torch/testing/_internal/distributed/distributed_test.py, puts it between two); the
    layer's own output is read with a forward hook, the running statistics from its buffers."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    x = torch.from_numpy(G4[2 * rank:2 * rank + 2].copy())
    bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-3, affine=False)
    try:
        DDP(_Net(bn))
        bare_error = None
    except RuntimeError as exc:
        bare_error = str(exc)
    outputs: list = []
    bn.register_forward_hook(lambda m, i, y: outputs.append(y.detach().numpy().copy()))
    model = DDP(torch.nn.Sequential(bn, torch.nn.Linear(3, 3)))
    steps = []
    model.train()
    for _ in range(2):
        model(x)
        steps.append((outputs[-1], bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()))
    model.eval()
    with torch.no_grad():
        model(x)
    steps.append((outputs[-1], bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()))
    return {"steps": steps, "bare_error": bare_error}


@pytest.fixture(scope="module")
def by_hand():
    ctx = multiprocessing.get_context("spawn")
    out, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_hand_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(30)
    return results


TIMEOUT = 2  # seconds a collective waits (XBN_RANK_TIMEOUT), short so that a hang ends soon


@pytest.fixture(scope="module")
def engine():
    """One engine for the module, as one worker has: groups are started as R changes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XBN_RANK_TIMEOUT", str(TIMEOUT))
        base = load_adapter("torch")
        replicated = base.replicated()
    yield replicated
    base.close()


def scenario(name="replicated", synchronized=False, native=None, split=SPLIT, x=G, **keys):
    layer = {"features": 3, "momentum": 0.9, "epsilon": 1e-3, "replicas": split,
             "synchronized": synchronized, **keys}
    if native:
        layer["native"] = {"torch": native}
    return parse({"schema": 1, "name": name, "layer": layer, "inputs": {"g": x.tolist()},
                  "steps": [{"op": "call", "input": "g", "training": True},
                            {"op": "call", "input": "g", "training": True},
                            {"op": "predict", "input": "g"}]})


def observed(engine, sc) -> dict:
    return {(o["step"], o["quantity"]): o for o in run_scenario(engine, sc)}


@pytest.mark.parametrize("variant", ["default", "no_broadcast"])
def test_unsynchronized_matches_ddp_by_hand(engine, by_hand, variant):
    native = {"broadcast_buffers": False} if variant == "no_broadcast" else None
    obs = observed(engine, scenario(native=native))
    hand = [by_hand[r][variant]["steps"] for r in range(2)]
    for step in range(3):
        assert obs[step, "output"]["status"] == "ok", obs[step, "output"]
        want = np.concatenate([hand[0][step][0], hand[1][step][0]])
        np.testing.assert_array_equal(np.asarray(obs[step, "output"]["value"]), want)
        for q, i in (("moving_mean", 1), ("moving_variance", 2)):
            np.testing.assert_array_equal(obs[step, q]["value"], hand[0][step][i])  # rank 0
            np.testing.assert_array_equal(obs[step, f"replica_{q}"]["value"],
                                          [hand[0][step][i], hand[1][step][i]])
    seen = by_hand[1][variant]["seen"]
    rank0_after_first = hand[0][0][1]
    copies = np.asarray(obs[1, "replica_moving_mean"]["value"])
    if variant == "default":  # rank 1 starts its second forward from rank 0's buffers
        np.testing.assert_array_equal(seen[1], rank0_after_first)
        local = G[3:].mean(axis=0, dtype=np.float64)
        np.testing.assert_allclose(copies[1], 0.9 * rank0_after_first + 0.1 * local, rtol=1e-6)
        # and the evaluation forward after a grad-enabled one broadcasts too
        np.testing.assert_array_equal(obs[2, "replica_moving_mean"]["value"],
                                      [hand[0][1][1], hand[0][1][1]])
    else:  # each rank keeps its own copy
        np.testing.assert_array_equal(seen[1], hand[1][0][1])
        assert not np.allclose(copies[0], copies[1])


def test_synchronized_on_cpu_is_torchs_own_error(engine, by_hand):
    assert by_hand[0]["sync_error"]  # torch refuses SyncBatchNorm on CPU
    obs = observed(engine, scenario(name="synced", synchronized=True))
    for step in range(3):
        row = obs[step, "output"]
        assert row["status"] == "error" and row["origin"] == "torch", row
        assert row["message"] == f"layer not built: {by_hand[0]['sync_error']}"


def test_a_parameter_free_layer_runs_as_users_run_it(engine, by_hand):
    """center = false, scale = false on replicas = [2, 2]: the numbers of the layer inside a
    user's DDP model, bit for bit, where DDP alone refuses the layer."""
    assert "doesn't have any parameter" in by_hand[0]["no_affine"]["bare_error"]
    obs = observed(engine, scenario(name="no-affine", split=SPLIT4, x=G4,
                                    center=False, scale=False))
    hand = [by_hand[r]["no_affine"]["steps"] for r in range(2)]
    for step in range(3):
        assert obs[step, "output"]["status"] == "ok", obs[step, "output"]
        want = np.concatenate([hand[0][step][0], hand[1][step][0]])
        np.testing.assert_array_equal(np.asarray(obs[step, "output"]["value"]), want)
        for q, i in (("moving_mean", 1), ("moving_variance", 2)):
            np.testing.assert_array_equal(obs[step, q]["value"], hand[0][step][i])  # rank 0
            np.testing.assert_array_equal(obs[step, f"replica_{q}"]["value"],
                                          [hand[0][step][i], hand[1][step][i]])
        assert (step, "gamma") not in obs and (step, "beta") not in obs


def test_a_parameter_free_synchronized_layer_is_torchs_sync_error(engine, by_hand):
    """Synchronized, the same model meets the refusal a user meets: SyncBatchNorm on CPU."""
    obs = observed(engine, scenario(name="no-affine-synced", synchronized=True, split=SPLIT4,
                                    x=G4, center=False, scale=False))
    row = obs[0, "output"]
    assert row["status"] == "error" and row["origin"] == "torch", row
    assert row["message"] == f"layer not built: {by_hand[0]['sync_error']}"


def _listeners(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket the processes ``pids`` hold: the
    LISTEN rows (state 0A) of /proc/net/tcp and tcp6, matched by inode to the sockets in
    /proc/<pid>/fd. Addresses are hex words in host (little-endian) order."""
    owner = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owner[link[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
        for row in rows:
            if row[3] != "0A" or row[9] not in owner:
                continue
            address, port = row[1].split(":")
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1]
                           for i in range(0, len(address), 8))
            found.append((owner[row[9]], str(ipaddress.ip_address(raw)), int(port, 16)))
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc")
def test_a_group_listens_on_loopback_only(engine):
    """Mid-run, every listening socket of the worker and its ranks is on loopback: the
    rendezvous store's (rank 0, on the group's port) as well as gloo's."""
    seen = []
    for o in run_scenario(engine, scenario(name="loopback")):
        if (o["step"], o["quantity"]) == (0, "output"):
            assert o["status"] == "ok", o
            pids = list(engine.group.pids)
            seen = _listeners([os.getpid(), *pids])
            store = (pids[0], "127.0.0.1", engine.group.port)
    assert [s for s in seen if not _loopback(s[1])] == [], seen
    assert store in seen, seen  # and the check saw the store


def test_group_is_set_up_once_per_r(engine):
    list(run_scenario(engine, scenario(name="first")))
    pids, port = list(engine.group.pids), engine.group.port
    obs = observed(engine, scenario(name="second"))
    assert obs[2, "output"]["status"] == "ok"
    assert engine.group.pids == pids  # the same rank processes
    obs = observed(engine, scenario(name="three", split=[2, 3, 3]))
    assert obs[2, "output"]["status"] == "ok"
    assert len(engine.group.pids) == 3 and not set(engine.group.pids) & set(pids)
    assert not any(_running(p) for p in pids)  # the R=2 group was ended
    assert not _listening(port)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie left unreaped counts as left behind)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "X"
    except FileNotFoundError:
        return False


def _listening(port: int) -> bool:
    """Whether something still listens on 127.0.0.1:port (SO_REUSEADDR, as servers bind:
    TIME_WAIT leftovers of closed connections do not block it, a listener does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return True
    return False


def _lose_a_rank(engine, sc, how) -> tuple[dict, float, list[int], int]:
    """Run ``sc``; after step 0 (which must run) send rank 1 signal ``how``. Step 1's output
    row, the seconds from the signal to that row, the group's pids and port."""
    for o in run_scenario(engine, sc):
        if (o["step"], o["quantity"]) == (0, "output"):
            assert o["status"] == "ok", o
        if (o["step"], o["quantity"]) == (0, "replica_moving_variance"):
            pids, port = list(engine.group.pids), engine.group.port
            os.kill(pids[1], how)
            sent = time.monotonic()
        if (o["step"], o["quantity"]) == (1, "output"):
            row, seconds = o, time.monotonic() - sent
    return row, seconds, pids, port


def test_a_lost_rank_ends_the_group(engine):
    before = None
    for how, split in ((signal.SIGKILL, [2, 3, 3]), (signal.SIGSTOP, SPLIT)):
        row, seconds, pids, port = _lose_a_rank(engine, scenario(f"lost-{how.name.lower()}",
                                                                 split=split), how)
        assert row["status"] == "error" and row["origin"] != "xbn", row
        assert "rank 1" in row["message"], row
        assert seconds < TIMEOUT + 3 + 2, seconds  # the collective timeout, the margin, slack
        assert not any(_running(p) for p in pids), how  # no orphan, no zombie
        assert not _listening(port), how
        # the scenario after a failure runs (its step 0 did) on a fresh group
        assert before is None or not set(pids) & set(before)
        before = pids


@pytest.mark.parametrize("native, replicas, error", [
    ({"broadcast_buffers": False}, None, "only meaningful with replicas"),
    ({"forward_sync_buffers": True}, None, "only meaningful with replicas"),
    ({"broadcast_buffers": 1}, SPLIT, "expected true or false"),
    ({"broadcast_buffers": False}, SPLIT, None),
])
def test_ddp_options_are_checked_when_loading(native, replicas, error):
    """DDP's keywords are no BatchNorm arguments: refused without replicas (the single-process
    module would get them), booleans with them."""
    from xbn.scenario.ddp import check_ddp_options
    from xbn.scenario.loader import Layer, ScenarioError, _Checker

    layer = Layer(features=3, native={"torch": native}, replicas=replicas)
    if error is None:
        check_ddp_options(_Checker("<memory>"), layer)
    else:
        with pytest.raises(ScenarioError, match=error):
            check_ddp_options(_Checker("<memory>"), layer)
