"""The mask a Keras user hands BatchNormalization, shared by the Keras 3 and tf-keras adapters
(numpy only: it imports neither Keras)."""

from __future__ import annotations

import numpy as np

from ...scenario.loader import ElementMask
from ..errors import NotApplicable


def keras_mask(mask, layout: str | None = None) -> np.ndarray:
    """The boolean mask a Keras user hands BatchNormalization, which expands it along a new
    last axis (expand_dims(mask, -1), keras/src/layers/normalization/batch_normalization.py:442;
    tf-keras the same, tf_keras/src/layers/normalization/batch_normalization.py:1141): a mask of
    positions as it is; one over the channel axis too (``mask_channels``) only where its last
    axis is 1, without that axis (channels first: Masking's [N, C] mask masks whole channels
    per item); any other is n/a. A mask of positions on a channels-first ``layout`` is n/a
    too: expanded along the last axis it meets a spatial axis, not the channels (Keras' masks
    are the input's shape without its last axis: keras-team/keras#19818), so Keras raises or,
    where the shapes happen to broadcast, masks the wrong elements."""
    if layout is not None and layout != "NC" and not layout.endswith("C") \
            and not isinstance(mask, ElementMask):
        raise NotApplicable(
            f"Keras expands a mask along a new last axis (expand_dims(mask, -1)): on a "
            f"channels-first layer ({layout}) a mask of positions meets a spatial axis, not the "
            "channels (a Keras mask is the input's shape without its last axis)")
    if isinstance(mask, ElementMask):
        if mask.shape[-1] != 1:
            raise NotApplicable(
                "Keras expands a mask along a new last axis (expand_dims(mask, -1)): a mask "
                "over the channel axis whose last axis is not 1 is beyond it")
        mask = np.asarray(mask)[..., 0]
    return np.asarray(mask) != 0
