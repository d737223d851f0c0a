"""PyTorch state_dicts: ``.pt``/``.pth`` through ``torch.load(weights_only=True)``, or safetensors.

The ``state_io`` hooks of ``xbn.port.formats`` for the torch family (formats ``torch`` and
``safetensors`` in ``xbn.frameworks.registry``).

Never an unrestricted unpickle: a pickle that is not weights-only is refused with one line.
A BN layer is a key prefix with ``running_mean`` and ``running_var``; a BN built with
``track_running_stats=False`` stores only weight/bias and cannot be told from other layers
(reported in the notes of ``xbn audit``).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...profiles.facts import default_epsilon, default_native_momentum
from ..layer_info import LayerInfo, file_layer_info
from ..port_errors import PortError
from ..state_io import BNLayer, Bundle, natural_key

LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"}
NESTED_KEYS = ("state_dict", "model_state_dict", "model")


class TorchStore:
    """Ordered name -> tensor (``.pt``) or numpy array (safetensors)."""

    holds_other_tensors = True

    def __init__(self, entries: OrderedDict | None = None):
        self.entries: OrderedDict = entries if entries is not None else OrderedDict()

    def locate(self, key: str) -> str:
        return key

    def get(self, location):
        value = self.entries.get(location)
        return None if value is None else _to_numpy(value, location)

    def set(self, location, value) -> None:
        old = self.entries.get(location)
        if _is_tensor(old):
            import torch

            self.entries[location] = torch.from_numpy(np.array(value)).to(old.dtype)
        else:
            self.entries[location] = np.array(value)

    def set_nbt(self, location: str, value: int) -> None:
        """Write ``num_batches_tracked`` as torch does: a 0-d int64 tensor (or array)."""
        old = self.entries.get(location)
        if _is_tensor(old) or old is None:
            import torch

            self.entries[location] = torch.tensor(int(value), dtype=torch.long)
        else:
            self.entries[location] = np.array(int(value), dtype=np.int64)

    def to_bytes(self, path: Path) -> bytes:
        if path.suffix == ".safetensors":
            from safetensors.numpy import save

            # np.array, not ascontiguousarray: that would make num_batches_tracked 1-D
            arrays = {k: np.array(_to_numpy(v, k), order="C") for k, v in self.entries.items()}
            return save(arrays, metadata={"format": "pt"})
        import io

        import torch

        tensors = OrderedDict((k, v if _is_tensor(v) else torch.from_numpy(np.array(v)))
                              for k, v in self.entries.items())
        buf = io.BytesIO()
        torch.save(tensors, buf)
        return buf.getvalue()


def _is_tensor(value) -> bool:
    return type(value).__module__.startswith("torch")


def _to_numpy(value, key: str) -> np.ndarray:
    if not _is_tensor(value):
        return np.asarray(value)
    import torch

    t = value.detach().cpu()
    if t.dtype == torch.bfloat16:
        raise PortError(f"tensor {key} is bfloat16, which numpy cannot hold exactly; "
                        "convert the state_dict to float32 first")
    return t.numpy()


def load_entries(path: Path) -> tuple[OrderedDict, list[str], str]:
    """(entries, notes, order) of a torch weights file."""
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    import pickle
    import warnings
    import zipfile

    import torch

    try:
        with warnings.catch_warnings():  # its protocol warnings would break "one error line"
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PortError(f"{path}: not a weights-only state_dict (torch.load(weights_only=True) "
                        f"refused it{_why_refused(str(exc))}); xbn never unpickles arbitrary "
                        "objects: save `model.state_dict()`, not the model") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise PortError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {msg})") from None
    notes: list[str] = []
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), dict) and not _is_tensor(obj.get(key)):
                notes.append(f"{path.name}: a checkpoint; read its {key!r} entry")
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise PortError(f"{path}: holds a {type(obj).__name__}, not a state_dict (name -> tensor)")
    entries = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not _is_tensor(value):
            raise PortError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor: "
                            "not a state_dict")
        entries[key] = value
    return entries, notes, "file"


def _why_refused(message: str) -> str:
    """The line of torch's long refusal that names the offending object."""
    import re

    found = re.search(r"GLOBAL (\S+) was not an allowed global", message)
    if found:
        return f": it references {found.group(1)}"
    found = re.search(r"Unsupported operand \d+", message)
    return f": {found.group(0)}" if found else ""


def _load_safetensors(path: Path) -> tuple[OrderedDict, list[str], str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            keys = sorted(f.keys(), key=natural_key)
            entries = OrderedDict((k, f.get_tensor(k)) for k in keys)
    except Exception as exc:  # safetensors raises its own SafetensorError (and TypeError for bf16)
        raise PortError(f"{path}: not a readable safetensors file "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    return entries, ["safetensors keeps no module order: BN layers ordered by name (natural "
                     "sort); pass --map if that is not the model order"], "natural"


def split_key(key: str) -> tuple[str, str]:
    prefix, _, leaf = key.rpartition(".")
    return prefix, leaf


def read(path: Path, fmt: str) -> Bundle:
    entries, notes, order = load_entries(path)
    layers = bn_layers(entries)
    used = {loc for layer in layers for loc in (*layer.slots.values(), layer.nbt_slot) if loc}
    others = {k: tuple(v.shape) for k, v in entries.items() if k not in used}
    return Bundle(fmt, path, layers, others, notes, TorchStore(entries), order)


def bn_layers(entries: OrderedDict) -> list[BNLayer]:
    """BN layers of a state_dict in the order their first key appears."""
    groups: OrderedDict[str, dict[str, str]] = OrderedDict()
    for key in entries:
        prefix, leaf = split_key(key)
        groups.setdefault(prefix, {})[leaf] = key
    layers = []
    for prefix, leaves in groups.items():
        if "running_mean" not in leaves or "running_var" not in leaves:
            continue
        layer = BNLayer(prefix or "<root>")
        for leaf, role in LEAVES.items():
            if leaf in leaves:
                layer.slots[role] = leaves[leaf]
                layer.values[role] = _to_numpy(entries[leaves[leaf]], leaves[leaf])
        if "num_batches_tracked" in leaves:
            layer.nbt_slot = leaves["num_batches_tracked"]
            count = _to_numpy(entries[layer.nbt_slot], layer.nbt_slot)
            layer.num_batches_tracked = int(count.reshape(-1)[0]) if count.size == 1 else None
        layers.append(layer)
    return layers


def fresh(layers: list[BNLayer], fmt: str, notes: list[str]) -> Bundle:
    """An empty state_dict with a torch slot for every role each layer will carry."""
    out = []
    for src in layers:
        name = src.name.replace("/", ".")
        layer = BNLayer(name)
        roles = set(src.values)
        if ("gamma" in roles) != ("beta" in roles):
            roles |= {"gamma", "beta"}  # torch's one affine flag covers both
        for leaf, role in LEAVES.items():
            if role in roles:
                layer.slots[role] = f"{name}.{leaf}"
        layer.nbt_slot = f"{name}.num_batches_tracked"
        out.append(layer)
    return Bundle(fmt, None, out, {}, notes, TorchStore())


def layer_info(layer: BNLayer, framework: str) -> LayerInfo:
    """A state_dict layer: weight and bias (affine), or a weight alone (bias=False)."""
    info = file_layer_info(layer, framework, "BatchNorm")
    info.scale = "gamma" in layer.values
    info.center = "beta" in layer.values
    info.axis = 1
    return info


def file_notes(framework: str) -> list[str]:
    return ["a state_dict stores no momentum or epsilon: they are in the module code "
            f"(torch defaults momentum={default_native_momentum(framework)!r}, "
            f"eps={default_epsilon(framework)!r}); BN layers built with "
            "track_running_stats=False store only weight/bias and are not listed"]
