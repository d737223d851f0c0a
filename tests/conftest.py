from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def write_scenario(tmp_path: Path):
    """Write a TOML scenario from a (dedented) string; returns its path."""

    def write(text: str, name: str = "s.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


MINIMAL = """
schema = 1
name = "t"
[layer]
features = 2
[inputs]
x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]
[[steps]]
op = "call"
input = "x"
training = true
"""


@pytest.fixture
def drifting(monkeypatch):
    """Three plugin frameworks made of the reference with other switches (tests/plugins):
    float32 drift, Bessel-corrected variance, batch-of-one error; the command line accepts
    their ids. Fast: no framework is imported."""
    from .plugins.drifting import register

    return register(monkeypatch)


@pytest.fixture(autouse=True)
def _own_result_cache(tmp_path_factory, monkeypatch):
    """Each test gets an empty result cache (``xbn.execution.cache``): a result another test or the
    developer's own runs left behind must never stand in for a run a test asks for."""
    monkeypatch.setenv("XBN_CACHE_DIR", str(tmp_path_factory.mktemp("xbn-cache")))
