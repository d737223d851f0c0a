"""The command line: ``main`` (the group and entry point), ``common`` (what every command
shares), and one module per family of commands: ``run``, ``guard``, ``port``.

``cli`` and ``main`` are re-exported here for the ``xbn = "xbn.cli:main"`` entry point and
``from xbn.cli import cli``; importing them imports click and no framework. (So the name
``xbn.cli.main`` is the function: the module is reached as ``from xbn.cli.main import ...``.)
"""

from __future__ import annotations

from .main import cli, main

__all__ = ["cli", "main"]
