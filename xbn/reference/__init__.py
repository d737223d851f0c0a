"""The float64 BatchNorm: xbn's executable specification, with every place where
frameworks disagree as a named switch (``semantics.Semantics``). ``batchnorm`` is the layer,
``numerics`` its float arithmetic (moments, update and normalization orders, error bounds),
``mask``, ``renorm``, ``edges`` and ``replicas`` the additions. It imports only ``xbn.common``
and ``xbn.scenario`` (tests/test_layers.py): it knows no framework.
"""

from __future__ import annotations

from .batchnorm import NoSuchOperation, ReferenceBatchNorm, running_variance
from .replicas import ReplicatedReference
from .semantics import Semantics

__all__ = ["NoSuchOperation", "ReferenceBatchNorm", "ReplicatedReference", "running_variance",
           "Semantics"]
