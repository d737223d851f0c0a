"""What every command shares: failing, emitting, the worker options, progress lines, framework
ids and scenario loading.

Commands import this module; it imports no command module. Only click is imported at module
level: everything else is imported where it is used, so ``xbn --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click


def fail(message: str) -> NoReturn:
    """Bad input or usage: one line on stderr, exit status 2."""
    click.echo(f"xbn: error: {message}", err=True)
    sys.exit(2)


def emit(text: str, output: str | None) -> None:
    """Print to stdout, or write a file atomically (never half a report over a good one)."""
    if output:
        from ..report import write_atomic

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


def progress_printer():
    """A progress callback that prints to stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None

    def show(line: str) -> None:
        click.echo(line, err=True)

    return show


def framework_ids(value: str | None) -> list[str] | None:
    """The ids of a comma-separated ``--frameworks`` value (None: not given); exit 2 on an
    unknown id."""
    if value is None:
        return None
    from ..registry import FRAMEWORK_IDS

    ids = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [i for i in ids if i not in FRAMEWORK_IDS]
    if unknown:
        fail(f"unknown framework id(s) {', '.join(unknown)}; known: {', '.join(FRAMEWORK_IDS)}")
    return ids


def check_reference(reference: str) -> None:
    """Exit 2 unless ``reference`` is a known framework id."""
    from ..registry import FRAMEWORK_IDS

    if reference not in FRAMEWORK_IDS:
        fail(f"unknown reference {reference!r}; known: {', '.join(FRAMEWORK_IDS)}")


def frameworks_to_run(value: str | None, reference: str) -> list[str] | None:
    """``framework_ids`` with the reference added first when missing; None (every installed
    framework) when not given, after checking that the reference is installed."""
    ids = framework_ids(value)
    if ids is None:
        from ..registry import available

        if not available(reference):
            fail(f"reference framework {reference!r} is not installed")
        return None
    if reference not in ids:
        ids.insert(0, reference)
    return ids


def load_scenarios(files) -> list:
    """Load scenario files or built-in names; exit 2 on a bad file or a name used twice."""
    from ..scenario import ScenarioError, load, resolve

    scenarios = []
    for f in files:
        try:
            scenarios.append(load(resolve(f)))
        except ScenarioError as exc:
            fail(str(exc))
    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        fail(f"scenario name(s) used twice: {', '.join(dupes)}")
    return scenarios


def builtin_scenarios() -> list:
    """Every built-in scenario, loaded."""
    from ..scenario import builtin_paths

    return load_scenarios([str(p) for p in builtin_paths()])
