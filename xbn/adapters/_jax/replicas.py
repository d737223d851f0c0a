"""What the four JAX families share to run a layer on R host devices (issue 12).

The engine is JAX's own: a ``jax.sharding.Mesh`` over the first R host devices (the worker
offers them with ``--xla_force_host_platform_device_count``, ``xbn.execution.worker.prepare_replicas``)
and ``jax.shard_map`` over one mesh axis, :data:`AXIS`, jitted once per layer configuration and
step kind. Each framework's own cross-replica argument names that axis when the layer is
synchronized (Flax ``axis_name``, Haiku ``cross_replica_axis``, Equinox ``axis_name``); nothing
here computes a statistic.

Every replica keeps its own copy of the layer's state: the state pytree gets a leading replica
axis sharded over the mesh, so unsynchronized copies can diverge, as they do under ``pmap``.
The host reads replica 0's copy back (what ``flax.jax_utils.unreplicate`` gives). Parameters
(gamma, beta) are one copy replicated to every device: no step on replicas changes them.

shard_map needs equal shards: an unequal split pads every replica's rows to the largest with
zeros and passes the framework's ``mask`` (Flax) marking the real rows, as Flax users do; the
padded rows' outputs are dropped. A framework without a mask argument cannot split unequally.

``[layer.native.<id>] replicas_engine = "jit"`` (default ``"shard_map"``) runs one ``jax.jit``
over the batch sharded with ``NamedSharding`` instead, with no axis name: XLA's SPMD partitioner
then reduces over the whole batch (Flax's docstring of ``axis_name``: "For SPMD jit, you do not
need to manually synchronize"), synchronized or not, and the engine keeps one copy of the state
that every device holds. The key is taken out before the single-device adapter builds.

A :class:`ReplicatedJax` drives the single-device adapter of its framework as the *host model*:
``base.build`` makes and validates the layer (n/a reasons, notes, dtypes), ``base.state()``
reads one copy by that framework's rule, ``base.set_weights`` loads values into one copy.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ...scenario.loader import Layer
from ...scenario.model import mask_elements, split_rows
from ..base import Adapter, NotApplicable
from . import common as jc

AXIS = "replicas"  # the mesh axis: one host device per replica
ENGINE_KEY = "replicas_engine"  # [layer.native.<id>]: which JAX engine runs the replicas
ENGINES = ("shard_map", "jit")
PREDICT = "predict"  # the step kind of the framework's inference entry point


class Split:
    """Rows per replica, in batch order, as equal shards (padded) for shard_map."""

    def __init__(self, rows: list[int]):
        self.rows = list(rows)
        self.count = len(rows)
        self.width = max(rows)
        self.padded = len(set(rows)) > 1

    def pad(self, x: np.ndarray) -> np.ndarray:
        """[sum(rows), ...] -> [R * width, ...]: replica i's rows, then zeros, per shard."""
        out = np.zeros((self.count * self.width,) + x.shape[1:], x.dtype)
        for i, part in enumerate(split_rows(x, self.rows)):
            out[i * self.width:i * self.width + len(part)] = part
        return out

    def mask(self, ndim: int) -> np.ndarray:
        """True on real rows, shaped [R * width, 1, ...] to broadcast against the input."""
        valid = np.zeros(self.count * self.width, bool)
        for i, n in enumerate(self.rows):
            valid[i * self.width:i * self.width + n] = True
        return valid.reshape((-1,) + (1,) * (ndim - 1))

    def unpad(self, y: np.ndarray) -> np.ndarray:
        """Drop the padded rows' outputs; the replicas' outputs in batch order."""
        return np.concatenate([y[i * self.width:i * self.width + n]
                               for i, n in enumerate(self.rows)])


_MESHES: dict[int, Mesh] = {}


def mesh(count: int) -> Mesh:
    """The mesh over the first ``count`` host devices (one per worker and count)."""
    if count not in _MESHES:
        devices = jax.devices()
        if len(devices) < count:
            raise RuntimeError(
                f"{count} replicas need {count} host devices, jax offers {len(devices)}: the "
                "worker sets --xla_force_host_platform_device_count before jax is imported "
                "(xbn.execution.worker.prepare_replicas)")
        _MESHES[count] = Mesh(np.array(devices[:count]), (AXIS,))
    return _MESHES[count]


def stacked(tree, where: Mesh):
    """Every replica's copy of ``tree``: a leading replica axis, sharded over the mesh."""
    count = where.devices.size
    sharding = NamedSharding(where, P(AXIS))
    return jax.tree.map(lambda a: jax.device_put(np.stack([np.asarray(a)] * count), sharding),
                        tree)


def replica(tree, i: int):
    """Replica ``i``'s copy of a stacked tree, on the host (``unreplicate`` for i = 0)."""
    return jax.tree.map(lambda a: jax.device_get(a[i]), tree)


def restack(copies: list, where: Mesh):
    """The stacked tree of a list of per-replica trees."""
    sharding = NamedSharding(where, P(AXIS))
    return jax.tree.map(lambda *a: jax.device_put(np.stack([np.asarray(v) for v in a]),
                                                  sharding), *copies)


class ReplicatedJax(Adapter):
    """The shard_map engine around one JAX framework's single-device adapter (the host model).

    A subclass says how the host model's (params, stats) pytrees are read and written and
    what one device runs: :meth:`local` returns ``f(params, stats, x, mask) -> (y, stats)``.
    """

    masks = False  # whether the framework's BatchNorm takes a mask (unequal splits)
    check_vma = True  # shard_map's type check of device-varying values (see Equinox)
    mask_reason = ""  # why not, for the n/a of an unequal split

    def __init__(self, base: Adapter):
        super().__init__(base.framework_id)
        self.base = base
        self.notes = base.notes  # one list: the base's notes from build and the engine's
        self._compiled: dict = {}
        # "shard_map": per-device steps, statistics synchronized only through the axis name;
        # "jit": one jit over the batch sharded with NamedSharding, which XLA's SPMD
        # partitioner reduces over the whole batch without any axis name (one copy of state)
        self.engine = "shard_map"
        self._generation = 0  # bumped where a layer without a config key may change

    # -- what a framework provides

    @abstractmethod
    def host_tree(self) -> tuple:
        """(params, stats) of the host model (the base adapter)."""

    @abstractmethod
    def load_host_tree(self, params, stats) -> None:
        """Write (params, stats) into the host model, whose ``state()`` then reads them."""

    @abstractmethod
    def local(self, kind, masked: bool) -> Callable:
        """What one device runs for ``kind`` (True/False/None: training flag; PREDICT)."""

    def config_key(self):
        """Hashable: two layers with the same key compile to the same step, across scenarios;
        None: compile once per build (and after set/mode changes)."""
        return None

    def engine_note(self) -> str:
        pad = (f"; every replica's rows padded to {self.split.width} with zeros, mask= marking "
               "its own" if self.split.padded else "")
        if self.engine == "jit":
            return (f"jax.jit over the batch sharded with NamedSharding(Mesh({self.split.count} "
                    f"host devices), P('{AXIS}')), no axis name; one copy of the statistics"
                    + pad)
        sync = self.sync_note() if self.synchronized else "no axis name (unsynchronized)"
        return f"jax.shard_map over a Mesh of {self.split.count} host devices, {sync}" + pad

    def sync_note(self) -> str:
        return f"axis name '{AXIS}'"

    def prepare(self, layer: Layer) -> Layer:
        """The layer the base adapter builds: ``[layer.native.<id>] replicas_engine`` (the
        engine, not a constructor argument) taken out, so the single-device adapter never
        sees it."""
        native = dict(layer.native.get(self.framework_id, {}))
        engine = native.pop(ENGINE_KEY, "shard_map")
        if engine not in ENGINES:
            raise NotApplicable(f"[layer.native.{self.framework_id}] {ENGINE_KEY} = "
                                f"{engine!r}: expected one of {', '.join(ENGINES)}")
        self.engine = engine
        return dataclasses.replace(layer, native={**layer.native, self.framework_id: native})

    @property
    def axis_named(self) -> bool:
        """Whether the framework's cross-replica axis argument is given: synchronized on
        shard_map (a jit over a sharded batch has no axis to name)."""
        return self.synchronized and self.engine == "shard_map"

    def adopt(self, layer: Layer) -> None:
        """After ``base.build``: give the host model its cross-replica axis if synchronized."""

    # -- building

    def build(self, layer: Layer) -> None:
        split = Split(layer.replicas)
        if split.padded and not self.masks:
            raise NotApplicable(
                f"unequal replicas {layer.replicas}: shard_map and pmap need equal shards, and "
                f"{self.mask_reason}, so padded rows would enter the statistics")
        self.mesh = mesh(split.count)  # fails before the base builds anything
        self.layer, self.split = layer, split
        self._generation += 1
        self.synchronized = bool(layer.synchronized)
        self.base.build(self.prepare(layer))
        self.adopt(layer)
        params, stats = self.host_tree()
        self.params = jax.device_put(params, NamedSharding(self.mesh, P()))
        self.stats = stacked(stats, self.mesh)
        note = f"{self.framework_id} replicas: {self.engine_note()}"
        if note not in self.notes:
            self.notes.append(note)

    # -- steps

    def to_device(self, x: np.ndarray) -> jax.Array:
        """The host batch (scenario layout, float64) as the framework's input array."""
        return jc.to_jax(x, self.layer.dtype)

    def from_device(self, y):
        return jc.to_numpy(y)

    def _compile(self, kind, masked: bool):
        fn = self.local(kind, masked)
        count = self.split.count

        def body(params, stats, x, mask):
            mine = jax.tree.map(lambda a: a[0], stats)
            y, new = fn(params, mine, x, mask if masked else None)
            if self.engine == "jit":  # one copy, which every device holds
                return y, jax.tree.map(lambda a: jax.numpy.stack([a] * count), new)
            return y, jax.tree.map(lambda a: a[None], new)

        if self.engine == "jit":
            sharded = NamedSharding(self.mesh, P(AXIS))
            return jax.jit(body, out_shardings=(sharded, sharded))
        return jax.jit(jax.shard_map(body, mesh=self.mesh,
                                     in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                                     out_specs=(P(AXIS), P(AXIS)), check_vma=self.check_vma))

    def _step(self, kind, masked: bool):
        config = self.config_key()
        key = (("build", self._generation) if config is None else config, self.engine,
               self.synchronized, kind, masked, self.split.count)
        if key not in self._compiled:
            if len(self._compiled) >= 64:  # a long fuzzing worker: keep the memory bounded
                self._compiled.clear()
            self._compiled[key] = self._compile(kind, masked)
        return self._compiled[key]

    def run(self, x: np.ndarray, kind, mask=None):
        """One step on every replica; returns the outputs concatenated in batch order. A step's
        ``mask`` joins the padding's in the framework's mask argument: every element's,
        padded like the rows (``mask_elements``)."""
        padded = self.split.pad(np.asarray(x, np.float64))
        xj = self.to_device(padded)
        sharding = NamedSharding(self.mesh, P(AXIS))
        xj = jax.device_put(xj, sharding)
        valid = self.split.mask(xj.ndim)
        if mask is not None:
            valid = valid & self.split.pad(mask_elements(mask, np.shape(x), self.layer.layout))
        y, stats = self._step(kind, self.split.padded or mask is not None)(
            self.params, self.stats, xj, jax.device_put(valid, sharding))
        if kind is not PREDICT:
            self.stats = stats
        out = self.from_device(y)
        if isinstance(out, tuple):
            return self.split.unpad(out[0]), out[1]
        return self.split.unpad(out)

    def call(self, x, training):
        return self.run(x, training)

    def predict(self, x):
        return self.run(x, PREDICT)

    def call_masked(self, x, training, mask):
        if not self.masks:
            raise NotApplicable(f"{self.framework_id}'s BatchNorm takes no mask")
        return self.run(x, training, mask)

    def predict_masked(self, x, mask):
        if not self.masks:
            raise NotApplicable(f"{self.framework_id}'s BatchNorm takes no mask")
        return self.run(x, PREDICT, mask)  # inference: the mask changes nothing

    # -- state, through the host model's own rules

    def _each_copy(self) -> list[dict]:
        params = jax.device_get(self.params)
        out = []
        for i in range(self.split.count):
            self.load_host_tree(params, replica(self.stats, i))
            out.append(self.base.state())
        self.load_host_tree(params, replica(self.stats, 0))
        return out

    def state(self) -> dict:
        copies = self._each_copy()
        out = dict(copies[0])  # replica 0's copy, as unreplicate reads it
        for q in ("moving_mean", "moving_variance"):
            if q not in out:
                continue
            if isinstance(out[q], tuple):  # bfloat16: (float64 values, its name)
                out[f"replica_{q}"] = (np.stack([c[q][0] for c in copies]), out[q][1])
            else:  # the framework's own dtype, as the host copy is reported
                out[f"replica_{q}"] = np.stack([np.asarray(c[q]) for c in copies])
        return out

    def set_weights(self, values) -> None:
        """Loaded into every replica's copy, as users load a host model then replicate it;
        statistics not given keep each replica's own value."""
        params = jax.device_get(self.params)
        copies = []
        for i in range(self.split.count):
            self.load_host_tree(params, replica(self.stats, i))
            self.base.set_weights(values)
            new_params, new_stats = self.host_tree()
            # a copy: NNX states hold the Variables that the next load updates in place
            copies.append(jax.tree.map(np.array, new_stats))
        self.params = jax.device_put(new_params, NamedSharding(self.mesh, P()))
        self.stats = restack(copies, self.mesh)

    def set_trainable(self, trainable: bool) -> None:
        self.base.set_trainable(trainable)

    def set_mode(self, mode: str) -> None:
        self.base.set_mode(mode)
        self._generation += 1

    def set_hyper(self, momentum, epsilon) -> None:
        self.base.set_hyper(momentum, epsilon)
        self._generation += 1

    def reset(self) -> None:
        self.base.reset()

    def fit(self, x, target, step, fresh_optimizer):
        raise NotApplicable("fit on replicas is not supported yet")

    def grad(self, x, training, weights):
        raise NotApplicable("grad on replicas is not supported yet")

    def versions(self) -> dict[str, str]:
        return self.base.versions()

    def close(self) -> None:
        """Host devices belong to the process: nothing to release."""
