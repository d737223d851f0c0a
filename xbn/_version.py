"""The package version: the one place it is written (imported by ``xbn`` and by any module
that records it, so no module inside the package imports the package ``__init__`` for it)."""

__version__ = "0.1.0"
