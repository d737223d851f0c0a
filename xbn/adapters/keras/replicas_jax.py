"""keras-jax on ``keras.distribution.DataParallel`` over R JAX host devices (the worker offers
them through ``--xla_force_host_platform_device_count``).

Keras 3's JAX distribution is SPMD: variables are laid out on the device mesh (BatchNorm's
are replicated, ``PartitionSpec(None)``), the batch is sharded on its first axis, and the
layer's ``jnp.mean``/``var`` over the batch axis are reductions over the GLOBAL sharded array,
which XLA completes with its own all-reduce. So without anything "synchronized" every replica
normalizes with the count-weighted global statistics, and there is one logical copy of the
moving statistics (each device holds an identical replica of it).

A ``jax.Array`` shards evenly: ``NamedSharding`` tiles the batch axis into equal parts, so an
unequal split is not something DataParallel can express (n/a, with that reason).

The distribution is entered with ``Distribution.scope()`` around build, call, predict and
set_weights rather than ``set_distribution``: the same global setting for the duration,
without leaving it on for the worker's unreplicated scenarios.
"""

from __future__ import annotations

import jax
import keras
import numpy as np

from ...scenario.loader import Layer
from ..base import Adapter, NotApplicable
from ..rows import join_rows
from .adapter_keras3 import _numpy
from .masking import keras_mask
from .replicas_common import ReplicatedKeras, keras_refuses_synchronized

STATS = ("moving_mean", "moving_variance")


class DataParallelReplicas(ReplicatedKeras):
    def __init__(self, base: Adapter):
        super().__init__(base)
        self.distributions: dict[int, keras.distribution.DataParallel] = {}

    def _distribution(self, count: int) -> keras.distribution.DataParallel:
        """One DataParallel per replica count per worker, over the first ``count`` JAX
        devices."""
        if count not in self.distributions:
            devices = jax.devices()
            if len(devices) < count:
                raise RuntimeError(
                    f"{count} replicas need {count} JAX host devices, JAX has {len(devices)}: "
                    "the worker's XLA_FLAGS did not offer them "
                    "(--xla_force_host_platform_device_count, xbn.execution.worker.prepare_replicas)")
            self.distributions[count] = keras.distribution.DataParallel(
                devices=devices[:count])
        return self.distributions[count]

    def build(self, layer: Layer) -> None:
        keras_refuses_synchronized(layer)  # keras: "only supported with the TensorFlow backend"
        if len(set(layer.replicas)) > 1:
            raise NotApplicable(
                f"keras.distribution.DataParallel shards the batch evenly over its devices (a "
                f"jax NamedSharding tiles an axis into equal parts); rows {layer.replicas} "
                "per replica cannot be expressed")
        self.layer = layer
        self.distribution = self._distribution(len(layer.replicas))
        with self.distribution.scope():
            self.base.build(layer)
        self.model, self.bn = self.base.model, self.base.bn
        self._note(
            f"keras.distribution.DataParallel over {len(layer.replicas)} JAX host devices "
            f"(rows {layer.replicas}): the batch sharded on its first axis, model called on "
            "the sharded array; statistics are reductions over the global batch")

    def _sharded(self, x: np.ndarray):
        """The full batch as one jax.Array sharded over the mesh's batch axis (the layout
        DataParallel gives data: ``get_data_layout``)."""
        tensor = self.base._tensor(x)
        return keras.distribution.distribute_tensor(
            tensor, self.distribution.get_data_layout(tensor.shape))

    def call(self, x, training):
        with self.distribution.scope():
            kwargs = {} if training is None else {"training": training}
            return _numpy(self.model(self._sharded(x), **kwargs))

    def call_masked(self, x, training, mask):
        """``call`` with the mask laid out as the data is (sharded on the batch axis; one
        broadcast along it is repeated for every row)."""
        m = keras_mask(mask)
        if m.shape[0] == 1:
            m = np.repeat(m, x.shape[0], axis=0)
        with self.distribution.scope():
            kwargs = {} if training is None else {"training": training}
            tensor = keras.ops.convert_to_tensor(m)
            sharded = keras.distribution.distribute_tensor(
                tensor, self.distribution.get_data_layout(tensor.shape))
            return _numpy(self.model(self._sharded(x), mask=sharded, **kwargs))

    def predict(self, x):
        with self.distribution.scope():  # Keras' data adapter shards the batch itself
            return self.base.predict(x)

    def set_weights(self, values) -> None:
        with self.distribution.scope():
            self.base.set_weights(values)

    def state(self) -> dict:
        state = self.base.state()
        order = {d: i for i, d in enumerate(self.distribution.device_mesh.devices.flat)}
        for name in STATS:
            variable = getattr(self.bn, name, None)
            if variable is None:
                continue
            shards = sorted(variable.value.addressable_shards,
                            key=lambda s: order.get(s.device, len(order)))
            state[f"replica_{name}"] = join_rows([_numpy(s.data) for s in shards],
                                                   stack=True)
        return state
