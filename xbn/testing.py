"""Assertions for your own test suite: prove that a BatchNorm port behaves the same.

    from xbn.testing import assert_bn_equivalent
    assert_bn_equivalent(keras_model, torch_model, x_nhwc, layout_a="NHWC", layout_b="NCHW")

A thin public face, as ``pandas.testing`` is over ``pandas._testing``: the machinery lives in
``xbn.port.equivalence`` (modes, tolerances, the expected torch variance difference).
"""

from __future__ import annotations

from .port.equivalence import EquivalenceReport, assert_bn_equivalent, compare_bn

__all__ = ["EquivalenceReport", "assert_bn_equivalent", "compare_bn"]
