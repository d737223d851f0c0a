"""Per-layer captures of a live model: what every BatchNorm saw and did in one forward pass.

``xbn verify --per-layer`` needs, at every BN of two models, the input it received, the output
it gave, and its state before and after the call: only then can the first BN that diverges be
told apart from one that merely inherits a difference from the layers before it. Each family's
``live.py`` provides ``capture(obj, framework, x, train) -> list[Capture]`` (torch forward
hooks; Keras by wrapping each BN layer's ``call``; Flax linen by intercepting each BN's
``__call__``) and runs on a copy or restores the weights, as its runner does.

Arrays are kept in the framework's own layout; ``axis`` says where the channels are, and
:func:`channels_last` moves them last so that two frameworks' captures can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..frameworks import registry
from .layer_info import LayerInfo
from .live import framework_of
from .port_errors import PortError

STATE = ("gamma", "beta", "moving_mean", "moving_variance")


@dataclass
class Capture:
    """One BN call: its input and output, the state before it and the running statistics after."""

    name: str
    axis: int  # channel axis of ``input``/``output``
    input: np.ndarray
    output: np.ndarray
    before: dict[str, np.ndarray | None] = field(default_factory=dict)  # STATE keys
    after: dict[str, np.ndarray | None] = field(default_factory=dict)  # moving_mean/variance
    info: LayerInfo | None = None

    @property
    def features(self) -> int:
        return int(self.input.shape[self.axis])

    def batch_statistics(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Mean, biased variance (float64) and element count per channel of the input: the
        statistics a training-mode call normalizes with."""
        x = channels_last(self.input, self.axis).astype(np.float64)
        flat = x.reshape(-1, x.shape[-1])
        return flat.mean(axis=0), flat.var(axis=0), int(flat.shape[0])


def channels_last(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` with its channel axis moved last (layouts compared channel by channel)."""
    a = np.asarray(a)
    return np.moveaxis(a, axis, -1) if a.ndim > 1 else a


def capture(obj, x: np.ndarray, train: bool) -> tuple[str, list[Capture]]:
    """(framework id, one :class:`Capture` per BN call in execution order) for one forward
    pass of ``obj`` on ``x``; the caller's model is not changed."""
    fid = framework_of(obj)
    live = registry.family_module(registry.FRAMEWORKS[fid].family, "live")
    fn = getattr(live, "capture", None)
    if fn is None:
        raise PortError(f"{fid}: per-layer capture is not supported for this framework")
    return fid, fn(obj, fid, x, train)
