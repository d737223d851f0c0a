"""The one exception the porting aid raises for bad input: the CLI prints it and exits 2."""

from __future__ import annotations


class PortError(ValueError):
    """Bad input (a file, an option, a combination): the message is one line for the user."""
