"""A BN configuration in no framework's spelling, read from arguments in a source's spelling.

``xbn port`` and ``xbn audit`` read a source framework's arguments (``--from torch --momentum
0.1`` is torch's momentum) into :class:`Settings`: momentum as the Keras/Flax "weight of the old
value", called *decay* here. Anything a user leaves out takes the source framework's real
default (``xbn.profiles.facts``). What a framework can express is its ``Capabilities`` and how it
spells it its ``Convention``, both in ``xbn.frameworks.registry``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..adapters.port_errors import PortError
from ..frameworks import registry
from ..frameworks.registry import Convention, decay_from_native, native_momentum
from ..profiles.facts import default_decay, default_epsilon, profile_fact

Axis = int | tuple[int, ...]


def convention(framework_id: str) -> Convention:
    """The spelling of a framework ``xbn port`` knows (``registry.PORT_IDS``), or PortError."""
    try:
        return registry.CONVENTIONS[framework_id]
    except KeyError:
        raise PortError(f"unknown framework id {framework_id!r}; "
                        f"known: {', '.join(registry.PORT_IDS)}") from None


@dataclass(frozen=True)
class Settings:
    """A BN configuration in no framework's spelling."""

    decay: float | None  # Keras/Flax momentum: running = decay*running + (1-decay)*batch
    cumulative: bool  # torch momentum=None
    epsilon: float
    center: bool
    scale: bool
    track_running_stats: bool
    axis: Axis  # channel axis of the data the layer sees
    features: int | None
    rank: int | None  # rank of that data, batch included (selects torch's 1d/2d/3d)


@dataclass
class Note:
    topic: str
    text: str


def parse_axis(text: str | None) -> Axis | None:
    """``"-1"`` -> -1, ``"1,2"`` -> (1, 2)."""
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in str(text).replace(" ", "").split(",") if p != "")
    except ValueError:
        raise PortError(f"--axis must be an integer or a comma-separated list, got {text!r}") from None
    if not parts:
        raise PortError("--axis is empty")
    return parts[0] if len(parts) == 1 else parts


def read_source(source: str, *, momentum: float | str | None = None, epsilon: float | None = None,
                center: bool | None = None, scale: bool | None = None,
                affine: bool | None = None, track_running_stats: bool | None = None,
                features: int | None = None, axis: Axis | str | None = None,
                rank: int | None = None) -> tuple[Settings, list[Note]]:
    """Settings from arguments in ``source``'s convention; defaults are ``source``'s defaults."""
    conv = convention(source)
    caps = registry.capabilities(source)
    notes: list[Note] = []
    cumulative = isinstance(momentum, str) and momentum.lower() == "none"
    if cumulative and not caps.cumulative_momentum:
        raise PortError(f"momentum=None (cumulative average) exists only in torch, not in {source}")
    if isinstance(momentum, str) and not cumulative:
        try:
            momentum = float(momentum)
        except ValueError:
            raise PortError(f"--momentum must be a number (or 'none' for torch), got {momentum!r}") from None
    if momentum is None and not cumulative:
        if default_decay(source) is None:
            raise PortError(f"{source}'s {conv.momentum_kw} has no default: pass --momentum")
        decay = default_decay(source)
        notes.append(Note("momentum-default", f"momentum not given: {source}'s default "
                          f"{conv.momentum_kw}={native_momentum(source, decay)!r} "
                          f"({profile_fact(source, 'default_momentum').source})"))
    else:
        decay = None if cumulative else decay_from_native(source, float(momentum))
        if decay is not None and not 0.0 <= decay <= 1.0:
            raise PortError(f"{source} {conv.momentum_kw}={momentum!r} is outside [0, 1]")
    if epsilon is None:
        epsilon = default_epsilon(source)
    elif epsilon <= 0:
        raise PortError(f"epsilon must be > 0, got {epsilon!r}")
    center, scale = _read_affine(source, conv, caps, center, scale, affine)
    if track_running_stats is None:
        track_running_stats = True
    elif not track_running_stats and not caps.no_running_stats:
        raise PortError(f"{source} has no track_running_stats option (only torch does)")
    if cumulative and not track_running_stats:
        raise PortError("momentum=None needs track_running_stats=True")
    axis = _read_axis(source, conv, axis, rank)
    if features is not None and features < 1:
        raise PortError(f"--features must be >= 1, got {features}")
    if rank is not None and not 2 <= rank <= 5:
        raise PortError(f"--rank is the input rank with the batch axis (2..5), got {rank}")
    return Settings(decay, cumulative, float(epsilon), center, scale, track_running_stats,
                    axis, features, rank), notes


def _read_affine(source, conv, caps, center, scale, affine) -> tuple[bool, bool]:
    if affine is not None:
        if caps.split_affine:
            raise PortError(f"{source} has no single affine flag: use --center/--scale")
        if (center is not None and center != affine) or (scale is not None and scale != affine):
            raise PortError("--affine contradicts --center/--scale")
        return affine, affine
    center = True if center is None else center
    scale = True if scale is None else scale
    if not caps.split_affine and center != scale and not (
            scale and caps.scale_without_center):
        raise PortError(f"{source} cannot split center and scale: its one flag "
                        f"{conv.affine_kw} sets both (center={center}, scale={scale})")
    return center, scale


def _read_axis(source, conv, axis, rank) -> Axis:
    if isinstance(axis, str):
        axis = parse_axis(axis)
    if axis is None:
        return conv.axis_default
    if conv.channel_axis is not None:
        ok = axis == conv.channel_axis or (rank is not None and isinstance(axis, int)
                                          and axis % rank == conv.channel_axis)
        if not ok:
            raise PortError(f"{source} has no axis argument: its channels are dim "
                            f"{conv.channel_axis} of the batch (got --axis {axis})")
        return conv.channel_axis
    if isinstance(axis, tuple) and not conv.multi_axis:
        raise PortError(f"{source} takes a single channel axis, got {axis}")
    return axis
