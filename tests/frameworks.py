"""The one place the test suite decides what a missing framework means.

The README's promise: a framework that should be installed and is not fails the suite, unless
``XBN_ALLOW_MISSING`` names it (a comma-separated list of names, or ``1``/``all``/``true`` for
everything), in which case the tests that need it skip. ``.ci/run`` unsets the variable, so CI
always fails on a missing framework.

Every test that needs a framework calls :func:`require_framework` (never
``pytest.importorskip``, which skips whatever the environment says); code that finds a
framework missing some other way (a run's metadata) calls :func:`missing`.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

from xbn.frameworks.registry import FRAMEWORKS
from xbn.frameworks.registry import missing as missing_distributions

VARIABLE = "XBN_ALLOW_MISSING"
EVERYTHING = ("1", "all", "true")


def allowed(name: str) -> bool:
    """Whether ``XBN_ALLOW_MISSING`` lets ``name`` be missing."""
    value = os.environ.get(VARIABLE, "").strip()
    return value in EVERYTHING or name in {v.strip() for v in value.split(",") if v.strip()}


def allowed_missing() -> set[str]:
    """The built-in framework ids ``XBN_ALLOW_MISSING`` lets be missing."""
    return {fid for fid in FRAMEWORKS if allowed(fid)}


def missing(name: str, why: str) -> NoReturn:
    """``name`` is missing (``why``): skip where ``XBN_ALLOW_MISSING`` allows it, else fail.
    Works inside a test and at module level alike."""
    if allowed(name):
        pytest.skip(f"{name} missing, allowed by {VARIABLE}: {why}", allow_module_level=True)
    pytest.fail(f"{why} (set {VARIABLE}={name} to skip the tests that need it)", pytrace=False)


def require_framework(name: str, module: str | None = None) -> ModuleType | None:
    """Make sure the framework ``name`` is installed, or fail (skip, where allowed).

    ``name`` is a framework id of xbn's registry, whose distributions are looked up in the
    package metadata as ``tests/test_installed.py`` does (nothing is imported), or else the
    name of a Python module, imported. ``module``, where given, is imported too and returned
    (``torch = require_framework("torch", module="torch")``); a failed import is a missing
    framework as well.
    """
    if name in FRAMEWORKS:
        lacking = missing_distributions(name)
        if lacking:
            missing(name, f"{name} is not installed (missing {', '.join(lacking)}); "
                          f"pip install -e \".[{FRAMEWORKS[name].extra}]\"")
    elif module is None:
        module = name
    if module is None:
        return None
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing(name, f"{name}: import {module} failed: {type(exc).__name__}: {exc}")
