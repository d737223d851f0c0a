"""The masked operations of the adapter contract (``Adapter`` in ``xbn.adapters.base`` inherits
them): a step's ``mask`` (the input's shape without the channel axis, 1 = valid) handed to the
framework's own mask argument. A framework whose BatchNorm takes no mask keeps these defaults
and reports the step ``n/a``.
"""

from __future__ import annotations

import numpy as np

from ..scenario.model import Step
from .errors import NotApplicable


class MaskedOps:
    """``call``/``predict``/``grad``/``fit`` with a mask; by default the framework takes none."""

    framework_id: str

    def _no_mask(self) -> NotApplicable:
        return NotApplicable(f"{self.framework_id}'s BatchNorm takes no mask")

    def call_masked(self, x: np.ndarray, training: bool | None, mask: np.ndarray):
        """``call`` with ``mask``: the framework's own mask argument."""
        raise self._no_mask()

    def predict_masked(self, x: np.ndarray, mask: np.ndarray):
        raise self._no_mask()

    def grad_masked(self, x: np.ndarray, training: bool | None, weights: np.ndarray,
                    mask: np.ndarray) -> dict:
        raise self._no_mask()

    def fit_masked(self, x: np.ndarray, target: np.ndarray, step: Step, fresh_optimizer: bool,
                   mask: np.ndarray):
        """``fit`` with ``mask`` (sliced with the mini-batches): every training batch's
        statistics masked, and the loss as the framework masks it (Keras: the output's mask,
        the mean over the valid positions)."""
        raise self._no_mask()
