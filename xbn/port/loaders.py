"""Models for ``xbn verify`` from files: what can be run without the user's model code.

- ``.keras``: ``keras.models.load_model(path, safe_mode=True, compile=False)``. This builds
  the model from its config (standard layers; ``safe_mode`` refuses lambda layers), which is
  why ``xbn audit`` never does it and ``xbn verify`` does.
- ``.pt``/``.pth`` TorchScript archives (``torch.jit.script(model).save(path)``): loaded with
  ``torch.jit.load``, no pickle. A state_dict holds no architecture and is refused.
- ``py:package.module:attribute``: an object in your own code (a model, a ``(linen module,
  variables)`` tuple, or a zero-argument function returning one). This imports and runs that
  code: name only code you trust.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from .errors import PortError


def load_model(spec: str):
    if spec.startswith("py:"):
        return _from_python(spec[3:])
    path = Path(spec)
    if not path.is_file():
        raise PortError(f"{spec}: no such file (or use py:module:attribute)")
    name = path.name.lower()
    if name.endswith(".keras"):
        return _keras(path)
    if name.endswith((".pt", ".pth")):
        return _torchscript(path)
    raise PortError(f"{spec}: xbn verify runs .keras files, TorchScript .pt/.pth files and "
                    "py:module:attribute objects")


def _keras(path: Path):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import zipfile

    try:
        import keras
    except ImportError:
        raise PortError("running a .keras file needs keras: pip install 'xbn[tensorflow]'") from None
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except zipfile.BadZipFile as exc:
        raise PortError(f"{path}: not a valid .keras archive ({exc})") from None
    except Exception as exc:  # Keras raises ValueError/TypeError for configs it cannot build
        raise PortError(f"{path}: Keras could not load it ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None


def _torchscript(path: Path):
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13 but works
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError for a state_dict or a corrupted archive
        raise PortError(f"{path}: not a TorchScript archive ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:160]}); a state_dict has no "
                        "architecture: save torch.jit.script(model) or use py:module:attr") from None


def _from_python(target: str):
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise PortError(f"py:{target}: expected py:package.module:attribute")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PortError(f"py:{target}: {exc}") from None
    if callable(obj) and not _is_model(obj):
        obj = obj()
    return obj


def _is_model(obj) -> bool:
    from .live import framework_of

    try:
        framework_of(obj)
        return True
    except PortError:
        return False
