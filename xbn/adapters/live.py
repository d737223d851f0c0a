"""Live models of any framework: which framework made one, its BN layers, and a runner for it.

The family code (``xbn/adapters/<family>/live.py``) is found through ``xbn.frameworks.registry`` and asked
in turn. A framework is recognised through ``sys.modules`` only: an object can only come from a
framework that is already imported, so nothing is imported to find out. Every family's
``live.py`` provides:

- ``MODELS``: how users name the objects it runs (for the error message);
- ``framework_of(obj) -> str | None``: the framework id, or None when it is not one of its;
- ``bn_layers(obj, framework, inputs) -> list[LayerInfo]``: every BN layer, in model order;
- ``runner(obj, framework, sample) -> Runner``: see :class:`Runner`;
- ``load_model(path)``: a model from a file with one of the family's ``model_files`` suffixes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..frameworks import registry
from .layer_info import LayerInfo
from .port_errors import PortError


class Runner:
    """Runs a live model in inference or training mode and reads its BN statistics.

    Each runner works on a copy (torch, NNX), on immutable variables (linen) or restores the
    weights when closed (Keras), so verifying a model never changes the caller's model. A runner
    may record, per training step and BN layer, the biased batch variance and element count
    (``batch_stats``): that is what lets a verification *prove* that a running variance
    difference is torch's n/(n-1) correction rather than merely call it so.
    """

    framework: str
    single_layer: bool = False
    batch_stats: list[list[tuple[np.ndarray, int]]] | None = None  # per step, per BN layer

    def eval(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def train(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def stats(self) -> list[tuple[str, np.ndarray | None, np.ndarray | None]]:
        raise NotImplementedError

    def infos(self) -> list[LayerInfo]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def first_output(out):
    """A model's output, or the first one when it returns several."""
    while isinstance(out, tuple | list):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


def to_array(v) -> np.ndarray | None:
    """A framework variable (or its value) as a numpy array; None stays None."""
    if v is None:
        return None
    v = v.get_value() if hasattr(v, "get_value") else getattr(v, "value", v)
    return np.array(v)


def _live(family: str):
    return registry.family_module(family, "live")


def _expected() -> str:
    kinds = [k for fam in registry.live_families() for k in _live(fam.id).MODELS]
    return ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]


def framework_of(obj: Any) -> str:
    """Framework id of a live model, or PortError."""
    for fam in registry.live_families():
        found = _live(fam.id).framework_of(obj)
        if found is not None:
            return found
    raise PortError(f"not a model xbn knows: {type(obj).__module__}.{type(obj).__name__} "
                    f"(expected {_expected()})")


def _family_live(framework: str):
    return _live(registry.FRAMEWORKS[framework].family)


def bn_layers(obj: Any, inputs=None) -> list[LayerInfo]:
    """Every BN layer of a live model, in model order."""
    fid = framework_of(obj)
    return _family_live(fid).bn_layers(obj, fid, inputs)


def runner_for(obj: Any, sample: np.ndarray) -> Runner:
    """A :class:`Runner` for a live model (``sample``: an input, for models that need one)."""
    fid = framework_of(obj)
    return _family_live(fid).runner(obj, fid, sample)
