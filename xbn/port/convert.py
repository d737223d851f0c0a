"""``xbn convert``: BN parameters and running statistics from one weights format to another.

Only BN tensors are converted (gamma, beta, running mean and variance): a convolution's kernel
layout is a different problem. Everything else is reported, or passed through unchanged when
the output is written into a ``--template`` of the target's family (or when source and
target are the same family). Layers are matched by their order in the model (``--order
model``), by name order (``--order name``), or by a JSON ``--map`` ``{source: target}``.

Explicit choices, each reported as a note:

- ``num_batches_tracked`` is dropped going to Keras/Flax (they have no counter; it only
  matters to torch's ``momentum=None``) and set to 0, or ``--num-batches-tracked N``, going to
  torch (kept as is from a torch source).
- A missing gamma/beta (``center``/``scale`` off) is filled with ones/zeros where the target
  needs it (torch's one ``affine`` flag); a trained gamma/beta the target has no slot for is
  an error, an identity one is dropped.
- Values keep their dtype unless the template's tensor has another one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..adapters.port_errors import PortError
from ..adapters.state_io import (
    ROLE_WORDS,
    ROLES,
    BNLayer,
    Bundle,
    is_identity,
    natural_key,
    write_bytes_atomic,
)
from . import formats as fm


@dataclass
class Conversion:
    """What ``convert_file`` did: the layer pairs, notes and the tensors it left alone."""

    source: str
    target: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layer_notes: dict[str, list[str]] = field(default_factory=dict)  # text -> layer names
    not_converted: dict[str, tuple] = field(default_factory=dict)
    passed_through: int = 0

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target,
                "layers": [{"source": a, "target": b} for a, b in self.pairs],
                "notes": self.all_notes(),
                "not_converted": {k: list(v) for k, v in self.not_converted.items()},
                "passed_through": self.passed_through}

    def to_text(self) -> str:
        lines = [f"{self.source} -> {self.target}: {len(self.pairs)} BN layer(s)"]
        lines += [f"  {a} -> {b}" for a, b in self.pairs]
        if self.passed_through:
            lines.append(f"{self.passed_through} other tensor(s) passed through from the template")
        if self.not_converted:
            names = list(self.not_converted)
            shown = ", ".join(names[:6]) + (f", ... ({len(names)})" if len(names) > 6 else "")
            lines.append(f"not converted (not BatchNorm): {shown}")
        lines += [f"note: {n}" for n in self.all_notes()]
        return "\n".join(lines) + "\n"

    def note(self, layer: str, text: str) -> None:
        """A per-layer note; identical texts are reported once with every layer they concern."""
        self.layer_notes.setdefault(text, []).append(layer)

    def all_notes(self) -> list[str]:
        return self.notes + [f"{_short(names)}: {text}" for text, names in self.layer_notes.items()]


def _short(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def load_map(path: str | Path) -> dict[str, str | None]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PortError(f"--map {path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                             for k, v in data.items()):
        raise PortError(f"--map {path}: must be a JSON object {{source layer: target layer or null}}")
    return data


def convert_file(src: str | Path, dst: str | Path, *, from_format: str | None = None,
                 to_format: str | None = None, template: str | Path | None = None,
                 name_map: dict[str, str | None] | str | Path | None = None,
                 order: str = "model", num_batches_tracked: int | None = None) -> Conversion:
    """Convert the BN state of ``src`` into ``dst``. Raises PortError on bad input."""
    if order not in ("model", "name"):
        raise PortError(f"--order must be 'model' or 'name', got {order!r}")
    if isinstance(name_map, str | Path):
        name_map = load_map(name_map)
    dst = Path(dst)
    dst_fmt = fm.infer(dst, to_format)
    source = fm.read(src, from_format)
    if not source.layers:
        raise PortError(f"{src}: no BatchNorm layers found")
    result = Conversion(str(src), str(dst), notes=list(source.notes))
    src_layers = _order(source.layers, order)
    if template is not None:
        target = fm.read(template)
        if fm.FORMATS[target.format].family != dst_fmt.family:
            raise PortError(f"--template {template} is a {target.format} file; {dst} needs a "
                            f"{dst_fmt.family} template")
        result.notes += target.notes
        pairs = _match(src_layers, _order(target.layers, order), name_map, str(src), str(template))
        result.passed_through = len(target.others)
    else:
        kept = _apply_map_names(src_layers, name_map, str(src))
        target = fm.module(dst_fmt).fresh([s for s, _ in kept], dst_fmt.name, [])
        pairs = list(zip([s for s, _ in kept], target.layers, strict=True))
        for (_, new_name), layer in zip(kept, target.layers, strict=True):
            if new_name:
                layer.name = new_name
        result.notes += target.notes
        if (fm.FORMATS[source.format].family == dst_fmt.family and source.others
                and target.store.holds_other_tensors):
            _pass_through(source, target)
            result.passed_through = len(source.others)
        else:
            result.not_converted = dict(source.others)
    same_family = fm.FORMATS[source.format].family == dst_fmt.family
    for s, t in pairs:
        _assign(s, t, target, result, keep_nbt=same_family, nbt=num_batches_tracked,
                fill_shapes=template is None)
        result.pairs.append((s.name, t.name))
    write_bytes_atomic(dst, target.store.to_bytes(dst))
    return result


def _order(layers: list[BNLayer], order: str) -> list[BNLayer]:
    return sorted(layers, key=lambda x: natural_key(x.name)) if order == "name" else list(layers)


def _names(layers: list[BNLayer]) -> str:
    names = [x.name for x in layers]
    return ", ".join(names[:8]) + (f", ... ({len(names)})" if len(names) > 8 else "")


def _apply_map_names(layers, name_map, src) -> list[tuple[BNLayer, str | None]]:
    if name_map is None:
        return [(x, None) for x in layers]
    by_name = {x.name: x for x in layers}
    unknown = [k for k in name_map if k not in by_name]
    if unknown:
        raise PortError(f"--map names {', '.join(unknown)}, not BN layers of {src} "
                        f"(it has {_names(layers)})")
    missing = [x.name for x in layers if x.name not in name_map]
    if missing:
        raise PortError(f"--map has no entry for BN layer(s) {', '.join(missing)} of {src} "
                        "(map them, or to null to leave them out)")
    return [(x, name_map[x.name]) for x in layers if name_map[x.name] is not None]


def _match(src_layers, dst_layers, name_map, src, template) -> list[tuple[BNLayer, BNLayer]]:
    if name_map is None:
        if len(src_layers) != len(dst_layers):
            raise PortError(f"{src} has {len(src_layers)} BN layer(s) ({_names(src_layers)}) but "
                            f"{template} has {len(dst_layers)} ({_names(dst_layers)}); pass "
                            "--map to pair them by name")
        return list(zip(src_layers, dst_layers, strict=True))
    by_dst = {x.name: x for x in dst_layers}
    pairs = []
    for s, new in _apply_map_names(src_layers, name_map, src):
        if new not in by_dst:
            raise PortError(f"--map sends {s.name} to {new}, not a BN layer of {template} "
                            f"(it has {_names(dst_layers)})")
        pairs.append((s, by_dst[new]))
    targets = [t.name for _, t in pairs]
    dupes = sorted({n for n in targets if targets.count(n) > 1})
    if dupes:
        raise PortError(f"--map sends several layers to {', '.join(dupes)}")
    return pairs


def _pass_through(source: Bundle, target: Bundle) -> None:
    if hasattr(source.store, "entries") and hasattr(target.store, "entries"):  # torch: raw tensors
        for key in source.others:
            target.store.entries[key] = source.store.entries[key]
        return
    for location in source.others:
        loc = source.store.locate(location)
        value = source.store.get(loc)
        if value is not None:
            target.store.set(loc, value)


def _assign(s: BNLayer, t: BNLayer, target: Bundle, result: Conversion, *, keep_nbt: bool,
            nbt: int | None, fill_shapes: bool) -> None:
    where = f"BN layer {s.label()} -> {t.label()}"
    n = s.features
    for role in ROLES:
        if role not in t.slots:
            if role in s.values:
                if is_identity(role, s.values[role]):
                    result.note(s.name, f"{role} dropped: the target layer has none "
                                "(center/scale off) and it was the identity")
                else:
                    raise PortError(f"{where}: the source has a trained {ROLE_WORDS[role]} but "
                                    "the target layer has none (center/scale off there)")
            continue
        old = target.store.get(t.slots[role]) if not fill_shapes else None
        if role in s.values:
            value = s.values[role]
        elif role in ("gamma", "beta"):
            value = np.ones(n, dtype=_dtype(s)) if role == "gamma" else np.zeros(n, dtype=_dtype(s))
            result.note(s.name, f"no {role} in the source (center/scale off): the target gets "
                        f"{'ones' if role == 'gamma' else 'zeros'}; freeze it there to keep it so")
        else:
            raise PortError(f"{where}: the source has no {ROLE_WORDS[role]}")
        if old is not None:
            if old.shape != value.shape:
                raise PortError(f"{where}: {role} has shape {list(value.shape)} in the source but "
                                f"{list(old.shape)} in the template")
            if old.dtype != value.dtype:
                result.note(s.name, f"{role} cast from {value.dtype} to the template's {old.dtype}")
                value = value.astype(old.dtype)
        target.store.set(t.slots[role], value)
    for what in s.extra:
        result.note(s.name, f"{what} not converted ({s.extra[what]})")
    _assign_nbt(s, t, target, result, keep_nbt, nbt)


def _dtype(layer: BNLayer):
    return next(iter(layer.values.values())).dtype


def _assign_nbt(s, t, target, result, keep_nbt, nbt) -> None:
    if t.nbt_slot is None:
        if s.num_batches_tracked is not None:
            result.note(s.name, f"num_batches_tracked={s.num_batches_tracked} dropped (no counter "
                        "in the target; torch uses it only for momentum=None)")
        return
    if nbt is not None:
        value, why = nbt, "from --num-batches-tracked"
    elif keep_nbt and s.num_batches_tracked is not None:
        value, why = s.num_batches_tracked, "kept from the source"
    else:
        value, why = 0, "the source has no counter; 0 is harmless unless momentum=None"
    target.store.set_nbt(t.nbt_slot, value)  # only a store with counters has nbt slots
    if why != "kept from the source":
        result.note(t.name, f"num_batches_tracked={value} ({why})")
