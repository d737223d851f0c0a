"""``xbn audit``: every BN layer of a model with its settings, and the pitfalls for a target.

Files are read without executing anything from them: a ``.keras`` archive's config is JSON,
a state_dict goes through ``torch.load(weights_only=True)``. A state_dict stores neither
momentum nor epsilon: those are reported as unknown (with the torch defaults the module code
would use unless it says otherwise), never guessed silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..adapters.layer_info import LayerInfo
from ..adapters.port_errors import PortError
from ..frameworks import registry
from ..profiles import facts as profiles
from . import formats as fm
from . import notes as texts
from .settings import convention


@dataclass
class Audit:
    source: str
    framework: str
    target: str | None
    layers: list[LayerInfo]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"source": self.source, "framework": self.framework, "target": self.target,
                "layers": [x.to_dict() for x in self.layers], "notes": self.notes,
                "counts": self.counts()}

    def counts(self) -> dict:
        levels = [f.level for x in self.layers for f in x.flags]
        return {lvl: levels.count(lvl) for lvl in ("error", "warn", "info")}

    def to_text(self) -> str:
        head = f"{self.source} ({self.framework}): {len(self.layers)} BatchNorm layer(s)"
        lines = [head + (f"; target {self.target}" if self.target else "")]
        lines += _table(self.layers)
        flagged = [(x, f) for x in self.layers for f in x.flags]
        if flagged:
            lines += ["", "flags:"]
            lines += [f"  {x.name}: [{f.level}] {f.text}" for x, f in flagged]
        codes = [(x.name, x.target_code) for x in self.layers if x.target_code]
        if codes:
            lines += ["", f"{self.target} constructors:"]
            lines += [f"  {name}: {code}" for name, code in codes]
        if self.notes:
            lines += ["", "notes:"] + [f"  - {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if v is None:
        return "?"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return str(v)


def _table(layers: list[LayerInfo]) -> list[str]:
    cols = ["name", "kind", "C", "momentum", "epsilon", "center", "scale", "trainable",
            "running", "axis"]
    rows = [[x.name, x.kind, _cell(x.features),
             "None (cumulative)" if x.cumulative else _cell(x.momentum), _cell(x.epsilon),
             _cell(x.center), _cell(x.scale), _cell(x.trainable), _cell(x.track_running_stats),
             _cell(x.axis)] for x in layers]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [("  " + fmt.format(*r)).rstrip() for r in [cols, *rows]]


# reading ------------------------------------------------------------------------------------

def audit_file(path: str | Path, target: str | None = None) -> Audit:
    """Audit a ``.keras`` archive, Keras weights, a torch state_dict or Flax variables."""
    path = Path(path)
    bundle = fm.read(path)
    fmt = fm.FORMATS[bundle.format]
    state_io = fm.module(fmt)
    framework = bundle.framework or registry.FAMILIES[fmt.family].file_framework
    layers = []
    for layer in bundle.layers:
        info = state_io.layer_info(layer, framework)
        if layer.extra:
            info.extras["not portable"] = sorted(layer.extra)
        layers.append(info)
    notes = list(bundle.notes) + state_io.file_notes(framework)
    return finish(Audit(str(path), framework, target, layers, notes))


def audit(obj, target: str | None = None, inputs=None) -> Audit:
    """Audit a live model (see ``live.framework_of``); linen modules need ``inputs``."""
    from ..adapters.live import bn_layers, framework_of

    framework = framework_of(obj)
    label = type(obj[0] if isinstance(obj, tuple) else obj).__name__
    return finish(Audit(label, framework, target, bn_layers(obj, inputs)))


# flags --------------------------------------------------------------------------------------

def finish(a: Audit) -> Audit:
    if a.target is not None:
        convention(a.target)
    for layer in a.layers:
        _generic_flags(layer)
        if a.target is not None:
            _target_flags(layer, a.target)
    if a.target is not None and a.layers:
        a.notes += _pair_notes(a.framework, a.target, a.layers)
    for layer in a.layers:  # the same channel-axis advice once, not once per layer
        for f in [f for f in layer.flags if f.topic == "axis"]:
            layer.flags.remove(f)
            if f.text not in a.notes:
                a.notes.append(f.text)
    return a


def _generic_flags(x: LayerInfo) -> None:
    if x.cumulative:
        x.flag("warn", "momentum", "momentum=None: cumulative average over all batches "
               "(factor 1/num_batches_tracked); only torch has it")
    if x.track_running_stats is False:
        x.flag("warn", "statistics", "track_running_stats=False: batch statistics in every "
               "mode, no running statistics")
    if x.decay is not None and x.decay < 0.5:
        native = x.momentum
        x.flag("warn", "momentum", f"momentum={native!r} keeps only {x.decay!r} of the old value "
               f"per step; if it came from a framework with the other convention the intended "
               f"value is {registry.clean(1 - native)!r} (pytorch/examples#289)")
    frozen = texts.FROZEN_LAYER.get(x.framework)
    if frozen is not None and x.trainable is False:
        x.flag(*(frozen["training"] if x.training else frozen["otherwise"]))
    if x.center is False or x.scale is False:
        conv = convention(x.framework)
        what = (f"{conv.offset_kw}=False" if conv.offset_kw and x.scale and not x.center
                else f"{conv.affine_kw}=False"
                if not registry.capabilities(x.framework).split_affine
                else f"center={_cell(x.center)}, scale={_cell(x.scale)}")
        x.flag("info", "affine", f"{what}: converters often assume both parameters exist "
               "(NVIDIA-AI-IOT/torch2trt#625)")
    for key, value in x.extras.items():
        if key in ("renorm", "virtual_batch_size", "adjustment", "not portable"):
            x.flag("warn", key, f"{key}={value}: no equivalent in other frameworks")
        elif key == "synchronized":
            x.flag("info", key, "synchronized=True: cross-replica statistics (SyncBatchNorm "
                   "in torch, axis_name in Flax)")
        elif key == "fused":
            x.flag("info", key, f"fused={value}: tf-keras' fused kernel feeds the unbiased "
                   "variance into the moving variance")


def _target_flags(x: LayerInfo, target: str) -> None:
    from .settings import Settings
    from .translation import render

    conv = convention(target)
    if x.framework == target:
        return
    default_eps = profiles.default_epsilon(target)
    if x.epsilon is None:
        src_eps = (profiles.default_epsilon(x.framework) if x.framework in registry.CONVENTIONS
                   else None)
        x.flag("warn", "epsilon", f"epsilon not stored here ({x.framework} default "
               f"{src_eps!r}); {conv.label} defaults to {default_eps!r}: pass "
               "the real value explicitly")
    elif x.epsilon != default_eps:
        x.flag("warn", "epsilon", f"epsilon={x.epsilon!r} differs from {conv.label}'s default "
               f"{default_eps!r}: pass {conv.epsilon_kw}={x.epsilon!r}")
    decay = x.decay if x.momentum is not None else profiles.default_decay(x.framework)
    if not x.cumulative and decay is not None:
        value = registry.native_momentum(target, decay)
        known = "" if x.momentum is not None else f" (not stored; {x.framework} default assumed)"
        if convention(x.framework).new_batch_weight != conv.new_batch_weight:
            x.flag("warn", "momentum", f"momentum{known}: {x.framework} "
                   f"{registry.native_momentum(x.framework, decay)!r} becomes {conv.label} "
                   f"{conv.momentum_kw}={value!r} (1 - m: the conventions point opposite ways)")
        elif value != profiles.default_native_momentum(target):
            x.flag("info", "momentum", f"momentum{known}: {conv.momentum_kw}={value!r} (same "
                   f"convention; {conv.label}'s default differs)")
    if x.trainable is False and profiles.profile_fact(x.framework, "frozen_means_inference").value:
        x.flag("warn", "frozen", texts.FREEZE[target])
    settings = Settings(decay, x.cumulative, x.epsilon if x.epsilon is not None
                        else profiles.default_epsilon(x.framework),
                        x.center is not False, x.scale is not False,
                        x.track_running_stats is not False,
                        x.axis if x.axis is not None else convention(x.framework).axis_default,
                        x.features, x.rank)
    try:
        t = render(settings, x.framework, target)
    except PortError as exc:
        x.flag("error", "not-expressible", str(exc))
        return
    x.target_code = t.call_code
    for note in t.notes:
        if note.topic in ("statistics", "axis"):
            x.flag("warn" if note.topic == "statistics" else "info", note.topic, note.text)


def _pair_notes(source: str, target: str, layers: list[LayerInfo]) -> list[str]:
    notes = []
    a = profiles.profile_fact(source, "variance_update").value
    b = profiles.profile_fact(target, "variance_update").value
    if a != b:
        notes.append(texts.drift_text(source, target, a, b))
    notes.append(texts.MODE[target])
    if any(x.trainable is False for x in layers):
        notes.append(texts.FREEZE[target])
    return notes
