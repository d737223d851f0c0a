"""Porting aid: translate a BatchNorm configuration, convert its state, audit a model.

Everything here imports its framework lazily, inside the function that needs it, so that
``xbn --help`` and the translation tables never pull in torch, TensorFlow or JAX.

- :func:`translate` (``xbn port``): one BN constructor call from one framework to another,
  with the notes that matter for that pair.
- :func:`convert_file` (``xbn convert``): BN parameters and running statistics between a
  PyTorch state_dict, Keras weights and Flax variables.
- :func:`audit` (``xbn audit``): every BN layer of a model with its settings and the
  pitfalls for a target framework.
- ``xbn.testing.assert_bn_equivalent`` (``xbn verify``): proof that a port behaves the same.
- ``per_layer.verify_per_layer`` (``xbn verify --per-layer``): the first BatchNorm where two
  models part, and the state, configuration or semantic switch that moved it (``layer_cause``).
"""

from __future__ import annotations

from ..adapters.port_errors import PortError

__all__ = ["PortError", "audit", "audit_file", "convert_file", "translate"]


def translate(source: str, target: str, **source_args):
    """Translate a BN configuration given in ``source``'s convention (see ``settings.py``,
    ``translation.py``)."""
    from .translation import translate as _translate

    return _translate(source, target, **source_args)


def convert_file(src, dst, **kwargs):
    """Convert BN state between files (see ``convert.py``)."""
    from .convert import convert_file as _convert

    return _convert(src, dst, **kwargs)


def audit(obj, target: str | None = None, **kwargs):
    """Audit a live model: torch Module, Keras model, (linen module, variables), NNX module."""
    from .auditing import audit as _audit

    return _audit(obj, target=target, **kwargs)


def audit_file(path, target: str | None = None):
    """Audit a ``.keras`` file or a weights file without executing any of its code."""
    from .auditing import audit_file as _audit_file

    return _audit_file(path, target=target)
