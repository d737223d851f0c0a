"""One BN layer's settings as found in a model or a file, whatever the framework.

``None`` means "not known" (a state_dict stores no momentum or epsilon), which the audit
reports as such instead of guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ..frameworks import registry

if TYPE_CHECKING:
    from .state_io import BNLayer


@dataclass
class Flag:
    level: str  # error (cannot be expressed in the target) | warn (do something) | info
    topic: str
    text: str


@dataclass
class LayerInfo:
    name: str
    framework: str  # framework id the layer comes from
    kind: str  # class name, e.g. BatchNorm2d
    features: int | None = None
    momentum: float | None = None  # in the framework's own convention
    cumulative: bool = False  # torch momentum=None
    epsilon: float | None = None
    center: bool | None = None
    scale: bool | None = None
    track_running_stats: bool | None = None
    trainable: bool | None = None  # Keras trainable / torch: every parameter requires grad
    training: bool | None = None  # torch module.training / NNX use_running_average False
    axis: object = None
    rank: int | None = None  # rank of the layer's input, batch included, when known
    extras: dict = field(default_factory=dict)  # renorm, synchronized, fused, num_batches_tracked...
    flags: list[Flag] = field(default_factory=list)
    target_code: str | None = None

    @property
    def decay(self) -> float | None:
        """Momentum as the weight of the old value (Keras/Flax), or None when unknown."""
        if self.momentum is None or self.framework not in registry.CONVENTIONS:
            return None
        return registry.decay_from_native(self.framework, self.momentum)

    def flag(self, level: str, topic: str, text: str) -> None:
        self.flags.append(Flag(level, topic, text))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["axis"] = list(self.axis) if isinstance(self.axis, tuple) else self.axis
        d["decay"] = self.decay
        return d


def file_layer_info(layer: BNLayer, framework: str, kind: str) -> LayerInfo:
    """What a weights file says of a BN layer: its tensors, not its hyperparameters."""
    info = LayerInfo(layer.name, framework, kind, features=layer.features,
                     center="beta" in layer.values, scale="gamma" in layer.values,
                     track_running_stats=True)
    if layer.num_batches_tracked is not None:
        info.extras["num_batches_tracked"] = layer.num_batches_tracked
    return info
