"""The mask argument of Flax's BatchNorm, shared by the linen and NNX adapters.

``BatchNorm.__call__(x, use_running_average, *, mask=)`` takes a boolean array "broadcastable
to inputs" (flax/linen/normalization.py:344; a float mask raises in NNX's ``jnp.mean(where=)``):
users pass their padding mask with a size-1 channel axis (``mask[..., None]``).
``_compute_stats`` (linen :119-122, NNX flax/nnx/nn/normalization.py:99-102) takes the means
with ``where=mask``: valid positions only, a fully masked batch 0/0 = NaN; every position's
output is normalized (``_normalize`` takes no mask); inference ignores it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ...scenario.loader import ElementMask, channel_axis


class FlaxMask:
    """Masked calls as the adapter's ``call``/``predict``/``grad`` with their ``mask``
    argument; ``_mask`` gives the keyword arguments one Flax call takes."""

    def _mask(self, mask) -> dict:
        """A mask of positions gets the size-1 channel axis; one with the channel axis
        (``ElementMask``: ``mask_channels``) is passed as it is. Flax broadcasts either (size-1
        axes included) to the input."""
        if mask is None:
            return {}
        if isinstance(mask, ElementMask):
            return {"mask": jnp.asarray(np.asarray(mask) != 0)}
        axis = channel_axis(self.layer.layout)
        return {"mask": jnp.expand_dims(jnp.asarray(mask) != 0, axis)}

    def call_masked(self, x, training, mask):
        return self.call(x, training, mask)

    def predict_masked(self, x, mask):
        return self.predict(x, mask)

    def grad_masked(self, x, training, weights, mask) -> dict:
        return self.grad(x, training, weights, mask)

    def fit_masked(self, x, target, step, fresh_optimizer: bool, mask):
        """xbn's training loop with the mask on every batch's call, and Keras' masked loss
        (``xbn.adapters._jax.common.mse``): Flax has no fit of its own."""
        return self.fit(x, target, step, fresh_optimizer, mask)
