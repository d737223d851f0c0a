"""``xbn port``: one BatchNorm constructor call from a source framework to a target.

The arguments are in the *source* framework's convention (``--from torch --momentum 0.1`` is
torch's momentum). They are read into framework-free :class:`Settings` (momentum as the Keras/
Flax "weight of the old value", called *decay* here), then written in the target's spelling.
Anything a user leaves out takes the source framework's real default (``xbn.profiles``), so
the translation never silently adopts the target's different default.

Why "same data": the channel axis is translated so that the target layer normalizes the same
arrays the source layer sees. When the target cannot (torch only normalizes dim 1), the note
says how to move the axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import frameworks as fw
from . import notes as texts
from .errors import PortError

Axis = int | tuple[int, ...]


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


@dataclass
class Translation:
    source: str
    target: str
    settings: Settings
    call: str  # the constructor, e.g. "torch.nn.BatchNorm2d"
    kwargs: dict
    imports: str
    notes: list[Note] = field(default_factory=list)
    placeholders: dict = field(default_factory=dict)  # name in code -> what to put there

    @property
    def call_code(self) -> str:
        args = ", ".join(f"{k}={_literal(v)}" for k, v in self.kwargs.items())
        return f"{self.call}({args})"

    @property
    def code(self) -> str:
        return f"{self.imports}\n\nbn = {self.call_code}\n"

    def to_dict(self) -> dict:
        return {"from": self.source, "to": self.target, "settings": asdict(self.settings),
                "target": {"call": self.call, "kwargs": {k: _json_value(v)
                                                         for k, v in self.kwargs.items()},
                           "import": self.imports, "code": self.code},
                "placeholders": self.placeholders,
                "notes": [asdict(n) for n in self.notes]}

    def to_text(self) -> str:
        lines = [f"# {self.source} -> {self.target}", self.code.rstrip(), "", "notes:"]
        lines += [f"  - {n.text}" for n in self.notes]
        return "\n".join(lines) + "\n"


class _Code(str):
    """A keyword value written verbatim (an expression, not a string literal)."""


def _literal(v) -> str:
    if isinstance(v, _Code):
        return str(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_literal(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def _json_value(v):
    if isinstance(v, _Code):
        return None if v in ("C",) else str(v)
    return list(v) if isinstance(v, tuple) else v


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
    conv = fw.convention(source)
    notes: list[Note] = []
    cumulative = isinstance(momentum, str) and momentum.lower() == "none"
    if cumulative and not conv.has_cumulative:
        raise PortError(f"momentum=None (cumulative average) exists only in torch, not in {source}")
    if isinstance(momentum, str) and not cumulative:
        try:
            momentum = float(momentum)
        except ValueError:
            raise PortError(f"--momentum must be a number (or 'none' for torch), got {momentum!r}") from None
    if momentum is None and not cumulative:
        if fw.default_decay(source) is None:
            raise PortError(f"{source}'s {conv.momentum_kw} has no default: pass --momentum")
        decay = fw.default_decay(source)
        notes.append(Note("momentum-default", f"momentum not given: {source}'s default "
                          f"{conv.momentum_kw}={fw.native_momentum(source, decay)!r} "
                          f"({fw.profile_fact(source, 'default_momentum').source})"))
    else:
        decay = None if cumulative else fw.decay_from_native(source, float(momentum))
        if decay is not None and not 0.0 <= decay <= 1.0:
            raise PortError(f"{source} {conv.momentum_kw}={momentum!r} is outside [0, 1]")
    if epsilon is None:
        epsilon = fw.default_epsilon(source)
    elif epsilon <= 0:
        raise PortError(f"epsilon must be > 0, got {epsilon!r}")
    center, scale = _read_affine(source, conv, center, scale, affine)
    if track_running_stats is None:
        track_running_stats = True
    elif not track_running_stats and not conv.has_track_running_stats:
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


def _read_affine(source, conv, center, scale, affine) -> tuple[bool, bool]:
    if affine is not None:
        if conv.affine != "single":
            raise PortError(f"{source} has no single affine flag: use --center/--scale")
        if (center is not None and center != affine) or (scale is not None and scale != affine):
            raise PortError("--affine contradicts --center/--scale")
        return affine, affine
    center = True if center is None else center
    scale = True if scale is None else scale
    if conv.affine == "single" and center != scale:
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


def translate(source: str, target: str, **source_args) -> Translation:
    """The target constructor and the notes for this pair. Raises PortError when impossible."""
    settings, notes = read_source(source, **source_args)
    return render(settings, source, target, notes)


def render(settings: Settings, source: str, target: str,
           notes: list[Note] | None = None) -> Translation:
    conv = fw.convention(target)
    src = fw.convention(source)
    t = Translation(source, target, settings, conv.call, {}, conv.imports, list(notes or []))
    _features(t, conv)
    _axis(t, conv, src)
    _momentum(t, conv, src)
    t.kwargs[conv.epsilon_kw] = settings.epsilon
    _epsilon_note(t, conv)
    _affine(t, conv)
    _statistics(t, conv)
    _extras(t, conv)
    t.notes.append(Note("freeze", texts.FREEZE[target]))
    if source in ("keras", "tf-keras") and target not in ("keras", "tf-keras"):
        t.notes.append(Note("freeze-source", f"{src.label}'s `trainable=False` on a BN layer "
                            "means inference mode as well as frozen parameters; reproduce both "
                            "halves as above."))
    t.notes.append(Note("mode", texts.MODE[target]))
    _profile_notes(t, source, target)
    return t


def _features(t: Translation, conv: fw.Convention) -> None:
    s = t.settings
    if conv.id == "torch":
        t.call = conv.call.format(d=_torch_dims(t))
    if conv.features_kw:
        if s.features is None:
            t.kwargs[conv.features_kw] = _Code("C")
            t.placeholders["C"] = "number of channels (pass --features)"
            t.notes.append(Note("features", f"{conv.label} needs the channel count: replace C "
                                "(or pass --features)."))
        else:
            t.kwargs[conv.features_kw] = s.features
    if conv.id == "equinox":
        t.kwargs["axis_name"] = "batch"


def _torch_dims(t: Translation) -> int:
    rank = t.settings.rank
    if rank is None:
        t.notes.append(Note("torch-class", "BatchNorm2d assumed for (N, C, H, W) inputs: use "
                            "BatchNorm1d for (N, C) or (N, C, L) and BatchNorm3d for "
                            "(N, C, D, H, W); the arithmetic is the same (pass --rank)."))
        return 2
    return {2: 1, 3: 1, 4: 2, 5: 3}[rank]


def _axis(t: Translation, conv: fw.Convention, src: fw.Convention) -> None:
    axis, rank = t.settings.axis, t.settings.rank
    norm = axis % rank if isinstance(axis, int) and rank else axis
    if conv.channel_axis is not None:  # torch, equinox: the channels must be dim 1
        if isinstance(axis, tuple):
            raise PortError(f"{conv.label} normalizes one channel dim; the source normalizes "
                            f"over channel axes {axis}")
        if norm != conv.channel_axis and not (rank == 2 and axis == -1):
            t.notes.append(Note("axis", f"channel axis: the source normalizes axis {axis}; "
                                f"{conv.label} normalizes dim 1, so move the channels there: "
                                f"`x = torch.movedim(x, {axis}, 1)` before the layer and "
                                f"`torch.movedim(y, 1, {axis})` after it (for NHWC images: "
                                "x.permute(0, 3, 1, 2)); whole models usually switch to NCHW."))
        return
    if conv.id == "haiku":
        _haiku_axis(t, axis, rank)
        return
    if isinstance(axis, tuple) and not conv.multi_axis:
        raise PortError(f"{conv.label} takes a single int axis; the source normalizes over "
                        f"channel axes {axis}")
    t.kwargs["axis"] = axis
    if src.channel_axis == 1 and axis == 1:
        t.notes.append(Note("axis", f"channel axis: axis=1 keeps {src.label}'s (N, C, ...) data "
                            f"layout; if you move to channels-last data (the {conv.label} "
                            "convolution default), use axis=-1."))
    elif axis != conv.axis_default:
        t.notes.append(Note("axis", f"channel axis: {axis} (the {conv.label} default is "
                            f"{conv.axis_default})."))


def _haiku_axis(t: Translation, axis, rank) -> None:
    if axis == -1 or (rank and isinstance(axis, int) and axis % rank == rank - 1):
        t.kwargs["data_format"] = "channels_last"
    elif axis == 1:
        t.kwargs["data_format"] = "channels_first"
    elif rank is not None:
        channels = {a % rank for a in (axis if isinstance(axis, tuple) else (axis,))}
        t.kwargs["axis"] = [a for a in range(rank) if a not in channels]
        t.notes.append(Note("axis", "haiku's `axis` lists the axes reduced over (not the "
                            "channel axis)."))
    else:
        raise PortError(f"haiku needs --rank to express channel axis {axis} (its `axis` "
                        "argument lists the reduced axes)")


def _momentum(t: Translation, conv: fw.Convention, src: fw.Convention) -> None:
    s = t.settings
    if s.cumulative:
        if not conv.has_cumulative:
            raise PortError(f"torch momentum=None (cumulative average, factor 1/num_batches_tracked)"
                            f" has no equivalent in {conv.label}: choose a momentum")
        t.kwargs[conv.momentum_kw] = None
        t.notes.append(Note("momentum", "momentum=None: cumulative moving average (the "
                            "running statistics are the mean over all batches seen)."))
        return
    value = fw.native_momentum(conv.id, s.decay)
    t.kwargs[conv.momentum_kw] = value
    src_value = fw.native_momentum(src.id, s.decay)
    default = fw.default_native_momentum(conv.id)
    default_text = (f"{conv.label} has no default" if default is None
                    else f"{conv.label}'s default is {default!r}")
    if src.new_batch_weight == conv.new_batch_weight:
        rule = (f"same convention in {src.label} and {conv.label}: "
                f"{conv.momentum_kw}={value!r} unchanged")
    elif conv.new_batch_weight:
        rule = (f"{src.label} {src.momentum_kw}={src_value!r} is the weight of the old value "
                f"(running = m*running + (1-m)*batch); {conv.label} momentum is the weight of "
                f"the new batch (running = (1-m)*running + m*batch): "
                f"{conv.momentum_kw} = 1 - {src_value!r} = {value!r}")
    else:
        rule = (f"{src.label} {src.momentum_kw}={src_value!r} is the weight of the new batch "
                f"(running = (1-m)*running + m*batch); {conv.label} {conv.momentum_kw} is the "
                f"weight of the old value (running = m*running + (1-m)*batch): "
                f"{conv.momentum_kw} = 1 - {src_value!r} = {value!r}")
    t.notes.append(Note("momentum", f"momentum: {rule} ({default_text})."))
    if s.decay is not None and s.decay < 0.5:
        t.notes.append(Note("momentum-suspicious", f"momentum: a decay of {s.decay!r} (old-value "
                            f"weight) forgets almost everything each step; if {src_value!r} was "
                            f"copied from a framework with the other convention, the intended "
                            f"{src.momentum_kw} is {fw.clean(1 - src_value)!r} "
                            "(pytorch/examples#289, kazuto1011/deeplab-pytorch#79)."))


def _epsilon_note(t: Translation, conv: fw.Convention) -> None:
    eps = t.settings.epsilon
    default = fw.default_epsilon(conv.id)
    if eps == default:
        text = f"epsilon: {eps!r}, also {conv.label}'s default (passed explicitly anyway)."
    else:
        text = (f"epsilon: {eps!r} must be passed explicitly: {conv.label} would otherwise use "
                f"{conv.epsilon_kw}={default!r} "
                f"({fw.profile_fact(conv.id, 'default_epsilon').source}).")
    t.notes.append(Note("epsilon", text))


def _affine(t: Translation, conv: fw.Convention) -> None:
    s = t.settings
    if conv.affine == "single":
        if s.center != s.scale:
            raise PortError(
                f"{conv.label} cannot split center and scale (one flag {conv.affine_kw}); "
                f"the source has center={s.center}, scale={s.scale}. Workaround: "
                f"{conv.affine_kw}=True and freeze the missing parameter at its identity value "
                "(bias 0 / weight 1) with requires_grad_(False) or an optimizer mask")
        if not s.center:
            t.kwargs[conv.affine_kw] = False
            t.notes.append(Note("affine", f"{conv.affine_kw}=False: no weight/bias; some "
                                "converters fail on it (NVIDIA-AI-IOT/torch2trt#625)."))
        return
    if conv.id == "haiku":  # both flags are required arguments: put them first
        t.kwargs = {conv.scale_kw: s.scale, conv.center_kw: s.center, **t.kwargs}
        return
    if not s.center:
        t.kwargs[conv.center_kw] = False
    if not s.scale:
        t.kwargs[conv.scale_kw] = False


def _statistics(t: Translation, conv: fw.Convention) -> None:
    if t.settings.track_running_stats:
        return
    if conv.has_track_running_stats:
        t.kwargs["track_running_stats"] = False
        return
    how = {
        "keras": "call the layer with training=True at inference too (and never set "
                 "trainable=False, which forces the moving statistics); the moving statistics "
                 "are then updated but unused",
        "tf-keras": "call the layer with training=True at inference too (and never set "
                    "trainable=False); the moving statistics are updated but unused",
        "flax": "set use_running_average=False in the constructor and apply with "
                "mutable=['batch_stats'], discarding the updates",
        "flax-nnx": "keep use_running_average=False and do not call .eval() on this layer "
                    "(model.eval() sets it for every nested BatchNorm)",
        "haiku": "call with is_training=False, test_local_stats=True at inference",
        "equinox": "there is no switch: keep inference=False at inference too",
    }[conv.id]
    if conv.id == "flax":
        t.kwargs["use_running_average"] = False
    t.notes.append(Note("statistics", "track_running_stats=False (batch statistics in every "
                        f"mode) has no constructor equivalent in {conv.label}: {how}."))


def _extras(t: Translation, conv: fw.Convention) -> None:
    if conv.id == "flax" and "use_running_average" not in t.kwargs:
        t.kwargs = {"use_running_average": _Code("not train"), **t.kwargs}
    elif conv.id == "flax-nnx":
        t.kwargs["rngs"] = _Code("rngs")
        t.placeholders["rngs"] = "an nnx.Rngs"
    elif conv.id == "equinox":
        t.kwargs["mode"] = "batch"
        t.notes.append(Note("equinox-mode", "mode='batch' normalizes training batches with batch "
                            "statistics like torch/Keras/Flax; the default ('legacy' -> 'ema') "
                            "normalizes them with running statistics seeded by the first "
                            "batch (patrick-kidger/equinox#659). In mode='batch' the inference "
                            "statistics are zero-debiased (hidden/(1-momentum^t), "
                            "equinox/nn/_batch_norm.py), so early in training they differ from "
                            "a plain moving average that starts at mean 0, variance 1."))
    if conv.id == "flax":
        t.placeholders["train"] = "a bool argument of your module's __call__"


def _profile_notes(t: Translation, source: str, target: str) -> None:
    """Notes for every semantic switch on which the two frameworks' profiles differ."""
    var_src = fw.profile_fact(source, "variance_update").value
    var_dst = fw.profile_fact(target, "variance_update").value
    if var_src != var_dst:
        t.notes.append(Note("variance", texts.drift_text(source, target, var_src, var_dst)))
    else:
        t.notes.append(Note("variance", f"running variance: no drift; each of {source} and "
                            f"{target} {texts.SWITCH_TEXT['variance_update'][var_dst]}."))
    for switch in ("ema", "training_normalization"):
        if target == "equinox":  # mode='batch' is emitted; its note says what remains
            break
        a = fw.profile_fact(source, switch).value
        b = fw.profile_fact(target, switch).value
        if a != b:
            words = texts.SWITCH_TEXT[switch]
            t.notes.append(Note(switch, f"{switch}: {source} {words.get(a, a)}; {target} "
                                f"{words.get(b, b)}."))
