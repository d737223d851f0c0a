"""`xbn snapshot` and `xbn check`: the upgrade guard's commands (the logic is in xbn.guard.snapshot
and xbn.guard.check).

Only click is imported at module level, so `xbn --help` stays fast; everything else is
imported inside the commands.
"""

from __future__ import annotations

import sys

import click

from .common import (
    builtin_scenarios,
    emit,
    fail,
    framework_ids,
    frameworks_to_run,
    jobs_option,
    load_scenarios,
    progress_printer,
    timeout_option,
)
from .schema import divergences_option, load_divergences, report_stale

EXAMPLES_SNAPSHOT = """
\b
Examples:
  xbn snapshot --output baseline.json                    every built-in scenario
  xbn snapshot my.toml seed-keras -f numpy,torch -o baseline.json
"""

EXAMPLES_CHECK = """
\b
Exit status: 0 unchanged, 1 changed, 2 bad input (a malformed or edited snapshot).
\b
Examples:
  xbn check baseline.json
  xbn check baseline.json --format markdown --output xbn.md --junit xbn.xml
  xbn check baseline.json --tolerance 16      accept float32 rounding drift
  xbn check baseline.json --require-all       in CI: a framework that is gone fails
  xbn check baseline.json --divergences xbn-divergences.toml   changes you accept
"""


@click.command(epilog=EXAMPLES_SNAPSHOT)
@click.argument("scenarios", nargs=-1)
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the snapshot here (default: stdout).")
@click.option("--frameworks", "-f",
              help="Comma-separated framework ids (default: all installed; numpy always runs).")
@timeout_option
@jobs_option
def snapshot(scenarios, output, frameworks, timeout, jobs) -> None:
    """Record the observations of SCENARIOS (default: built-ins) as a baseline.

    The snapshot holds every observation, each framework's versions, and each scenario's
    full definition with its sha256, so `xbn check` can re-run it later.
    """
    from ..execution.runner import run
    from ..guard.snapshot import dumps, snapshot_document

    ids = frameworks_to_run(frameworks, "numpy")
    loaded = load_scenarios(scenarios) if scenarios else builtin_scenarios()
    result = run(loaded, ids, timeout=timeout, jobs=jobs, progress=progress_printer())
    for fid, meta in result.frameworks.items():
        if not meta.get("available"):
            click.echo(f"xbn: warning: {fid} is not installed: the snapshot records it as "
                       "unavailable and `xbn check` will skip it", err=True)
        elif meta.get("error"):
            click.echo(f"xbn: warning: {fid}: {meta['error']} (recorded as error rows)",
                       err=True)
    emit(dumps(snapshot_document(result)), output)


@click.command(epilog=EXAMPLES_CHECK)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--frameworks", "-f",
              help="Check only these of the snapshot's frameworks (comma-separated ids).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]),
              default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the report here instead of stdout.")
@click.option("--junit", type=click.Path(dir_okay=False),
              help="Also write JUnit XML here (a test case per scenario x framework).")
@click.option("--tolerance", "-k", type=click.FloatRange(min=0), default=None,
              show_default="exact on the snapshot's CPU, else 16",
              help="Accept differences within K eps(dtype) x the old array's largest magnitude "
                   "(0: bit for bit, even on another CPU).")
@click.option("--require-all", is_flag=True,
              help="A framework the snapshot recorded that cannot run here fails the check "
                   "(its rows are missing: exit 1) instead of being skipped with a warning. "
                   "For CI.")
@divergences_option
@timeout_option
@jobs_option
def check(file, frameworks, fmt, output, junit, tolerance, require_all, divergences, timeout,
          jobs) -> None:
    """Re-run a snapshot and report what changed (exit 1 if anything did).

    Compares every observation with the snapshot's (same scenario, step, framework and
    quantity) and explains each change with the reference's semantic switches.
    """
    from ..guard.check import CheckError
    from ..guard.check import check as run_check
    from ..guard.snapshot import SnapshotError, load_snapshot
    from ..report.check_out import render, render_junit

    entries = load_divergences(divergences)
    try:
        snap = load_snapshot(file)
    except SnapshotError as exc:
        fail(str(exc))
    try:
        result = run_check(snap, framework_ids(frameworks), tolerance, require_all=require_all,
                           timeout=timeout, jobs=jobs, progress=progress_printer())
    except CheckError as exc:
        fail(f"{file}: {exc}")
    if entries:
        from ..guard.check import accept_documented

        report_stale(accept_documented(result, entries), "change")
    for warning in result.warnings:
        click.echo(f"xbn: warning: {warning}", err=True)
    text = render(result, fmt)
    if junit:
        emit(render_junit(result), junit)
    emit(text, output)
    if output:
        verdict = f"{len(result.changes)} changed" if result.changed else "unchanged"
        click.echo(f"xbn check: {verdict} ({result.compared} observations)", err=True)
    sys.exit(1 if result.changed else 0)


COMMANDS = (snapshot, check)
