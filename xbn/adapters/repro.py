"""The contract of a family's ``repro.py`` (``xbn repro``'s standalone-script templates).

A family's ``repro.template(framework, layer, shape)`` returns Python source defining
``call``, ``predict``, ``set_trainable``, ``set_weights``, ``state`` and ``VERSIONS`` with the
framework's own API; ``xbn.fuzz.repro`` writes the rest of the script around it. A template
that cannot express a layer raises ``ReproUnsupported`` with the reason.
"""

from __future__ import annotations


class ReproUnsupported(Exception):
    """This scenario cannot be written as a standalone script for that framework (the message
    says why): an op without a template (fit, grad), or a family without one."""
