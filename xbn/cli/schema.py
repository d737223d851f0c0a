"""`xbn schema NAME` (print a JSON Schema), `xbn validate FILE...` (check scenarios, divergences
files, snapshots and results without running anything: the pre-commit hook), and the
``--divergences FILE`` option that run, report, check and fuzz share.

Only click is imported at module level; ``xbn validate`` imports no framework (the loader and
the divergences parser read plain data), so it stays fast enough for a pre-commit hook.
"""

from __future__ import annotations

import sys

import click

from .common import fail

EXAMPLES_SCHEMA = """
\b
Examples:
  xbn schema scenario > scenario.schema.json      for an editor's TOML/JSON support
  xbn schema --list
"""

EXAMPLES_VALIDATE = """
\b
Exit status: 0 every file is valid, 2 one is not (one line per bad file on stderr).
\b
Examples:
  xbn validate scenarios/*.toml xbn-divergences.toml
  xbn validate baseline.json results.json
"""

divergences_option = click.option(
    "--divergences", "divergences", type=click.Path(dir_okay=False), default=None,
    help="Your own known divergences (TOML, the schema of xbn/profiles/divergences.toml, "
         "scoped by what a scenario does): rows they cover are explained by your entry and do "
         "not fail; an entry that matches nothing is reported as stale.")


def load_divergences(path: str | None) -> tuple[dict, ...]:
    """The entries of a ``--divergences`` file (none without one); exit 2 on a bad file."""
    if not path:
        return ()
    from ..profiles.divergences import load_user_divergences

    try:
        return load_user_divergences(path)
    except ValueError as exc:
        fail(str(exc))


def user_divergences(entries: tuple[dict, ...]):
    """The context in which the explanations and verdicts also consult ``entries``
    (``xbn.profiles.divergences.user_divergences``; imported only when there are some)."""
    if not entries:
        from contextlib import nullcontext

        return nullcontext()
    from ..profiles.divergences import user_divergences as active

    return active(entries)


def warn_stale(entries: tuple[dict, ...], scenarios, rows, what: str) -> None:
    """One warning per entry that covers none of ``rows`` (``what`` says which rows those
    were): the difference it documents has gone, so the entry should go too."""
    if not entries:
        return
    from ..profiles.divergences import stale_divergences

    report_stale(stale_divergences(entries, scenarios, rows), what)


def report_stale(stale: list[dict], what: str) -> None:
    """A warning on stderr for each stale entry of the user's divergences file."""
    for d in stale:
        click.echo(f"xbn: warning: {d['origin']} ({d['framework']}: {', '.join(d['quantity'])}) "
                   f"matches no {what}: stale, remove it", err=True)


def differing_rows(report) -> list[tuple]:
    """(scenario, step, framework, quantity) of a report's differing and failing rows."""
    diffs = report.diffs
    bad = diffs[diffs["verdict"].isin(["differs", "error"])]
    return list(zip(bad["scenario"], bad["step"], bad["framework"], bad["quantity"],
                    strict=True))


@click.command(epilog=EXAMPLES_SCHEMA)
@click.argument("name", required=False)
@click.option("--list", "show_list", is_flag=True, help="List the schemas' names.")
def schema(name: str | None, show_list: bool) -> None:
    """Print the JSON Schema NAME: scenario, results (xbn run --format json, results.json),
    snapshot (xbn snapshot), finding (xbn fuzz's scenario files), divergences (known
    divergences files)."""
    from ..schemas import NAMES, text

    if show_list or name is None:
        if name is None and not show_list:
            fail(f"give a schema name: {', '.join(NAMES)}")
        click.echo("\n".join(NAMES))
        return
    if name not in NAMES:
        from .common import did_you_mean

        fail(f"unknown schema {name!r}{did_you_mean(name, NAMES)}; schemas: {', '.join(NAMES)}")
    click.echo(text(name), nl=False)


def validate_file(file: str) -> str:
    """Check one file as xbn would read it; returns its kind. Raises ValueError (one line
    naming the file and the key) when it is not valid."""
    import json
    from pathlib import Path

    from ..common.strict import read_text
    from ..scenario.loader import tomllib
    from ..schemas import kind_of, validate

    path = Path(file)
    raw = read_text(path)
    try:
        document = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{file}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                         f"{exc}") from None
    kind = kind_of(file, document)
    if kind == "divergences":
        # the schema holds the parser's vocabulary (tests/test_schemas.py keeps them in step);
        # the framework ids are the registry's. Not xbn.profiles: it imports the reference,
        # more than a pre-commit hook should pay for
        from ..frameworks.registry import FRAMEWORKS

        validate(kind, document, file)
        for i, entry in enumerate(document.get("divergence", [])):
            if entry["framework"] not in FRAMEWORKS:
                raise ValueError(f"{file}: divergence[{i}].framework: unknown framework "
                                 f"{entry['framework']!r} (known: {', '.join(FRAMEWORKS)})")
    elif kind == "scenario":
        from ..scenario.loader import load

        load(path)  # the strict reader, which checks the schema too
    elif kind == "snapshot":
        from ..guard.snapshot import load_snapshot

        load_snapshot(file)
    else:
        validate(kind, document, file)
    return kind


@click.command(epilog=EXAMPLES_VALIDATE)
@click.argument("files", nargs=-1, required=True)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing for valid files.")
def validate(files: tuple[str, ...], quiet: bool) -> None:
    """Check FILES without running anything: scenarios (.toml/.json), known-divergences files
    (TOML with [[divergence]] tables), snapshots and results JSON, each against its schema and
    xbn's strict reader. Imports no framework: fast enough for a pre-commit hook."""
    bad = 0
    for file in files:
        try:
            kind = validate_file(file)
        except ValueError as exc:
            click.echo(f"xbn: error: {exc}", err=True)
            bad += 1
        else:
            if not quiet:
                click.echo(f"ok {file} ({kind})")
    sys.exit(2 if bad else 0)


COMMANDS = (schema, validate)
