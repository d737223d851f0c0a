"""The replicas' outputs joined back into one batch, in the adapters' value convention.

An adapter returns a numpy array or, for dtypes numpy cannot hold (bfloat16), a (float64
array, dtype name) pair (``xbn.adapters.base``); every replicated engine joins its replicas'
parts with :func:`join_rows` (the split is ``xbn.scenario.model.split_rows``).
"""

from __future__ import annotations

import numpy as np


def join_rows(parts: list, stack: bool = False) -> np.ndarray | tuple[np.ndarray, str]:
    """Replicas' outputs in replica order, concatenated along the batch axis (``stack``:
    along a new first axis, for every replica's copy of a variable)."""
    join = np.stack if stack else np.concatenate
    if any(isinstance(p, tuple) for p in parts):
        return join([p[0] for p in parts]), parts[0][1]
    return join(parts)
