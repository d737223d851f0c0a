"""Models for ``xbn verify`` from files: what can be run without the user's model code.

Which file suffixes run, and how, is the families' (``model_files`` in ``xbn.frameworks.registry``,
``load_model`` in ``xbn/adapters/<family>/live.py``):

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

from ..adapters.port_errors import PortError
from ..frameworks import registry


def load_model(spec: str):
    if spec.startswith("py:"):
        return _from_python(spec[3:])
    path = Path(spec)
    if not path.is_file():
        raise PortError(f"{spec}: no such file (or use py:module:attribute)")
    name = path.name.lower()
    for fam in registry.live_families():
        if fam.model_files and name.endswith(fam.model_files):
            return registry.family_module(fam.id, "live").load_model(path)
    runs = ", ".join(sorted(f.model_files_label for f in registry.live_families() if f.model_files))
    raise PortError(f"{spec}: xbn verify runs {runs} and py:module:attribute objects")


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
    from ..adapters.live import framework_of

    try:
        framework_of(obj)
        return True
    except PortError:
        return False
