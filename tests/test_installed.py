"""CI must fail, not skip, when a framework that should be installed is missing.

Users who install only some extras can set XBN_ALLOW_MISSING=1 (or a comma-separated list of
framework ids) to run the rest of the suite. The decision is tests/frameworks.py's
``require_framework``, which every test that needs a framework calls; this file checks every
framework of the registry with it, and checks the helper itself.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from xbn.frameworks.registry import FRAMEWORK_IDS, FRAMEWORKS

# allowed_missing is imported from here by tests/test_fuzz.py as well
from .frameworks import allowed_missing, require_framework

ROOT = Path(__file__).resolve().parent.parent
ABSENT_MODULE = "xbn_no_such_module_for_test_installed"
ABSENT_DIST = "xbn-no-such-distribution-for-test-installed"


@pytest.mark.parametrize("framework", FRAMEWORK_IDS)
def test_framework_is_installed(framework):
    require_framework(framework)


# -- the helper: fails on a missing framework unless XBN_ALLOW_MISSING names it ---------------

@pytest.fixture
def absent_framework(monkeypatch) -> str:
    """A registry entry whose distribution is not installed (nothing is uninstalled: the
    distribution never existed). The entry is numpy's with another id and requirement."""
    fid = "xbn-absent"
    monkeypatch.setitem(FRAMEWORKS, fid, dataclasses.replace(
        FRAMEWORKS["numpy"], id=fid, distributions=(ABSENT_DIST,), requires=(ABSENT_DIST,)))
    return fid


@pytest.mark.parametrize("value", [None, "", "torch", "torch, haiku", "xbn-absentee", "0"])
def test_missing_framework_fails_unless_allowed(monkeypatch, absent_framework, value):
    if value is None:
        monkeypatch.delenv("XBN_ALLOW_MISSING", raising=False)
    else:
        monkeypatch.setenv("XBN_ALLOW_MISSING", value)
    with pytest.raises(pytest.fail.Exception, match=re.escape(ABSENT_DIST)):
        require_framework(absent_framework)
    with pytest.raises(pytest.fail.Exception, match=ABSENT_MODULE):
        require_framework(ABSENT_MODULE)
    with pytest.raises(pytest.fail.Exception, match=ABSENT_MODULE):
        require_framework("numpy", module=ABSENT_MODULE)  # installed, but the import fails


@pytest.mark.parametrize("value", ["1", "all", "true", " true ",
                                   f"torch,xbn-absent,{ABSENT_MODULE},numpy"])
def test_missing_framework_skips_where_allowed(monkeypatch, absent_framework, value):
    monkeypatch.setenv("XBN_ALLOW_MISSING", value)
    with pytest.raises(pytest.skip.Exception, match="allowed by XBN_ALLOW_MISSING"):
        require_framework(absent_framework)
    with pytest.raises(pytest.skip.Exception, match="allowed by XBN_ALLOW_MISSING"):
        require_framework(ABSENT_MODULE)
    with pytest.raises(pytest.skip.Exception, match="allowed by XBN_ALLOW_MISSING"):
        require_framework("numpy", module=ABSENT_MODULE)


def test_present_framework_passes_whatever_is_allowed(monkeypatch):
    for value in ("", "1", "numpy"):
        monkeypatch.setenv("XBN_ALLOW_MISSING", value)
        assert require_framework("numpy") is None  # a registry id: metadata only, no import
        import numpy

        assert require_framework("numpy", module="numpy") is numpy
        assert require_framework("numpy.linalg") is numpy.linalg  # a module name: imported


def test_allowed_missing_names_registry_ids(monkeypatch):
    monkeypatch.setenv("XBN_ALLOW_MISSING", "all")
    assert allowed_missing() == set(FRAMEWORK_IDS)
    monkeypatch.setenv("XBN_ALLOW_MISSING", " torch , chromium,")
    assert allowed_missing() == {"torch"}
    monkeypatch.delenv("XBN_ALLOW_MISSING")
    assert allowed_missing() == set()


def test_no_test_skips_a_framework_by_itself():
    """Every test asks require_framework; pytest.importorskip would skip a missing framework
    in CI too."""
    calls = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "tests").rglob("*.py"))
             if p.name != "test_installed.py"
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if "importorskip(" in line]
    assert calls == [], "use tests/frameworks.py require_framework instead: " + ", ".join(calls)


def test_ci_does_not_inherit_allow_missing():
    """.ci/run clears XBN_ALLOW_MISSING before the suite runs, so CI fails on a missing
    framework whatever the calling environment sets."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    unset = [i for i, line in enumerate(lines) if line == "unset XBN_ALLOW_MISSING"]
    pytest_run = [i for i, line in enumerate(lines) if line.startswith("python -m pytest")]
    assert unset and pytest_run and unset[0] < pytest_run[0], (unset, pytest_run)
    assert not any(re.match(r"(export\s+)?XBN_ALLOW_MISSING=", line) for line in lines)
