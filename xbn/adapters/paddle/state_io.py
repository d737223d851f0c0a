"""Paddle state_dicts: ``.pdparams``, what ``paddle.save(layer.state_dict(), path)`` writes.

The ``state_io`` hooks of ``xbn.port.formats`` for the paddle family (format ``paddle`` in
``xbn.frameworks.registry``). A ``.pdparams`` file is a pickle (protocol 4) of a dict from
parameter name to a numpy array (paddle/framework/io.py ``_build_saved_state_dict`` turns each
tensor into ``np.ndarray``), plus a ``StructuredToParameterName@@`` dict of names. xbn never
runs an unrestricted unpickle: the reader admits numpy's array and dtype constructors and
nothing else, so a file that references any other global is refused with one line, and reading
needs no Paddle. A BN layer is a key prefix with ``_mean`` and ``_variance`` (Paddle's names of
the running statistics); ``weight_attr=False``/``bias_attr=False`` drop ``weight``/``bias``
alone, so a layer may carry either.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...profiles.facts import default_epsilon, default_native_momentum
from ..layer_info import LayerInfo, file_layer_info
from ..port_errors import PortError
from ..state_io import BNLayer, Bundle, layers_by_prefix

LEAVES = {"weight": "gamma", "bias": "beta", "_mean": "mean", "_variance": "var"}
NAMES_KEY = "StructuredToParameterName@@"  # paddle.save's name table, not a tensor
# the only globals a state_dict pickle needs: numpy's array reconstruction (numpy 1 and 2)
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array constructor")
        return super().find_class(module, name)


class PaddleStore:
    """Ordered name -> numpy array; written back as ``paddle.save`` writes a state_dict."""

    holds_other_tensors = True

    def __init__(self, entries: OrderedDict | None = None, names: dict | None = None):
        self.entries: OrderedDict = entries if entries is not None else OrderedDict()
        self.names = names  # paddle.save's StructuredToParameterName@@, passed through

    def locate(self, key: str) -> str:
        return key

    def get(self, location) -> np.ndarray | None:
        value = self.entries.get(location)
        return None if value is None else np.asarray(value)

    def set(self, location, value) -> None:
        self.entries[location] = np.array(value)

    def to_bytes(self, path: Path) -> bytes:
        out = {k: np.array(v) for k, v in self.entries.items()}
        if self.names is not None:
            out[NAMES_KEY] = {k: v for k, v in self.names.items() if k in out}
        buf = io.BytesIO()
        pickle.dump(out, buf, protocol=4)  # paddle.save's protocol (paddle/framework/io.py)
        return buf.getvalue()


def load_entries(path: Path) -> tuple[OrderedDict, dict | None]:
    """(name -> array, paddle.save's name table) of a ``.pdparams`` file."""
    try:
        with open(path, "rb") as fh:
            obj = _ArraysOnly(fh).load()
    except pickle.UnpicklingError as exc:
        raise PortError(f"{path}: not a state_dict of arrays ({exc}); xbn never unpickles "
                        "arbitrary objects: save `paddle.save(layer.state_dict(), path)`") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise PortError(f"{path}: not a readable .pdparams file ({type(exc).__name__}: "
                        f"{msg})") from None
    if not isinstance(obj, dict):
        raise PortError(f"{path}: holds a {type(obj).__name__}, not a state_dict (name -> array)")
    names = obj.get(NAMES_KEY) if isinstance(obj.get(NAMES_KEY), dict) else None
    entries = OrderedDict()
    for key, value in obj.items():
        if key == NAMES_KEY:
            continue
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise PortError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array: "
                            "not a state_dict")
        entries[key] = value
    return entries, names


def read(path: Path, fmt: str) -> Bundle:
    entries, names = load_entries(path)
    layers = bn_layers(entries)
    used = {loc for layer in layers for loc in layer.slots.values()}
    others = {k: tuple(v.shape) for k, v in entries.items() if k not in used}
    return Bundle(fmt, path, layers, others, [], PaddleStore(entries, names), "file")


def bn_layers(entries: OrderedDict) -> list[BNLayer]:
    """BN layers of a state_dict in the order their first key appears."""
    return layers_by_prefix(entries, LEAVES, ("_mean", "_variance"))


def fresh(layers: list[BNLayer], fmt: str, notes: list[str]) -> Bundle:
    """An empty state_dict with a Paddle slot for every role each layer carries (Paddle can
    drop weight and bias separately, so a layer keeps exactly the source's roles)."""
    out = []
    for src in layers:
        name = src.name.replace("/", ".")
        layer = BNLayer(name)
        for leaf, role in LEAVES.items():
            if role in src.values or role in ("mean", "var"):
                layer.slots[role] = f"{name}.{leaf}"
        out.append(layer)
    return Bundle(fmt, None, out, {}, notes, PaddleStore())


def layer_info(layer: BNLayer, framework: str) -> LayerInfo:
    """A state_dict layer: weight and/or bias (weight_attr/bias_attr=False drop one)."""
    info = file_layer_info(layer, framework, "BatchNorm")
    info.axis = 1  # data_format is in the module code; NCHW is the default
    return info


def file_notes(framework: str) -> list[str]:
    return ["a .pdparams state_dict stores no momentum, epsilon or data_format: they are in "
            f"the module code (Paddle defaults momentum={default_native_momentum(framework)!r} "
            f"in Keras' direction, epsilon={default_epsilon(framework)!r}, data_format NCHW)"]
