"""Batch Renormalization and ghost batches for the reference, in its arithmetic (ground floor).

Both are Keras features, written here as Keras implements them so that ``xbn.reference.batchnorm`` only
hooks them in:

* Batch Renormalization (Ioffe 2017; Keras 3 ``BatchNormalization(renorm=True)``,
  keras/src/layers/normalization/batch_normalization.py ``_renorm_correction_and_moments``,
  ``_compose_transforms``, ``_update_renorm_statistics``; tf-keras the same in
  tf_keras/src/layers/normalization/batch_normalization.py ``_renorm_correction_and_moments``
  and ``call``'s ``true_branch_renorm``). With the batch's mean mu_B and standard deviation
  sigma_B = sqrt(var_B + eps), and the renorm statistics (renorm_mean, renorm_stddev) as they
  were BEFORE this batch (renorm_stddev floored at sqrt(eps)):
  r = clip(sigma_B / renorm_stddev, rmin, rmax), d = clip((mu_B - renorm_mean) /
  renorm_stddev, -dmax, dmax), only the bounds given (none: no clipping);
  output = (x - mu_B) / sigma_B * (r * gamma) + (d * gamma + beta) (r, d without gradient).
  Then renorm_mean/renorm_stddev move toward mu_B/sigma_B with ``renorm momentum``, and with
  the layer's momentum moving_mean toward mu_B and moving_stddev toward sigma_B; moving_variance
  is not averaged but derived: relu(moving_stddev^2 - eps). Inference is plain BN on
  moving_mean/moving_variance.
* Ghost batches (tf-keras ``virtual_batch_size = N``, ``call``): training reshapes the batch
  to [N, B/N, ...] and reduces over axis 0, so ghost batch g holds rows g, g + B/N, g + 2B/N,
  ... (strided, not consecutive rows); each is normalized with its own moments, and the
  running statistics are fed the mean over the ghost batches of their means and (biased)
  variances; with renorm, r and d come from those averages too. Inference is plain BN.
  Where N does not divide B, tf-keras' reshape fails (``Semantics.ghost_batch_remainder =
  "error"``, ``ghost_groups`` raises); the reference's own answer ("uneven") is
  the same strided layout over ceil(B/N) ghost batches of at most N rows, as a reshape of the
  batch padded to a multiple of N would put them (the padding left out).
"""

from __future__ import annotations

import numpy as np

# tf-keras and Keras 3: renorm_momentum=0.99, renorm_clipping=None (no clipping)
DEFAULT_RENORM_MOMENTUM = 0.99


def ghost_groups(batch: int, rows_per_item: int, virtual_batch_size: int,
                 remainder: str = "uneven") -> np.ndarray:
    """The ghost batch of every row of the channels-last [values, channels] matrix (rows of
    one batch item are consecutive there): item b is in ghost batch b % ceil(batch / N), as
    tf-keras' reshape to [N, -1, ...] puts it where N divides the batch. Where N does not,
    ``remainder`` (``Semantics.ghost_batch_remainder``) decides: "uneven", ghost batches of N
    or fewer items; "error", refused as tf-keras refuses it
    (tf_keras/src/layers/normalization/batch_normalization.py:559-590, "Will cause errors if
    virtual_batch_size does not divide the batch size"; :125 "Must divide the actual batch
    size during execution"), with the message xbn/profiles/edges.py declares."""
    if batch % virtual_batch_size and remainder == "error":
        raise ValueError(f"virtual_batch_size {virtual_batch_size} does not divide the batch "
                         f"size {batch}: ghost batches refused")
    count = -(-batch // virtual_batch_size)  # ceil
    return np.repeat(np.arange(batch) % max(count, 1), rows_per_item)


def group_count(rows: int, groups: np.ndarray | None):
    """How many rows each row's ghost batch has, as a column (all ``rows`` without ghost
    batches): the n of the backward pass's per-group means."""
    if groups is None:
        return rows
    ids, counts = np.unique(groups, return_counts=True)
    return counts[np.searchsorted(ids, groups)][:, None]


def ghost_moments(x2: np.ndarray, groups: np.ndarray, ft, moments) -> tuple:
    """Per-row mean and variance (each row's ghost batch's, shape of x2) and the averages over
    ghost batches that update the running statistics (shape [channels]). ``moments(rows)``
    is the reference's own per-channel (mean, biased variance) in arithmetic ``ft``."""
    ids = np.unique(groups)
    if not ids.size:  # a batch of no rows: its own (NaN) moments, as without ghost batches
        mean, var = moments(x2)
        return np.zeros(x2.shape, ft), np.zeros(x2.shape, ft), mean, var
    row_mean = np.zeros(x2.shape, ft)
    row_var = np.zeros(x2.shape, ft)
    means, variances = [], []
    for g in ids:
        mean, var = moments(x2[groups == g])
        row_mean[groups == g], row_var[groups == g] = mean, var
        means.append(mean)
        variances.append(var)
    count = ft(len(ids))
    avg_mean = (np.sum(means, axis=0, dtype=ft) / count).astype(ft)
    avg_var = (np.sum(variances, axis=0, dtype=ft) / count).astype(ft)
    return row_mean, row_var, avg_mean, avg_var


def group_sum(a: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Per-channel sums over each row's ghost batch, one row per row of ``a`` (over all rows
    when ``groups`` is None): what the backward pass of per-group normalization sums."""
    if groups is None:
        return a.sum(axis=0)
    out = np.zeros_like(a)
    for g in np.unique(groups):
        out[groups == g] = a[groups == g].sum(axis=0)
    return out


class Renorm:
    """The renorm state (renorm_mean, renorm_stddev, moving_stddev) and its arithmetic."""

    VARIABLES = ("renorm_mean", "renorm_stddev", "moving_stddev")  # set_weights may load them

    def __init__(self, config: dict[str, float], features: int, initial_variance: float, ft):
        self.ft = ft
        self.momentum = float(config.get("momentum", DEFAULT_RENORM_MOMENTUM))
        self.rmin = config.get("rmin")
        self.rmax = config.get("rmax")
        self.dmax = config.get("dmax")
        self.initial_variance = initial_variance
        self.reset(features)

    def reset(self, features: int) -> None:
        """The initial values: renorm_mean 0; renorm_stddev and moving_stddev the square root
        of the moving variance's initial value (Keras ``moving_stddev_initializer``)."""
        ft = self.ft
        self.renorm_mean = np.zeros(features, ft)
        self.renorm_stddev = np.full(features, np.sqrt(ft(self.initial_variance)), ft)
        self.moving_stddev = self.renorm_stddev.copy()

    def correction(self, mean: np.ndarray, var: np.ndarray, epsilon: float) -> tuple:
        """(r, d) from the batch's mean and variance and the renorm statistics before the
        update, clipped by the bounds given."""
        ft = self.ft
        stddev = np.sqrt((var + ft(epsilon)).astype(ft)).astype(ft)
        floor = np.maximum(self.renorm_stddev, np.sqrt(ft(epsilon))).astype(ft)
        r = (stddev / floor).astype(ft)
        d = ((mean - self.renorm_mean).astype(ft) / floor).astype(ft)
        if self.rmin is not None:
            r = np.maximum(r, ft(self.rmin))
        if self.rmax is not None:
            r = np.minimum(r, ft(self.rmax))
        if self.dmax is not None:
            d = np.clip(d, ft(-self.dmax), ft(self.dmax))
        return r, d

    def update(self, mean: np.ndarray, var: np.ndarray, epsilon: float, momentum: float,
               ema) -> np.ndarray:
        """Move the renorm statistics (``renorm momentum``) and moving_stddev (the layer's
        ``momentum``) toward the batch's mean and stddev; return the moving variance derived
        from moving_stddev. ``ema(old, new, m)`` is the reference's update in its form."""
        ft = self.ft
        stddev = np.sqrt((var + ft(epsilon)).astype(ft)).astype(ft)
        self.renorm_mean = ema(self.renorm_mean, mean, self.momentum)
        self.renorm_stddev = ema(self.renorm_stddev, stddev, self.momentum)
        self.moving_stddev = ema(self.moving_stddev, stddev, momentum)
        s = self.moving_stddev
        return np.maximum((s * s).astype(ft) - ft(epsilon), ft(0)).astype(ft)

    def state(self) -> dict:
        return {"renorm_mean": self.renorm_mean, "renorm_stddev": self.renorm_stddev,
                "moving_stddev": self.moving_stddev}


def compose(r: np.ndarray, d: np.ndarray, gamma, beta, ft) -> tuple:
    """The scale and offset that apply x_hat * r + d before gamma and beta (Keras
    ``_compose_transforms``): (r * gamma, d * gamma + beta), gamma/beta left out if absent."""
    scale = (r * gamma).astype(ft) if gamma is not None else r
    offset = (d * gamma).astype(ft) if gamma is not None else d
    if beta is not None:
        offset = (offset + beta).astype(ft)
    return scale, offset
