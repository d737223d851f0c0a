"""Masked batch statistics for the reference (ground floor, no framework).

``mask = "m"`` on a ``call``/``predict``/``grad`` step is the frameworks' own mask argument: a
0/1 array with the input's shape without the channel axis, 1 = valid. What they do with it,
read from their sources and measured (tests/adapters/test_masks.py):

* the batch mean and (biased) variance of each channel come from the valid positions only:
  count = valid rows x spatial positions (Keras 3 ``BatchNormalization._moments``, weighted
  moments: keras/src/layers/normalization/batch_normalization.py; tf-keras
  ``_no_sync_calculate_mean_and_var`` -> ``tf.nn.weighted_moments``; Flax
  ``_compute_stats`` -> ``x.mean(axes, where=mask)``, flax/linen/normalization.py,
  flax/nnx/nn/normalization.py);
* every position's output, masked ones included, is normalized with those statistics: no
  framework passes masked positions through (their ``_normalize`` / ``batch_normalization``
  take no mask), and the running statistics are fed the masked moments;
* in inference the mask changes nothing (the running statistics are used);
* the gradient reaches the input of every position through its own output, and only the
  valid positions through the statistics.

Where they differ, the reference's ``mask`` switch (``xbn.reference.semantics``):

* ``"weighted"`` (Keras 3): a fully masked batch has mean 0 and variance 0 (``sum / (count +
  backend.epsilon())`` with count 0), so outputs are x / sqrt(epsilon) * gamma + beta and the
  running statistics decay toward 0;
* ``"weighted_nan"`` (Flax linen, NNX): a fully masked batch gives 0/0 = NaN statistics, NaN
  outputs and NaN running statistics;
* ``"weighted_unfused"`` (tf-keras): as ``"weighted"`` (``div_no_nan``) on its non-fused path;
  where tf-keras picks its fused kernel (4-D/5-D inputs that are not float64, no renorm or
  ghost batches) ``_fused_batch_norm`` warns "Masking is not supported with fused=True" and
  ignores the mask;
* ``"none"``: the framework's BatchNorm takes no mask (torch, Haiku, Equinox).

Not modelled: Keras 3 divides by ``count + 1e-7`` (``backend.epsilon()``), which in float32
rounds to count for count >= 2 but makes a single valid value x come out as x / (1 + 2^-23)
(1 ulp), and in float64 moves every masked mean and variance by a relative 1e-7 / count.

``ReferenceBatchNorm`` hooks this in without importing it: while ``bn.rows`` holds a
``Rows``, ``_batch_stats`` asks it for the moments, and ``backward`` asks a cache's
``"rows"`` for the weights of the statistics' terms.
"""

from __future__ import annotations

import numpy as np

from ..scenario.model import Layer


class NoMask(Exception):
    """The modelled framework's BatchNorm takes no mask (``mask = "none"``)."""


def fused(layer: Layer) -> bool:
    """Whether tf-keras runs its fused kernel for this layer (``fused=None``: 4-D/5-D inputs
    that are not float64, no renorm or ghost batches), which ignores a mask."""
    return layer.rank in (4, 5) and layer.dtype != "float64" and not layer.features_used()


class Rows:
    """The valid rows of a [values per channel, channels] matrix, in the reference's order."""

    def __init__(self, mask: np.ndarray, empty: str):
        # the mask has the input's shape without the channel axis: the order of
        # channels_last_2d's rows is the order of the mask's elements
        self.valid = np.asarray(mask, np.float64).reshape(-1) != 0
        self.empty = empty  # what a fully masked batch gives: "zero" | "nan"

    @property
    def count(self) -> int:
        return int(self.valid.sum())

    def moments(self, bn, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The batch mean and variance of the valid rows, in ``bn``'s own arithmetic and checks
        (``_batch_stats`` with the mask lifted); a fully masked batch: 0 and 0, or NaN."""
        if x2.shape[0] != self.valid.size:
            raise ValueError(f"a mask of {self.valid.size} positions for {x2.shape[0]} rows "
                             "(ghost batches split the rows; a mask is not split with them)")
        if not self.valid.any():
            fill = 0.0 if self.empty == "zero" else np.nan
            return np.full(x2.shape[1], fill, bn.ft), np.full(x2.shape[1], fill, bn.ft)
        bn.rows = None
        try:
            return bn._batch_stats(x2[self.valid])
        finally:
            bn.rows = self

    def weights(self, a: float) -> tuple[np.ndarray, int]:
        """The weight of the statistics' terms per row (0 for masked rows, whose inputs the
        statistics do not depend on) and the count they divide by."""
        return a * self.valid[:, None].astype(np.float64), max(self.count, 1)


def _rows(bn, mask: np.ndarray) -> Rows | None:
    """The ``Rows`` of ``mask`` under ``bn``'s semantics; None where the mask is ignored."""
    rule = bn.sem.mask
    if rule == "none":
        raise NoMask("the modelled framework's BatchNorm takes no mask")
    if rule == "weighted_unfused" and fused(bn.layer):
        return None
    return Rows(mask, "nan" if rule == "weighted_nan" else "zero")


def forward(bn, x: np.ndarray, training: bool, mask: np.ndarray) -> tuple[np.ndarray, dict]:
    """``bn.forward`` with the batch statistics of the valid positions; the cache remembers
    them for ``backward``."""
    rows = _rows(bn, mask)
    bn.rows = rows
    try:
        y, cache = bn.forward(x, training)
    finally:
        bn.rows = None
    if rows is not None:
        cache["rows"] = rows
    return y, cache


def call(bn, x: np.ndarray, training: bool | None, mask: np.ndarray) -> np.ndarray:
    return forward(bn, x, bn.effective_training(training), mask)[0]


def predict(bn, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return forward(bn, x, False, mask)[0]


def grad(bn, x: np.ndarray, training: bool | None, weights: np.ndarray,
         mask: np.ndarray) -> dict:
    """``bn.grad`` with a mask: the same outputs and reasons, gradients through the masked
    statistics."""
    y, cache = forward(bn, x, bn.effective_training(training), mask)
    grads = bn.backward(weights, cache)
    out = {"output": y, "grad_input": grads["grad_input"]}
    for q in ("grad_gamma", "grad_beta"):
        if q in grads:
            if bn.trainable:
                out[q] = grads[q]
            else:
                out[f"{q}_reason"] = "parameters frozen (trainable=false)"
    return out

