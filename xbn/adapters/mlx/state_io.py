"""MLX weights: ``Module.save_weights`` files, ``.mlx.safetensors`` or ``.mlx.npz``.

The ``state_io`` hooks of ``xbn.port.formats`` for the mlx family (formats ``mlx-safetensors``
and ``mlx-npz`` in ``xbn.frameworks.registry``). ``save_weights`` writes the flattened
parameters (mlx/nn/layers/base.py ``tree_flatten(self.parameters())``), running statistics
included, under dotted names; ``load_weights`` reads ``.npz`` and ``.safetensors``. Their plain
suffixes are torch's and Flax's, so an MLX file is named ``*.mlx.safetensors``/``*.mlx.npz`` or
its format given with ``--from-format``/``--to-format``. A BN layer is a prefix with
``running_mean`` and ``running_var`` (mlx/nn/layers/normalization.py BatchNorm); MLX's one
``affine`` flag gives it weight and bias together or neither. Reading and writing need no MLX.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...profiles.facts import default_epsilon, default_native_momentum
from ..layer_info import LayerInfo, file_layer_info
from ..port_errors import PortError
from ..state_io import BNLayer, Bundle, layers_by_prefix, natural_key

LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"}


def _is_npz(path: Path, fmt: str) -> bool:
    return fmt == "mlx-npz" if fmt else path.name.lower().endswith(".npz")


class MlxStore:
    """Ordered name -> numpy array, written as ``save_weights`` writes (safetensors or npz)."""

    holds_other_tensors = True

    def __init__(self, fmt: str, entries: OrderedDict | None = None):
        self.fmt = fmt
        self.entries: OrderedDict = entries if entries is not None else OrderedDict()

    def locate(self, key: str) -> str:
        return key

    def get(self, location) -> np.ndarray | None:
        value = self.entries.get(location)
        return None if value is None else np.asarray(value)

    def set(self, location, value) -> None:
        self.entries[location] = np.array(value)

    def to_bytes(self, path: Path) -> bytes:
        arrays = {k: np.array(v, order="C") for k, v in self.entries.items()}
        if _is_npz(path, self.fmt):
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            return buf.getvalue()
        from safetensors.numpy import save

        return save(arrays, metadata={"format": "mlx"})  # as mx.save_safetensors writes


def load_entries(path: Path, fmt: str) -> OrderedDict:
    """name -> array of an MLX weights file, ordered by name (natural sort): neither format
    keeps the model's module order."""
    try:
        if _is_npz(path, fmt):
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        else:
            from safetensors.numpy import load_file

            arrays = load_file(str(path))
    except Exception as exc:  # zipfile/numpy/safetensors each raise their own
        raise PortError(f"{path}: not a readable {fmt} file "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    return OrderedDict((k, arrays[k]) for k in sorted(arrays, key=natural_key))


def read(path: Path, fmt: str) -> Bundle:
    entries = load_entries(path, fmt)
    layers = bn_layers(entries)
    used = {loc for layer in layers for loc in layer.slots.values()}
    others = {k: tuple(v.shape) for k, v in entries.items() if k not in used}
    notes = [f"{fmt} keeps no module order: BN layers ordered by name (natural sort); pass "
             "--map if that is not the model order"]
    return Bundle(fmt, path, layers, others, notes, MlxStore(fmt, entries), "natural")


def bn_layers(entries: OrderedDict) -> list[BNLayer]:
    return layers_by_prefix(entries, LEAVES, ("running_mean", "running_var"))


def fresh(layers: list[BNLayer], fmt: str, notes: list[str]) -> Bundle:
    """Empty weights with an MLX slot for every role: weight and bias both where the source
    has either (MLX's one ``affine`` flag covers both)."""
    out = []
    for src in layers:
        name = src.name.replace("/", ".")
        layer = BNLayer(name)
        roles = set(src.values) | {"mean", "var"}
        if roles & {"gamma", "beta"}:
            roles |= {"gamma", "beta"}
        for leaf, role in LEAVES.items():
            if role in roles:
                layer.slots[role] = f"{name}.{leaf}"
        out.append(layer)
    return Bundle(fmt, None, out, {}, notes, MlxStore(fmt))


def layer_info(layer: BNLayer, framework: str) -> LayerInfo:
    info = file_layer_info(layer, framework, "BatchNorm")
    info.axis = -1  # MLX is channels last
    return info


def file_notes(framework: str) -> list[str]:
    return ["MLX weights store no momentum or eps: they are in the module code (MLX defaults "
            f"momentum={default_native_momentum(framework)!r} in torch's direction, "
            f"eps={default_epsilon(framework)!r}); MLX is channels last"]
