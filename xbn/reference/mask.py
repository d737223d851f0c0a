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

A NaN or an infinity at a masked position (padding filled with NaN, as Flax's own
``test_batch_norm`` does) is the switch ``masked_nonfinite``: ``"select"`` (Keras 3.15+ picks
the valid values with ``ops.where`` before any arithmetic: the statistics stay finite, and a
masked position's gradient is its own output's term), ``"where_mean"`` (Flax: ``mean(x,
where=mask)`` and ``mean(x**2, where=mask)`` leave the value out of the statistics, but the
square runs on it, so its gradient is 0 * 2x = NaN) or ``"multiply"`` (tf-keras'
``tf.nn.weighted_moments`` multiplies every value by its 0/1 weight: 0 * NaN = 0 * inf = NaN,
so that channel's mean and variance, its outputs and its running statistics are NaN; a fully
masked batch still gives 0 and 0, ``div_no_nan`` of a zero weight sum). A masked position's
own output is normalized, so a NaN input stays NaN there everywhere; the valid positions'
gradients are NaN everywhere too (the variance's gradient sums over every output).

Not modelled: Keras 3 divides by ``count + 1e-7`` (``backend.epsilon()``), which in float32
rounds to count for count >= 2 but makes a single valid value x come out as x / (1 + 2^-23)
(1 ulp), and in float64 moves every masked mean and variance by a relative 1e-7 / count.

``ReferenceBatchNorm`` hooks this in: while ``bn.rows`` holds a ``Rows``, ``_batch_stats``
asks it for the moments, and ``backward`` asks a cache's ``"rows"`` for the weights of the
statistics' terms; its ``fit`` calls ``forward`` and ``loss_weights`` for a masked fit.

A mask on ``fit`` (Keras: the mask an upstream layer hands BatchNormalization, here a model
input) masks the statistics of every training batch as above, and Keras masks the loss with
the output's mask: each valid position weighs total / valid, a masked one 0 (keras/src/losses/
loss.py ``apply_mask``, tf_keras/src/utils/losses_utils.py ``apply_valid_mask``;
``divide_no_nan``: all 0 when nothing is valid), so the mean squared error is the mean over the
valid positions. The reference does the same (``loss_weights``).
"""

from __future__ import annotations

import numpy as np

from ..scenario.model import Layer, mask_elements
from .numerics import channels_last_2d


class NoMask(Exception):
    """The modelled framework's BatchNorm takes no mask (``mask = "none"``)."""


def fused(layer: Layer) -> bool:
    """Whether tf-keras runs its fused kernel for this layer (``fused=None``: 4-D/5-D inputs
    that are not float64, no renorm or ghost batches, not synchronized: tf_keras/src/layers/
    normalization/batch_normalization.py:205-211), which ignores a mask."""
    return layer.rank in (4, 5) and layer.dtype != "float64" and not layer.features_used() \
        and not layer.synchronized


class Rows:
    """The valid elements of a [values per channel, channels] matrix, in the reference's order:
    the same rows in every channel for a mask of positions, per channel for a mask that has the
    channel axis (``mask_channels``)."""

    def __init__(self, valid: np.ndarray, empty: str, nonfinite: str = "select"):
        self.valid = np.asarray(valid, bool)  # [rows, channels]
        self.empty = empty  # what a fully masked batch (channel) gives: "zero" | "nan"
        self.nonfinite = nonfinite  # a masked NaN/inf: "select" | "where_mean" | "multiply"

    def moments(self, bn, x2: np.ndarray, stats=None) -> tuple[np.ndarray, np.ndarray]:
        """The batch mean and variance of the valid elements, in ``bn``'s own arithmetic and
        checks (``stats``, by default ``bn._batch_stats`` with the mask lifted), channel by
        channel where the channels' valid rows differ; a fully masked channel: 0 and 0, or
        NaN."""
        if x2.shape[0] != self.valid.shape[0]:
            raise ValueError(f"a mask of {self.valid.shape[0]} positions for {x2.shape[0]} rows "
                             "(ghost batches split the rows; a mask is not split with them)")
        fill = 0.0 if self.empty == "zero" else np.nan
        mean, var = np.full(x2.shape[1], fill, bn.ft), np.full(x2.shape[1], fill, bn.ft)
        same = bool(np.all(self.valid == self.valid[:, :1]))
        groups = [(slice(None), self.valid[:, 0])] if same else \
            [([c], self.valid[:, c]) for c in range(x2.shape[1])]
        saved, bn.rows = getattr(bn, "rows", None), None
        try:
            for channels, rows in groups:
                if rows.any():
                    mean[channels], var[channels] = (stats or bn._batch_stats)(
                        x2[rows][:, channels])
        finally:
            bn.rows = saved
        if self.nonfinite == "multiply":  # sum(weight * x) with weight 0 on a NaN or an inf
            leaked = np.any(~self.valid & ~np.isfinite(x2), axis=0) & self.valid.any(axis=0)
            mean, var = np.where(leaked, np.nan, mean), np.where(leaked, np.nan, var)
        return mean.astype(bn.ft, copy=False), var.astype(bn.ft, copy=False)

    def statistics_term(self, term: np.ndarray, deviation: np.ndarray) -> np.ndarray:
        """The part of each element's input gradient that runs through the statistics: none
        for a masked one (selected away, never multiplied by 0: 0 * NaN would be NaN), except
        that under ``where_mean`` a masked NaN or infinity gets 0 * d(x**2)/dx = NaN."""
        out = np.where(self.valid, term, 0.0)
        if self.nonfinite == "where_mean":
            out = np.where(~self.valid & ~np.isfinite(deviation), np.nan, out)
        return out

    def weights(self, a: float) -> tuple[np.ndarray, np.ndarray]:
        """The weight of the statistics' terms per element (0 where masked: the statistics do
        not depend on it) and each channel's count they divide by."""
        return a * self.valid.astype(np.float64), np.maximum(self.valid.sum(axis=0), 1)


def loss_weights(mask: np.ndarray, channel_axis: int) -> np.ndarray:
    """Keras' masked-loss weights for an output: total / valid at the valid positions, 0 at
    the masked ones (0 everywhere when none is valid), with a size-1 channel axis."""
    valid = np.asarray(mask) != 0
    count = int(valid.sum())
    weights = np.where(valid, valid.size / count if count else 0.0, 0.0)
    return np.expand_dims(weights, channel_axis)


def rows_of(bn, x: np.ndarray, mask: np.ndarray) -> Rows | None:
    """``_rows``, for the replicated reference (``xbn.reference.replicas``)."""
    return _rows(bn, x, mask)


def _rows(bn, x: np.ndarray, mask: np.ndarray) -> Rows | None:
    """The ``Rows`` of ``mask`` for input ``x`` under ``bn``'s semantics; None where the mask
    is ignored. A mask over the channel axis (``ElementMask``, Flax's broadcast to the input)
    masks single elements: each channel's statistics come from its own valid elements."""
    rule = bn.sem.mask
    if rule == "none":
        raise NoMask("the modelled framework's BatchNorm takes no mask")
    if rule == "weighted_unfused" and fused(bn.layer):
        return None
    valid, _ = channels_last_2d(mask_elements(mask, x.shape, bn.layer.layout), bn.axis)
    return Rows(valid, "nan" if rule == "weighted_nan" else "zero", bn.sem.masked_nonfinite)


def forward(bn, x: np.ndarray, training: bool, mask: np.ndarray, update: bool = True
            ) -> tuple[np.ndarray, dict]:
    """``bn.forward`` with the batch statistics of the valid elements; the cache remembers
    them for ``backward``."""
    rows = _rows(bn, np.asarray(x), mask)
    bn.rows = rows
    try:
        y, cache = bn.forward(x, training, update)
    finally:
        bn.rows = None
    if rows is not None:
        cache["rows"] = rows
    return y, cache


def call(bn, x: np.ndarray, training: bool | None, mask: np.ndarray) -> np.ndarray:
    """``bn.call`` with a mask: an export path's or an inference-only backend's rule for a
    training call (``exported_training``) holds for a masked call too."""
    return bn.call(x, training, forward=lambda x_, t, update=True: forward(bn, x_, t, mask,
                                                                           update))


def predict(bn, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return forward(bn, x, False, mask)[0]


def grad(bn, x: np.ndarray, training: bool | None, weights: np.ndarray,
         mask: np.ndarray) -> dict:
    """``bn.grad`` with a mask: the same outputs and reasons, gradients through the masked
    statistics."""
    bn.refuse_training()
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

