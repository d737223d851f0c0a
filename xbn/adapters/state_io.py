"""BN state in no framework's layout: the layers of a weights file and where each tensor lives.

A converter reads a file into a :class:`Bundle` (its BN layers in model order, the other
tensors it leaves alone, and a format-specific :class:`Store` that can write the file back),
matches layers, and assigns arrays into the target's store. Keeping the location of every
tensor ("slot") is what lets a conversion into a template pass every other tensor through
unchanged, and what lets errors name the offending layer and tensor.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .port_errors import PortError

ROLES = ("gamma", "beta", "mean", "var")
ROLE_WORDS = {"gamma": "gamma (scale/weight)", "beta": "beta (offset/bias)",
              "mean": "running mean", "var": "running variance"}


@dataclass
class BNLayer:
    name: str  # as the file names it: torch prefix, Keras layer name, Flax path "a/b"
    values: dict[str, np.ndarray] = field(default_factory=dict)  # role -> array
    slots: dict[str, Any] = field(default_factory=dict)  # role -> location in the file
    num_batches_tracked: int | None = None
    nbt_slot: Any = None
    config: dict | None = None  # hyperparameters, where the file stores them (.keras)
    where: str | None = None  # location of the layer in the file, when it differs from name
    extra: dict[str, str] = field(default_factory=dict)  # tensors left out -> why

    @property
    def features(self) -> int | None:
        for role in ROLES:
            if role in self.values:
                return int(self.values[role].shape[0]) if self.values[role].ndim else None
        return None

    def label(self) -> str:
        return self.name if not self.where or self.where == self.name else f"{self.name} ({self.where})"


class Store(Protocol):
    """A file's tensors, writable: ``set`` a tensor at a location, ``save`` the whole file.

    Stores of formats with a ``num_batches_tracked`` counter (torch) also have
    ``set_nbt(location, value)``; only they give layers an ``nbt_slot``.
    """

    holds_other_tensors: bool  # a fresh store can take non-BN tensors passed through

    def locate(self, key: str):
        """The location of a tensor a Bundle lists in ``others`` under ``key``."""

    def get(self, location) -> np.ndarray | None: ...

    def set(self, location, value: np.ndarray) -> None: ...

    def to_bytes(self, path: Path) -> bytes: ...


@dataclass
class Bundle:
    format: str  # a key of xbn.frameworks.registry.FORMATS
    path: Path | None
    layers: list[BNLayer]
    others: dict[str, tuple] = field(default_factory=dict)  # non-BN tensor -> shape
    notes: list[str] = field(default_factory=list)
    store: Any = None
    order: str = "file"  # how ``layers`` is ordered: file (model order) | natural (by name)
    framework: str | None = None  # framework id that wrote it, where the file says


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """``bn_10`` after ``bn_2``: the order auto-numbered layers were created in."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(name) if p]


def check_layer(layer: BNLayer) -> None:
    """Every tensor of a BN layer is a vector of the same length: else name the layer."""
    shapes = {role: tuple(v.shape) for role, v in layer.values.items()}
    if not shapes:
        raise PortError(f"BN layer {layer.label()}: no tensors")
    bad = [f"{role} {list(s)}" for role, s in shapes.items() if len(s) != 1]
    if bad:
        raise PortError(f"BN layer {layer.label()}: tensors must be 1-D, got {', '.join(bad)}")
    if len(set(shapes.values())) > 1:
        got = ", ".join(f"{r} {list(s)}" for r, s in shapes.items())
        raise PortError(f"BN layer {layer.label()}: tensors disagree on the channel count: {got}")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a failure never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_identity(role: str, value: np.ndarray) -> bool:
    """A gamma of ones or a beta of zeros changes nothing: dropping it loses nothing."""
    if role == "gamma":
        return bool(np.all(value == 1))
    if role == "beta":
        return bool(np.all(value == 0))
    return False


def layers_by_prefix(entries, leaves: dict[str, str], marks: tuple[str, str]) -> list[BNLayer]:
    """BN layers of a flat ``prefix.leaf`` dict (a state_dict, saved weights), in the order
    their first key appears: every prefix holding both ``marks`` (its running statistics'
    leaf names) is a layer, its ``leaves`` (leaf name -> role) read into slots and values."""
    groups: dict[str, dict[str, str]] = {}
    for key in entries:
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = key
    layers = []
    for prefix, found in groups.items():
        if not all(m in found for m in marks):
            continue
        layer = BNLayer(prefix or "<root>")
        for leaf, role in leaves.items():
            if leaf in found:
                layer.slots[role] = found[leaf]
                layer.values[role] = np.asarray(entries[found[leaf]])
        layers.append(layer)
    return layers

