"""The ``xbn`` command group: it registers every command and is the program's entry point.

Exit status: 0 the command did its job (whatever the verdicts), 1 a check found a change,
2 bad input or usage. Machine-readable output goes to stdout, progress to stderr.
"""

from __future__ import annotations

import click

from .._version import __version__
from . import cache, fuzz, guard, matrix, plot, port, run, schema


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xbn")
def cli() -> None:
    """xbn: where and why BatchNorm differs between PyTorch, Keras, Flax, Haiku and Equinox.

    \b
    Start with:
      xbn frameworks          which frameworks are installed
      xbn list                the built-in scenarios
      xbn run seed-keras      one scenario through every installed framework
      xbn report              everything, written to reports/ (open reports/index.html)
    """


for _module in (run, plot, guard, port, cache, fuzz, matrix, schema):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="xbn")
