"""Keras 3 (TensorFlow backend) and tf-keras on ``tf.distribute.MirroredStrategy`` over
logical CPU devices, driven as a custom training loop drives it.

* The single-device adapter builds the model inside ``strategy.scope()`` with
  ``BatchNormalization(synchronized=layer.synchronized)``: its variables become distributed
  variables (Keras 3: ``MirroredVariable``, ON_WRITE, aggregation NONE, so an unsynchronized
  replica writes its own copy; tf-keras: the moving statistics are ``SyncOnReadVariable``,
  ON_READ with aggregation MEAN).
* ``call``: the full batch is split into the scenario's rows per replica by
  ``strategy.experimental_distribute_values_from_function`` and the model runs under
  ``strategy.run`` inside a ``tf.function`` (one per ``training`` value, traced afresh after
  a set); the replicas' outputs (``experimental_local_results``) are concatenated.
* ``predict``: ``model.predict`` on ``strategy.distribute_datasets_from_function`` whose
  dataset holds one element per replica (its rows): MirroredStrategy hands consecutive
  elements to consecutive replicas, so each replica predicts its own rows with its own copy.
* ``state``: ``layer.moving_mean`` read on the host (cross-replica context: Keras 3 reads the
  primary copy, replica 0's; tf-keras aggregates ON_READ variables with their MEAN), and every
  replica's component from ``strategy.experimental_local_results(variable)``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ...scenario.loader import Layer
from ...scenario.model import split_rows
from ..base import Adapter
from ..rows import join_rows
from .masking import keras_mask
from .replicas_common import ReplicatedKeras, with_synchronized

STATS = ("moving_mean", "moving_variance")


def _host_numpy(framework_id: str):
    """The base adapter's tensor-to-numpy conversion (bfloat16 widened, with its name)."""
    if framework_id == "tf-keras":
        from .adapter_tf_keras import _output

        return _output
    from .adapter_keras3 import _numpy

    return _numpy


def _tf_variable(variable):
    """The TensorFlow variable behind a layer's weight: Keras 3 wraps it in a
    ``keras.Variable`` (``.value`` is the distributed tf variable), tf-keras weights are
    TensorFlow variables already."""
    inner = getattr(variable, "value", variable)
    return inner if isinstance(inner, tf.Variable) else variable


class MirroredReplicas(ReplicatedKeras):
    def __init__(self, base: Adapter):
        super().__init__(base)
        self.strategies: dict[int, tf.distribute.MirroredStrategy] = {}
        self.to_numpy = _host_numpy(base.framework_id)
        self._fns: dict = {}

    def _strategy(self, count: int) -> tf.distribute.MirroredStrategy:
        """One MirroredStrategy per replica count per worker, over the first ``count``
        logical CPU devices (configured at make_adapter from XBN_REPLICAS)."""
        if count not in self.strategies:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            if len(devices) < count:
                raise RuntimeError(
                    f"{count} replicas need {count} logical CPU devices, TensorFlow has "
                    f"{len(devices)}: the worker did not set XBN_REPLICAS before the adapter "
                    "was made (xbn.execution.worker.prepare_replicas)")
            self.strategies[count] = tf.distribute.MirroredStrategy(devices[:count])
        return self.strategies[count]

    def build(self, layer: Layer) -> None:
        self.layer = layer
        self.strategy = self._strategy(len(layer.replicas))
        if self.framework_id == "tf-keras":
            self._build_tf_keras(layer)
        else:
            with self.strategy.scope():
                self.base.build(with_synchronized(layer, self.framework_id))
        self.model, self.bn = self.base.model, self.base.bn
        self._fns = {}
        self._note(
            f"tf.distribute.MirroredStrategy over {len(layer.replicas)} logical CPU devices "
            f"(rows {layer.replicas}), BatchNormalization(synchronized="
            f"{bool(layer.synchronized)}), strategy.run in a tf.function")

    def _build_tf_keras(self, layer: Layer) -> None:
        """tf-keras' adapter starts with ``clear_session()``, which resets the default graph
        and with it the strategy stack that ``strategy.scope()`` pushed, so it builds outside
        the scope; the model is then cloned under the scope (``clone_model``, as users move a
        model into a strategy), its BatchNormalization re-made from its config plus
        ``synchronized``, which tf-keras' ``get_config`` leaves out."""
        import tf_keras

        self.base.build(layer)

        def clone(source):
            return type(source).from_config({**source.get_config(),
                                             "synchronized": bool(layer.synchronized)})

        with self.strategy.scope():
            model = tf_keras.models.clone_model(self.base.model, clone_function=clone)
        bn = model.layers[-1]
        if bn.get_config() != self.base.bn.get_config():  # the same layer, only distributed
            raise RuntimeError("cloning the tf-keras BatchNormalization changed its config")
        self.base.model, self.base.bn = model, bn
        self.base.notes[0] = self.base._path_note()  # fused or not, for this layer

    def _invalidate(self) -> None:
        self._fns = {}

    def _split(self, x: np.ndarray) -> list:
        """Every replica's rows as a tensor of the layer's dtype (the base adapter's cast)."""
        return [self.base._tensor(part) for part in split_rows(x, self.layer.replicas)]

    def _step(self, training: bool | None, masked: bool = False):
        if (training, masked) not in self._fns:
            model, strategy = self.model, self.strategy
            kwargs = {} if training is None else {"training": training}

            @tf.function
            def step(values):
                return strategy.run(lambda t: model(t, **kwargs), args=(values,))

            @tf.function
            def masked_step(values, masks):  # Model(x, mask=m): each replica its rows' mask
                return strategy.run(lambda t, m: model(t, mask=m, **kwargs), args=(values, masks))

            self._fns[(training, masked)] = masked_step if masked else step
        return self._fns[(training, masked)]

    def _gather(self, per_replica) -> np.ndarray | tuple[np.ndarray, str]:
        parts = self.strategy.experimental_local_results(per_replica)
        return join_rows([self.to_numpy(p) for p in parts])

    def call(self, x, training):
        parts = self._split(x)
        values = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: parts[ctx.replica_id_in_sync_group])
        return self._gather(self._step(training)(values))

    def call_masked(self, x, training, mask):
        """``call`` with the mask each replica's rows have (the base adapter's mask rule,
        ``keras_mask``; a mask broadcast along the batch axis is repeated for every row)."""
        parts = self._split(x)
        m = keras_mask(mask)
        if m.shape[0] == 1:
            m = np.repeat(m, x.shape[0], axis=0)
        masks = [tf.constant(p) for p in split_rows(m, self.layer.replicas)]

        def distribute(items):
            return self.strategy.experimental_distribute_values_from_function(
                lambda ctx: items[ctx.replica_id_in_sync_group])

        return self._gather(self._step(training, masked=True)(distribute(parts),
                                                                distribute(masks)))

    def predict(self, x):
        parts = self._split(x)

        def dataset_fn(_context):
            dataset = tf.data.Dataset.from_tensors(parts[0])
            for part in parts[1:]:
                dataset = dataset.concatenate(tf.data.Dataset.from_tensors(part))
            return dataset

        dataset = self.strategy.distribute_datasets_from_function(dataset_fn)
        # steps=1: one element per replica is one step (tf-keras requires steps here)
        return join_rows([self.to_numpy(self.model.predict(dataset, steps=1, verbose=0))])

    def state(self) -> dict:
        state = self.base.state()  # the host's read: layer.moving_mean, as users read it
        for name in STATS:
            variable = getattr(self.bn, name, None)
            if variable is None:
                continue
            copies = self.strategy.experimental_local_results(_tf_variable(variable))
            state[f"replica_{name}"] = join_rows([self.to_numpy(c) for c in copies],
                                                   stack=True)
        return state
