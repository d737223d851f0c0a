"""``xbn port``: one BatchNorm constructor call from a source framework to a target.

The arguments are read into framework-free :class:`~xbn.port.settings.Settings` (see
``settings.py``), then written here in the target's spelling: its ``Convention`` and
``Capabilities`` in ``xbn.frameworks.registry``, its defaults and semantic switches in ``xbn.profiles.facts``,
the prose of the notes in ``notes.py``. A few spellings are not data (haiku's reduced-axes
``axis``, flax's mode argument, equinox's ``mode``/``axis_name``): they are the ``conv.id``
branches below.

Why "same data": the channel axis is translated so that the target layer normalizes the same
arrays the source layer sees. When the target cannot (torch only normalizes dim 1), the note
says how to move the axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..adapters.port_errors import PortError
from ..frameworks import registry
from ..frameworks.registry import Convention, clean, native_momentum
from ..profiles.facts import default_epsilon, default_native_momentum, profile_fact
from . import notes as texts
from .settings import Note, Settings, convention, parse_axis, read_source

__all__ = ["Note", "Settings", "Translation", "parse_axis", "read_source", "render", "translate"]


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


def translate(source: str, target: str, **source_args) -> Translation:
    """The target constructor and the notes for this pair. Raises PortError when impossible."""
    settings, notes = read_source(source, **source_args)
    return render(settings, source, target, notes)


def render(settings: Settings, source: str, target: str,
           notes: list[Note] | None = None) -> Translation:
    conv = convention(target)
    src = convention(source)
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
    if _frozen_means_inference(source) and not _frozen_means_inference(target):
        t.notes.append(Note("freeze-source", f"{src.label}'s `trainable=False` on a BN layer "
                            "means inference mode as well as frozen parameters; reproduce both "
                            "halves as above."))
    t.notes.append(Note("mode", texts.MODE[target]))
    _profile_notes(t, source, target)
    return t


def _frozen_means_inference(framework: str) -> bool:
    """Keras: ``trainable=False`` on a BN layer also selects inference mode."""
    return bool(profile_fact(framework, "frozen_means_inference").value)


def _features(t: Translation, conv: Convention) -> None:
    s = t.settings
    if "{d}" in conv.call:  # torch: BatchNorm1d/2d/3d by the input rank
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


def _axis(t: Translation, conv: Convention, src: Convention) -> None:
    axis, rank = t.settings.axis, t.settings.rank
    norm = axis % rank if isinstance(axis, int) and rank else axis
    if conv.channel_axis is not None:  # torch, equinox: the channels must be dim 1
        if isinstance(axis, tuple):
            raise PortError(f"{conv.label} normalizes one channel dim; the source normalizes "
                            f"over channel axes {axis}")
        fixed = conv.channel_axis % rank if rank else conv.channel_axis
        if conv.channel_axis < 0:  # MLX: the channels must be last
            if norm != fixed and not (rank is None and axis == -1):
                t.notes.append(Note("axis", f"channel axis: the source normalizes axis {axis}; "
                                    f"{conv.label} normalizes the last axis, so move the "
                                    f"channels there: `x = mx.moveaxis(x, {axis}, -1)` before "
                                    f"the layer and `mx.moveaxis(y, -1, {axis})` after it (for "
                                    "NCHW images: x.transpose(0, 2, 3, 1)); whole models "
                                    "usually switch to NHWC."))
            return
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


def _momentum(t: Translation, conv: Convention, src: Convention) -> None:
    s = t.settings
    if s.cumulative:
        if not registry.capabilities(conv.id).cumulative_momentum:
            raise PortError(f"torch momentum=None (cumulative average, factor 1/num_batches_tracked)"
                            f" has no equivalent in {conv.label}: choose a momentum")
        t.kwargs[conv.momentum_kw] = None
        t.notes.append(Note("momentum", "momentum=None: cumulative moving average (the "
                            "running statistics are the mean over all batches seen)."))
        return
    value = native_momentum(conv.id, s.decay)
    t.kwargs[conv.momentum_kw] = value
    src_value = native_momentum(src.id, s.decay)
    default = default_native_momentum(conv.id)
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
                            f"{src.momentum_kw} is {clean(1 - src_value)!r} "
                            "(pytorch/examples#289, kazuto1011/deeplab-pytorch#79)."))


def _epsilon_note(t: Translation, conv: Convention) -> None:
    eps = t.settings.epsilon
    default = default_epsilon(conv.id)
    if eps == default:
        text = f"epsilon: {eps!r}, also {conv.label}'s default (passed explicitly anyway)."
    else:
        text = (f"epsilon: {eps!r} must be passed explicitly: {conv.label} would otherwise use "
                f"{conv.epsilon_kw}={default!r} "
                f"({profile_fact(conv.id, 'default_epsilon').source}).")
    t.notes.append(Note("epsilon", text))


def _affine(t: Translation, conv: Convention) -> None:
    s = t.settings
    caps = registry.capabilities(conv.id)
    if not caps.split_affine:
        if s.scale and not s.center and conv.offset_kw and caps.scale_without_center:
            t.kwargs[conv.offset_kw] = False  # affine=True (the default) keeps the weight
            t.notes.append(Note("affine", f"{conv.offset_kw}=False: a weight and no bias "
                                f"({_since(conv.id, 'scale_without_center')})."))
            return
        if s.center != s.scale:
            since = _since(conv.id, "scale_without_center") if s.scale else ""
            raise PortError(
                f"{conv.label} cannot split center and scale (one flag {conv.affine_kw}"
                f"{'; ' + since if since else ''}); "
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


def _since(framework: str, capability: str) -> str:
    """Where a capability that arrived in a release stands here: 'torch >= 2.12 has it,
    the installed torch 2.13.0 too' (empty when the declaration names no release)."""
    since = getattr(registry.declared_capabilities(framework), capability)
    if not isinstance(since, registry.Since):
        return ""
    found = registry.version(framework)
    here = (f"installed: {since.distribution} {found}" if found
            else f"{since.distribution} is not installed here")
    return f"{since.distribution} >= {since.version}; {here}"


def _statistics(t: Translation, conv: Convention) -> None:
    if t.settings.track_running_stats:
        return
    if registry.capabilities(conv.id).no_running_stats:
        t.kwargs["track_running_stats"] = False
        return
    how = conv.without_running_stats
    if conv.id == "flax":
        t.kwargs["use_running_average"] = False
    t.notes.append(Note("statistics", "track_running_stats=False (batch statistics in every "
                        f"mode) has no constructor equivalent in {conv.label}: {how}."))


def _extras(t: Translation, conv: Convention) -> None:
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
    var_src = profile_fact(source, "variance_update").value
    var_dst = profile_fact(target, "variance_update").value
    if var_src != var_dst:
        t.notes.append(Note("variance", texts.drift_text(source, target, var_src, var_dst)))
    else:
        t.notes.append(Note("variance", f"running variance: no drift; each of {source} and "
                            f"{target} {texts.SWITCH_TEXT['variance_update'][var_dst]}."))
    for switch in ("ema", "training_normalization"):
        if target == "equinox":  # mode='batch' is emitted; its note says what remains
            break
        a = profile_fact(source, switch).value
        b = profile_fact(target, switch).value
        if a != b:
            words = texts.SWITCH_TEXT[switch]
            t.notes.append(Note(switch, f"{switch}: {source} {words.get(a, a)}; {target} "
                                f"{words.get(b, b)}."))
