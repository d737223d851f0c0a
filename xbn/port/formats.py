"""Weights-file formats: inferring one from a file name, and reading a file through its family.

The formats themselves are declared by their family in ``xbn.frameworks.registry`` (``Family.formats``).
A format belongs to a *family* (torch, keras, flax) whose ``xbn/adapters/<family>/state_io.py``
reads and writes it: ``read(path, fmt) -> Bundle``, ``fresh(layers, fmt, notes) -> Bundle``,
``layer_info(layer, framework) -> LayerInfo`` and ``file_notes() -> list[str]``. A template for
a conversion must be of the target's family, because its layer layout is what the output
will have.
"""

from __future__ import annotations

from pathlib import Path

from ..adapters.port_errors import PortError
from ..frameworks import registry
from ..frameworks.registry import FORMATS, Format

__all__ = ["FORMATS", "Format", "infer", "module", "read"]


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
    """The family's ``state_io`` module, imported on first use."""
    return registry.family_module(fmt.family, "state_io")


def read(path: str | Path, given: str | None = None):
    """Bundle of a weights file (BN layers in model order, other tensors, a writable store)."""
    path = Path(path)
    fmt = infer(path, given)
    if not path.is_file():
        raise PortError(f"{path}: no such file")
    bundle = module(fmt).read(path, fmt.name)
    from ..adapters.state_io import check_layer

    for layer in bundle.layers:
        check_layer(layer)
    return bundle
