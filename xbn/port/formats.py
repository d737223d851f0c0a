"""Weights-file formats: names, the extensions they are inferred from, and their reader/writer.

A format belongs to a *family* (torch, keras, flax): a template for a conversion must be of
the target's family, because its layer layout is what the output will have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import PortError


@dataclass(frozen=True)
class Format:
    name: str
    family: str
    module: str  # xbn.port.<module> with read(path, fmt) and fresh(layers, fmt, notes)
    suffixes: tuple[str, ...]
    description: str


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("torch", "torch", "io_torch", (".pt", ".pth", ".bin"),
               "PyTorch state_dict, torch.load(weights_only=True)"),
        Format("safetensors", "torch", "io_torch", (".safetensors",),
               "PyTorch state_dict as safetensors"),
        Format("keras-weights", "keras", "io_keras", (".weights.h5", ".h5", ".hdf5"),
               "Keras 3 .weights.h5 (or legacy tf-keras HDF5)"),
        Format("keras", "keras", "io_keras", (".keras",),
               "Keras 3 .keras archive (config.json + model.weights.h5)"),
        Format("flax-msgpack", "flax", "io_flax", (".msgpack",),
               "Flax variables, flax.serialization msgpack"),
        Format("flax-npz", "flax", "io_flax", (".npz",), "Flax variables, '/'-joined keys"),
    ]
}

FAMILY_OF_FRAMEWORK = {"torch": "torch", "keras": "keras", "tf-keras": "keras", "flax": "flax",
                       "flax-nnx": "flax"}


def infer(path: str | Path, given: str | None = None) -> Format:
    """The format named by ``given``, else the one ``path``'s extension implies."""
    if given:
        try:
            return FORMATS[given]
        except KeyError:
            raise PortError(f"unknown format {given!r}; known: {', '.join(FORMATS)}") from None
    name = Path(path).name.lower()
    for fmt in sorted(FORMATS.values(), key=lambda f: -max(len(s) for s in f.suffixes)):
        if any(name.endswith(s) for s in fmt.suffixes):
            return fmt
    raise PortError(f"cannot infer the format of {path} from its extension; pass --from-format/"
                    f"--to-format ({', '.join(FORMATS)})")


def module(fmt: Format):
    import importlib

    return importlib.import_module(f"xbn.port.{fmt.module}")


def read(path: str | Path, given: str | None = None):
    """Bundle of a weights file (BN layers in model order, other tensors, a writable store)."""
    path = Path(path)
    fmt = infer(path, given)
    if not path.is_file():
        raise PortError(f"{path}: no such file")
    bundle = module(fmt).read(path, fmt.name)
    from .state import check_layer

    for layer in bundle.layers:
        check_layer(layer)
    return bundle
