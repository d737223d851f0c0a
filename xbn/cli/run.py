"""`xbn run`, `list`, `frameworks`, `explain` and `report`: running scenarios and reading the
semantics. Each command parses its options, calls one function and prints what it returns."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    builtin_scenarios,
    check_reference,
    emit,
    fail,
    frameworks_to_run,
    jobs_option,
    load_scenarios,
    progress_printer,
    timeout_option,
)

EXAMPLES_RUN = """
\b
Examples:
  xbn run xbn/scenarios/seed-keras.toml
  xbn run my.toml --frameworks numpy,torch,keras --format markdown --output diff.md
  xbn run seed-keras --reference torch --format json > out.json
"""


@click.command(epilog=EXAMPLES_RUN)
@click.argument("files", nargs=-1, required=True)
@click.option("--frameworks", "-f", help="Comma-separated framework ids (default: all installed).")
@click.option("--reference", "-r", default="numpy", show_default=True,
              help="Framework the others are compared with.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json", "html"]),
              default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@click.option("--tolerance", "-k", type=click.FloatRange(min=0), default=None,
              help="Tolerance in eps(dtype) units at the reference's scale (default 16).")
@timeout_option
@jobs_option
def run(files, frameworks, reference, fmt, output, tolerance, timeout, jobs) -> None:
    """Run scenario FILES (paths or built-in names) and print the diff."""
    from ..analysis import run_and_analyze
    from ..comparison import DEFAULT_K
    from ..report import render

    check_reference(reference)
    ids = frameworks_to_run(frameworks, reference)
    scenarios = load_scenarios(files)
    report = run_and_analyze(scenarios, ids, reference,
                             tolerance if tolerance is not None else DEFAULT_K,
                             timeout=timeout, jobs=jobs, progress=progress_printer())
    emit(render(report, fmt), output)


@click.command("list")
def list_scenarios() -> None:
    """List the built-in scenarios with their titles."""
    from ..scenario import builtin_paths, load

    for path in builtin_paths():
        s = load(path)
        click.echo(f"{s.name:32s} {s.title}")


@click.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
def frameworks(fmt) -> None:
    """Each framework id: installed or not, version, and the pip extra that brings it.

    Read from package metadata: no framework is imported.
    """
    import json

    from ..registry import FRAMEWORKS, availability

    avail = availability()
    if fmt == "json":
        click.echo(json.dumps(avail, indent=1))
        return
    for fid, a in avail.items():
        state = "installed" if a["available"] else "missing: " + ", ".join(a["missing"])
        click.echo(f"{fid:12s} {a['version'] or '-':12s} {state:28s} "
                   f"xbn[{a['extra']}]  {FRAMEWORKS[fid].description}")


@click.command()
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), default="reports",
              show_default=True)
@click.option("--frameworks", "-f", help="Comma-separated framework ids (default: all installed).")
@click.option("--reference", "-r", default="numpy", show_default=True)
@timeout_option
@jobs_option
def report(output_dir, frameworks, reference, timeout, jobs) -> None:
    """Every built-in scenario through every installed framework: index.md, CSV, JSON."""
    from ..analysis import run_and_analyze
    from ..profiles import profile_matrix
    from ..report.files import write_report

    check_reference(reference)
    ids = frameworks_to_run(frameworks, reference)
    scenarios = builtin_scenarios()
    analyzed = run_and_analyze(scenarios, ids, reference, timeout=timeout, jobs=jobs,
                               progress=progress_printer())
    for path in write_report(analyzed, Path(output_dir), profile_matrix()):
        click.echo(f"wrote {path}", err=True)


@click.command()
@click.argument("framework", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table",
              show_default=True)
def explain(framework, fmt) -> None:
    """The semantics matrix: each framework's value for every switch (FRAMEWORK: with sources).

    These profiles are what the explanation column searches and what the conformance suite
    holds every adapter to.
    """
    import json

    from ..profiles import PROFILES, profile_matrix

    if framework is not None and framework not in PROFILES:
        fail(f"unknown framework {framework!r}; known: {', '.join(PROFILES)}")
    if framework is None:
        matrix = profile_matrix()
        if fmt == "json":
            click.echo(json.dumps(matrix, indent=1))
            return
        from ..report.text import matrix_text

        click.echo(matrix_text(matrix, markdown=fmt == "markdown"))
        return
    facts = PROFILES[framework]
    if fmt == "json":
        click.echo(json.dumps({k: {"value": f.value, "source": f.source} for k, f in facts.items()},
                              indent=1))
        return
    for switch, fact in facts.items():
        click.echo(f"{switch:24s} {str(fact.value):14s} {fact.source}")


COMMANDS = (run, list_scenarios, frameworks, explain, report)
