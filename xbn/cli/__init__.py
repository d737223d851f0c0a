"""The command line: ``app`` (the click group and the entry point), ``common`` (what every
command shares), and one module per family of commands: ``run``, ``plot``, ``guard``, ``port``,
``fuzz``, ``cache``, ``matrix``. Commands parse, call one plain function and print.

``cli`` and ``main`` are re-exported here for the ``xbn = "xbn.cli:main"`` entry point and
``from xbn.cli import cli``; importing them imports click and no framework.
"""

from __future__ import annotations

from .app import cli, main

__all__ = ["cli", "main"]
