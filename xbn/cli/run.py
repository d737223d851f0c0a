"""`xbn run`, `list`, `frameworks`, `explain` and `report`: running scenarios and reading the
semantics. Each command parses its options, calls one function and prints what it returns."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    analyze_with_progress,
    builtin_scenarios,
    cache_option,
    check_reference,
    did_you_mean,
    emit,
    fail,
    frameworks_to_run,
    jobs_option,
    load_scenarios,
    quiet_option,
    result_cache,
    timeout_option,
)
from .schema import (
    differing_rows,
    divergences_option,
    load_divergences,
    user_divergences,
    warn_stale,
)

EXAMPLES_RUN = """
\b
Examples:
  xbn run xbn/scenarios/seed-keras.toml
  xbn run my.toml --frameworks numpy,torch,keras --format markdown --output diff.md
  xbn run seed-keras --reference torch --format json > out.json
  xbn run seed-keras --only-diffs --full          # only what differs, whole arrays
  xbn run seed-keras --format html -o seed.html   # plots, heatmap, values on click
"""


def _note(report, quiet: bool, shown: bool) -> None:
    """Notes the written format cannot carry (CSV, JSON) go to stderr."""
    if not quiet and not shown:
        for line in report.notes:
            click.echo(f"xbn: note: {line}", err=True)


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
@click.option("--only-diffs", is_flag=True,
              help="Only rows where some framework differs, errs or is n/a (every format).")
@click.option("--full", is_flag=True,
              help="Whole arrays and messages in the table and Markdown (default: the first "
                   "elements, messages cut to a line).")
@divergences_option
@timeout_option
@jobs_option
@cache_option
@quiet_option
def run(files, frameworks, reference, fmt, output, tolerance, only_diffs, full, divergences,
        timeout, jobs, no_cache, quiet) -> None:
    """Run scenario FILES (paths or built-in names) and print the diff.

    Progress goes to stderr: a live display on a terminal, a line per finished scenario and
    framework otherwise (--quiet: none).
    """
    from ..report import render

    check_reference(reference)
    ids = frameworks_to_run(frameworks, reference, devices=True)
    scenarios = load_scenarios(files)
    entries = load_divergences(divergences)
    with user_divergences(entries):
        report = analyze_with_progress(scenarios, ids, reference, tolerance, timeout, jobs,
                                       quiet, result_cache(no_cache))
    warn_stale(entries, scenarios, differing_rows(report), "differing row")
    if only_diffs:
        from ..report.subset import only_diffs as restrict

        report = restrict(report)
    matrix = None
    if fmt == "html":
        from ..profiles.facts import profile_matrix

        matrix = profile_matrix()
    _note(report, quiet, shown=fmt in ("table", "markdown", "html"))
    emit(render(report, fmt, full=full, matrix=matrix), output)


@click.command("list")
def list_scenarios() -> None:
    """List the built-in scenarios with their titles."""
    from ..scenario.loader import builtin_paths, load

    for path in builtin_paths():
        s = load(path)
        click.echo(f"{s.name:32s} {s.title}")


@click.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--no-devices", "no_devices", is_flag=True,
              help="Skip asking the frameworks for their devices (package metadata only).")
def frameworks(fmt, no_devices) -> None:
    """Each framework id: installed or not, version, the pip extra that brings it, and the
    devices it finds (``ID@DEVICE`` runs there: torch@cuda, flax@gpu, keras@gpu).

    Versions come from package metadata; devices are asked of each installed engine (torch,
    JAX, TensorFlow) in its own process, so this process imports no framework.
    """
    import json

    from ..frameworks.registry import FRAMEWORKS
    from ..workflow import frameworks_table

    avail = frameworks_table(probe_devices=not no_devices)
    if fmt == "json":
        click.echo(json.dumps(avail, indent=1))
        return
    rows = []
    for fid, a in avail.items():
        state = "installed" if a["available"] else "missing: " + ", ".join(a["missing"])
        install = "pip install xbn" if a["extra"] == "(core)" else f"pip install xbn[{a['extra']}]"
        rows.append((fid, a["version"] or "-", state, install, FRAMEWORKS[fid].description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for (fid, version, state, install, description), a in zip(rows, avail.values(), strict=True):
        cells = (fid, version, state, install)
        click.echo("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
                   + "  " + description)
        indent = " " * widths[0]
        if a.get("devices"):
            names = a.get("names", {})
            found = ", ".join(f"{d} ({names[d]})" if d in names else d for d in a["devices"])
            click.echo(f"{indent}  devices: {found}")
            for device, why in a.get("absent", {}).items():
                click.echo(f"{indent}  no {fid}@{device}: {why}")
        runs = a["runs"]
        same = f" (= {fid}+{runs['plain_same_as']})" if runs["plain_same_as"] else ""
        click.echo(f"{indent}  {fid}{same}: {_per_op(runs['plain'])} ({runs['plain_why']})")
        for moded, ops in runs["modes"].items():
            click.echo(f"{indent}  {moded}: {_per_op(ops)}")


def _per_op(ops: dict[str, str]) -> str:
    """'call, predict: X; fit: Y': ops that run alike named together."""
    grouped: dict[str, list[str]] = {}
    for op, what in ops.items():
        grouped.setdefault(what, []).append(op)
    if len(grouped) == 1:
        return next(iter(grouped))
    return "; ".join(f"{', '.join(names)}: {what}" for what, names in grouped.items())


@click.command()
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), default="reports",
              show_default=True)
@click.option("--frameworks", "-f", help="Comma-separated framework ids (default: all installed).")
@click.option("--reference", "-r", default="numpy", show_default=True)
@click.option("--all-modes", "all_modes", is_flag=True,
              help="Every execution mode of every framework (torch+compile, keras+xla, "
                   "flax+jit, torch+onnx, ...) on every scenario; default: the selected modes "
                   "on their scenarios (xbn.frameworks.modes.REPORT_MODES).")
@divergences_option
@timeout_option
@jobs_option
@cache_option
@quiet_option
def report(output_dir, frameworks, reference, all_modes, divergences, timeout, jobs, no_cache,
           quiet) -> None:
    """Every built-in scenario through every installed framework: index.html (plots, heatmap,
    whole values on click), index.md, diffs.csv and results.json. Each framework's selected
    execution modes (torch+compile, keras+xla) run on the scenarios chosen for them, n/a
    elsewhere; --all-modes runs every mode everywhere."""
    from ..workflow import report_frameworks, write_report_files

    check_reference(reference)
    scenarios = builtin_scenarios()
    ids, only = report_frameworks(frameworks_to_run(frameworks, reference, devices=True),
                                  [s.name for s in scenarios], all_modes)
    entries = load_divergences(divergences)
    store = result_cache(no_cache or bool(entries))  # the cached files know no user entries

    def analyzed(report) -> None:
        _note(report, quiet, shown=False)
        warn_stale(entries, scenarios, differing_rows(report), "differing row")

    with user_divergences(entries):
        written, kept = write_report_files(
            Path(output_dir), scenarios, ids, reference, store,
            lambda scenarios: analyze_with_progress(scenarios, ids, reference, None, timeout,
                                                    jobs, quiet, store, only),
            analyzed, only)
    for path in written:
        click.echo(f"wrote {path}" + (" (unchanged: from the cache)" if kept else ""), err=True)


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

    from ..profiles.facts import PROFILES, profile_matrix

    if framework is not None and framework not in PROFILES:
        fail(f"unknown framework {framework!r}{did_you_mean(framework, PROFILES)}; "
             f"known: {', '.join(PROFILES)}")
    if framework is None:
        matrix = profile_matrix()
        if fmt == "json":
            click.echo(json.dumps(matrix, indent=1))
            return
        from ..report.matrix_out import matrix_text

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
