"""How each framework spells a BatchNorm configuration: keywords, conventions, defaults.

Numbers (default momentum and epsilon) are not restated here: they come from
``xbn.profiles``, which records each with the source line it was checked against. This module
holds only the vocabulary (keyword names, which way momentum points, how the channel axis and
the affine parameters are expressed), so that a translation is table-driven.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PortError


@dataclass(frozen=True)
class Convention:
    id: str
    label: str  # how users name it in prose
    call: str  # the constructor as written in code
    imports: str  # the import line that makes ``call`` work
    momentum_kw: str
    new_batch_weight: bool  # True: momentum is the weight of the new batch (torch)
    epsilon_kw: str
    affine: str  # "split": separate center/scale; "single": one flag for both
    center_kw: str | None
    scale_kw: str | None
    affine_kw: str | None
    features_kw: str | None  # constructor needs the channel count
    channel_axis: int | None  # fixed channel axis of the batch (None: the ``axis`` keyword)
    axis_default: int  # the channel axis a default layer normalizes
    multi_axis: bool  # the axis keyword accepts several axes
    has_track_running_stats: bool = False
    has_cumulative: bool = False  # momentum=None means a cumulative average


CONVENTIONS: dict[str, Convention] = {
    c.id: c
    for c in [
        # torch/nn/modules/batchnorm.py: _NormBase(num_features, eps, momentum, affine,
        # track_running_stats); momentum=None -> cumulative average; channels are dim 1.
        Convention("torch", "PyTorch", "torch.nn.BatchNorm{d}d", "import torch",
                   "momentum", True, "eps", "single", None, None, "affine", "num_features",
                   1, 1, False, has_track_running_stats=True, has_cumulative=True),
        # keras/src/layers/normalization/batch_normalization.py: axis must be one int.
        Convention("keras", "Keras 3", "keras.layers.BatchNormalization", "import keras",
                   "momentum", False, "epsilon", "split", "center", "scale", None, None,
                   None, -1, False),
        # tf_keras/src/layers/normalization/batch_normalization.py: axis int or list.
        Convention("tf-keras", "tf-keras (Keras 2)", "tf_keras.layers.BatchNormalization",
                   "import tf_keras", "momentum", False, "epsilon", "split", "center", "scale",
                   None, None, None, -1, True),
        # flax/linen/normalization.py: BatchNorm(use_running_average, axis, momentum, epsilon,
        # use_bias, use_scale); axis may be a tuple.
        Convention("flax", "Flax linen", "nn.BatchNorm", "import flax.linen as nn",
                   "momentum", False, "epsilon", "split", "use_bias", "use_scale", None, None,
                   None, -1, True),
        # flax/nnx/nn/normalization.py: BatchNorm(num_features, *, use_running_average, axis: int,
        # momentum, epsilon, use_bias, use_scale, rngs).
        Convention("flax-nnx", "Flax NNX", "nnx.BatchNorm", "from flax import nnx",
                   "momentum", False, "epsilon", "split", "use_bias", "use_scale", None,
                   "num_features", None, -1, False),
        # haiku/_src/batch_norm.py: BatchNorm(create_scale, create_offset, decay_rate, eps,
        # data_format="channels_last"); `axis` there lists the reduced axes.
        Convention("haiku", "Haiku", "hk.BatchNorm", "import haiku as hk",
                   "decay_rate", False, "eps", "split", "create_offset", "create_scale", None,
                   None, None, -1, False),
        # equinox/nn/_batch_norm.py: BatchNorm(input_size, axis_name, eps, channelwise_affine,
        # momentum, inference, mode); per example the channel axis is 0, so 1 for the batch.
        Convention("equinox", "Equinox", "eqx.nn.BatchNorm", "import equinox as eqx",
                   "momentum", False, "eps", "single", None, None, "channelwise_affine",
                   "input_size", 1, 1, False),
    ]
}

PORT_IDS: tuple[str, ...] = tuple(CONVENTIONS)


def convention(framework_id: str) -> Convention:
    try:
        return CONVENTIONS[framework_id]
    except KeyError:
        raise PortError(f"unknown framework id {framework_id!r}; "
                        f"known: {', '.join(PORT_IDS)}") from None


def clean(x: float) -> float:
    """``1 - 0.99`` is 0.010000000000000009: round away the binary noise of a subtraction."""
    return float(f"{x:.12g}")


def default_decay(framework_id: str) -> float | None:
    """Default momentum in the Keras/Flax convention (weight of the old value), from profiles."""
    from ..profiles import PROFILES

    return PROFILES[framework_id]["default_momentum"].value


def default_epsilon(framework_id: str) -> float:
    from ..profiles import PROFILES

    return PROFILES[framework_id]["default_epsilon"].value


def profile_fact(framework_id: str, switch: str):
    from ..profiles import PROFILES

    return PROFILES[framework_id][switch]


def native_momentum(framework_id: str, decay: float | None) -> float | None:
    """The value to write in ``framework_id``'s momentum keyword for a Keras-style decay."""
    if decay is None:
        return None
    return clean(1.0 - decay) if convention(framework_id).new_batch_weight else clean(decay)


def decay_from_native(framework_id: str, momentum: float | None) -> float | None:
    """Keras-style decay (weight of the old value) from ``framework_id``'s own momentum."""
    if momentum is None:
        return None
    return clean(1.0 - momentum) if convention(framework_id).new_batch_weight else clean(momentum)


def default_native_momentum(framework_id: str) -> float | None:
    return native_momentum(framework_id, default_decay(framework_id))
