"""The float64 reference on data-parallel replicas: the cross-replica switches of ``Semantics``.

Each replica is a ``ReferenceBatchNorm`` of its own (its copy of the running statistics, the
same epsilon, momentum conventions, EMA forms, set_weights and reset), so nothing of the
single-device arithmetic is derived twice. What replicas add is decided here:

- which batch statistics a replica normalizes its rows with in training
  (``synchronized_statistics`` when the layer is ``synchronized``, else
  ``unsynchronized_statistics``): "global" (count-weighted over every replica's rows, what an
  all-reduce of sums and counts gives: Keras, tf-keras, torch SyncBatchNorm), "equal_weight"
  (the mean of the replicas' means and of their E[x^2], var = E[x^2] - mean^2: what a
  ``pmean`` of local moments gives in Flax, Haiku and Equinox, whatever the rows per replica)
  or "local" (its own rows);
- the n of Bessel's correction of an unbiased running variance fed with cross-replica
  statistics (``replica_variance_count``: torch SyncBatchNorm uses the global count);
- what the host reads back and whether replicas' copies are overwritten
  (``replica_readback``).

A ground-floor module: it imports only the reference and the plain-data modules.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..scenario.model import ElementMask, Layer, mask_elements, split_rows
from . import mask as mask_model
from . import numerics
from .batchnorm import ReferenceBatchNorm, Semantics

# synchronized_statistics = "error": the modelled framework refuses the layer (Keras 3 off
# TensorFlow); xbn.profiles.replicas.ERRORS names what each such framework raises
REFUSED = "cross-replica statistics (synchronized=True) are refused by the modelled framework"
# unsynchronized_statistics = "error": the modelled framework has no data-parallel engine
# (Keras 3 on torch: keras.distribution has no torch backend)
REFUSED_DATA_PARALLEL = "data parallelism (replicas) is refused by the modelled framework"
Stats = tuple[np.ndarray, np.ndarray, int]  # mean, biased variance, the count for Bessel's n


class _ReplicaBatchNorm(ReferenceBatchNorm):
    """One replica: a ``ReferenceBatchNorm`` whose batch statistics may come from the group
    (``shared``, set by ``ReplicatedReference`` for one step) instead of its own rows."""

    shared: Callable[[], Stats] | None = None
    _count: int | None = None

    def _batch_stats(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.shared is None:
            self._count = None
            return super()._batch_stats(x2)
        mean, var, self._count = self.shared()
        return mean, var

    def _bessel(self) -> bool:
        # tf-keras sets fused = False when synchronized (tf_keras/src/layers/normalization/
        # batch_normalization.py:205-211): no fused kernel, no Bessel correction
        if self.layer.synchronized and self.sem.variance_update == "fused":
            return False
        return super()._bessel()

    def _update(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        super()._update(mean, var, n if self._count is None else self._count)

    def own_stats(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This replica's moments of its own rows, with the reference's checks and formula."""
        return ReferenceBatchNorm._batch_stats(self, x2)


class ReplicatedReference:
    """R replicas of the reference, each fed its rows of every batch (``layer.replicas``, in
    batch order); outputs are concatenated back in batch order."""

    def __init__(self, layer: Layer, semantics: Semantics | None = None, axis: int = -1):
        if not layer.replicas:
            raise ValueError("a replicated reference needs layer.replicas")
        self.sem = semantics or Semantics()
        self.layer, self.axis = layer, axis
        if layer.synchronized and self.sem.synchronized_statistics == "error":
            raise ValueError(REFUSED)
        if not layer.synchronized and self.sem.unsynchronized_statistics == "error":
            raise ValueError(REFUSED_DATA_PARALLEL)
        self.replicas = [_ReplicaBatchNorm(layer, self.sem, axis) for _ in layer.replicas]

    # -- the statistics a training step shares ---------------------------------------------
    def _mode(self) -> str:
        return self.sem.synchronized_statistics if self.layer.synchronized \
            else self.sem.unsynchronized_statistics

    def _sharing(self, parts: list[np.ndarray], masks: list | None = None
                 ) -> list[Callable[[], Stats] | None]:
        """Per replica: the function that gives the statistics it uses (computed once per
        step, only if a replica asks: inference with running statistics never does), or None
        for its own rows. ``masks``: every replica's element mask (``ElementMask``), whose
        valid elements alone enter the statistics (``xbn.reference.mask``)."""
        mode = self._mode()
        if masks is not None and self.sem.synchronized_mask == "local":
            mode = "local"  # Keras 3: a masked batch's moments are its replica's own
        if mode == "local" or len(parts) == 1:
            return [None] * len(parts)
        first = self.replicas[0]
        x2s = [numerics.channels_last_2d(np.asarray(p, np.float64).astype(first.ft),
                                         self.axis)[0] for p in parts]
        rows = None if masks is None else \
            [mask_model.rows_of(first, np.asarray(p), m) for p, m in zip(parts, masks, strict=True)]
        total = sum(x2.shape[0] for x2 in x2s)
        memo: dict = {}

        def moments(i: int | None) -> tuple[np.ndarray, np.ndarray]:
            """Replica i's moments (None: all rows), of its valid elements under a mask."""
            x2 = np.concatenate(x2s) if i is None else x2s[i]
            if rows is None or rows[0] is None:  # no mask, or one the framework ignores
                return first.own_stats(x2)
            valid = np.concatenate([r.valid for r in rows]) if i is None else rows[i].valid
            return mask_model.Rows(valid, rows[0].empty, rows[0].nonfinite).moments(
                first, x2, first.own_stats)

        def stats() -> tuple[np.ndarray, np.ndarray]:
            if "value" not in memo:
                if mode == "global":
                    memo["value"] = moments(None)
                else:  # equal_weight: pmean of the local mean and mean of squares
                    moments_ = [moments(i) for i in range(len(x2s))]
                    ft = first.ft
                    mean = np.mean([m for m, _ in moments_], axis=0).astype(ft)
                    square = np.mean([v + m * m for m, v in moments_], axis=0).astype(ft)
                    var = (square - mean * mean).astype(ft)
                    if self.sem.variance_algorithm == "fast_clamped":
                        var = np.maximum(var, ft(0))
                    memo["value"] = (mean, var)
            return memo["value"]

        def shared(x2: np.ndarray) -> Callable[[], Stats]:
            n = total if self.sem.replica_variance_count == "global" else x2.shape[0]
            return lambda: (*stats(), n)

        return [shared(x2) for x2 in x2s]

    def _split(self, x: np.ndarray) -> list[np.ndarray]:
        return split_rows(x, self.layer.replicas)

    def _run(self, x: np.ndarray, forward: Callable, mask=None) -> np.ndarray:
        """``forward(bn, part)`` on every replica (``forward(bn, part, its mask)`` with a
        ``mask``: the step's, as every element's, split with the rows)."""
        if self.sem.replica_readback == "broadcast_from_first":
            self._broadcast()
        parts = self._split(x)
        masks = None if mask is None else [m.view(ElementMask) for m in self._split(
            mask_elements(mask, np.shape(x), self.layer.layout))]
        outputs = []
        try:
            for i, (bn, shared) in enumerate(zip(self.replicas, self._sharing(parts, masks),
                                                 strict=True)):
                bn.shared = shared
                outputs.append(forward(bn, parts[i]) if masks is None else
                               forward(bn, parts[i], masks[i]))
        finally:
            for bn in self.replicas:
                bn.shared = None
        if self.sem.replica_readback == "global":
            self._unify()
        return np.concatenate(outputs, axis=0)

    def _broadcast(self) -> None:
        """DDP ``broadcast_buffers``: every replica's running statistics (and batch count)
        become replica 0's before a forward (torch/nn/parallel/distributed.py _pre_forward
        -> _sync_buffers). DDP skips it after a forward under no_grad (a predict: its
        require_forward_param_sync is then False, :1828-1841); that forward itself synced,
        and only training forwards move copies apart, so "before every forward" observes
        the same."""
        first = self.replicas[0]
        for bn in self.replicas[1:]:
            for name in ("moving_mean", "moving_variance", "hidden_mean", "hidden_variance",
                         "num_batches", "_mean_terms"):
                setattr(bn, name, getattr(first, name))

    def _unify(self) -> None:
        """One copy for all: every replica's statistics set to the mean of the copies."""
        if not self.layer.track_running_stats:
            return
        for name in ("moving_mean", "moving_variance", "hidden_mean", "hidden_variance"):
            value = np.mean([getattr(bn, name) for bn in self.replicas], axis=0)
            for bn in self.replicas:
                setattr(bn, name, value.astype(bn.ft))

    # -- operations ------------------------------------------------------------------------
    def call(self, x: np.ndarray, training: bool | None) -> np.ndarray:
        return self._run(x, lambda bn, part: bn.call(part, training))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, lambda bn, part: bn.predict(part))

    def call_masked(self, x: np.ndarray, training: bool | None, mask: np.ndarray) -> np.ndarray:
        """``call`` with a mask (``mask_model.NoMask`` where the semantics take none)."""
        return self._run(x, lambda bn, part, m: mask_model.call(bn, part, training, m), mask)

    def predict_masked(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._run(x, lambda bn, part, m: mask_model.predict(bn, part, m), mask)

    def set_trainable(self, trainable: bool) -> None:
        for bn in self.replicas:
            bn.trainable = trainable

    def set_mode(self, mode: str) -> None:
        for bn in self.replicas:
            bn.module_training = mode == "train"

    def set_weights(self, values: dict[str, np.ndarray]) -> None:
        """Loaded into every replica's copy (a host model replicated, or assigned to a
        mirrored variable from outside the replicas)."""
        for bn in self.replicas:
            bn.set_weights(values)

    def reset(self) -> None:
        for bn in self.replicas:
            bn.reset()

    def state(self) -> dict:
        """What the host reads (``replica_readback``) and every replica's copy ([R, C])."""
        first = self.replicas[0]
        out = first.state()
        if first.track:
            means = np.stack([bn.moving_mean for bn in self.replicas])
            variances = np.stack([bn.moving_variance for bn in self.replicas])
            if self.sem.replica_readback == "mean_of_replicas":
                out["moving_mean"] = means.mean(axis=0).astype(first.ft)
                out["moving_variance"] = variances.mean(axis=0).astype(first.ft)
            out["replica_moving_mean"], out["replica_moving_variance"] = means, variances
        return out

    def batches_tracked(self) -> np.ndarray | None:
        return self.replicas[0].batches_tracked()

    def magnitudes(self) -> dict[str, float | None]:
        """The largest term magnitude over the replicas, per value."""
        found: dict[str, float | None] = {}
        for bn in self.replicas:
            for key, value in bn.magnitudes().items():
                known = [v for v in (found.get(key), value) if v is not None]
                found[key] = max(known) if known else None
        return found
