"""Small helpers shared by the command modules (click only: nothing heavy is imported)."""

from __future__ import annotations

import sys

import click


def fail(message: str) -> None:
    """Bad input or usage: one line on stderr, exit status 2."""
    click.echo(f"xbn: error: {message}", err=True)
    sys.exit(2)


def emit(text: str, output: str | None) -> None:
    """Print to stdout, or write a file atomically (never half a report over a good one)."""
    if output:
        from .report import write_atomic

        write_atomic(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


# Options every command that runs workers takes.
timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=1), default=1800, show_default=True,
    help="Seconds a framework's worker may run before its rows become errors.")
jobs_option = click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
                           help="Workers at once (default: one per framework).")
