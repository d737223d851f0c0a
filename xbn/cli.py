"""Command line: thin commands that parse, call one function and return an exit code.

Exit status: 0 the command did its job (whatever the verdicts), 1 a check found a change,
2 bad input or usage. Machine-readable output goes to stdout, progress to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .cli_common import emit as _emit
from .cli_common import fail as _fail
from .cli_common import jobs_option, timeout_option

EXAMPLES_RUN = """
\b
Examples:
  xbn run xbn/scenarios/seed-keras.toml
  xbn run my.toml --frameworks numpy,torch,keras --format markdown --output diff.md
  xbn run seed-keras --reference torch --format json > out.json
"""


def _progress_printer(enabled: bool):
    if not enabled:
        return None

    def show(line: str) -> None:
        click.echo(line, err=True)

    return show


def _parse_frameworks(value: str | None, reference: str) -> list[str] | None:
    from .adapters import FRAMEWORK_IDS, available

    if value is None:
        if not available(reference):
            _fail(f"reference framework {reference!r} is not installed")
        return None
    ids = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [i for i in ids if i not in FRAMEWORK_IDS]
    if unknown:
        _fail(f"unknown framework id(s) {', '.join(unknown)}; known: {', '.join(FRAMEWORK_IDS)}")
    if reference not in ids:
        ids.insert(0, reference)
    return ids


def _load_all(files) -> list:
    from .scenario import ScenarioError, load, resolve

    scenarios = []
    for f in files:
        try:
            scenarios.append(load(resolve(f)))
        except ScenarioError as exc:
            _fail(str(exc))
    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        _fail(f"scenario name(s) used twice: {', '.join(dupes)}")
    return scenarios


def _check_reference(reference: str) -> None:
    from .adapters import FRAMEWORK_IDS

    if reference not in FRAMEWORK_IDS:
        _fail(f"unknown reference {reference!r}; known: {', '.join(FRAMEWORK_IDS)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xbn")
def cli() -> None:
    """xbn: where and why BatchNorm differs between PyTorch, Keras, Flax, Haiku and Equinox.

    \b
    Start with:
      xbn frameworks          which frameworks are installed
      xbn list                the built-in scenarios
      xbn run seed-keras      one scenario through every installed framework
      xbn report              everything, written to reports/
    """


@cli.command(epilog=EXAMPLES_RUN)
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
    from .compare import DEFAULT_K
    from .report import render
    from .report.model import Report
    from .runner import run as run_scenarios

    _check_reference(reference)
    ids = _parse_frameworks(frameworks, reference)
    scenarios = _load_all(files)
    result = run_scenarios(scenarios, ids, timeout=timeout, jobs=jobs,
                           progress=_progress_printer(sys.stderr.isatty()))
    report = Report.build(result, reference, tolerance if tolerance is not None else DEFAULT_K)
    _emit(render(report, fmt), output)


@cli.command("list")
def list_scenarios() -> None:
    """List the built-in scenarios with their titles."""
    from .scenario import builtin_paths, load

    for path in builtin_paths():
        s = load(path)
        click.echo(f"{s.name:32s} {s.title}")


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
def frameworks(fmt) -> None:
    """Each framework id: installed or not, version, and the pip extra that brings it.

    Read from package metadata: no framework is imported.
    """
    import json

    from .adapters import FRAMEWORKS, availability

    avail = availability()
    if fmt == "json":
        click.echo(json.dumps(avail, indent=1))
        return
    for fid, a in avail.items():
        state = "installed" if a["available"] else "missing: " + ", ".join(a["missing"])
        click.echo(f"{fid:12s} {a['version'] or '-':12s} {state:28s} "
                   f"xbn[{a['extra']}]  {FRAMEWORKS[fid].description}")


@cli.command()
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), default="reports",
              show_default=True)
@click.option("--frameworks", "-f", help="Comma-separated framework ids (default: all installed).")
@click.option("--reference", "-r", default="numpy", show_default=True)
@timeout_option
@jobs_option
def report(output_dir, frameworks, reference, timeout, jobs) -> None:
    """Every built-in scenario through every installed framework: index.md, CSV, JSON."""
    from .report.files import write_report
    from .scenario import builtin_paths

    _check_reference(reference)
    ids = _parse_frameworks(frameworks, reference)
    scenarios = _load_all([str(p) for p in builtin_paths()])
    written = write_report(scenarios, ids, reference, Path(output_dir), timeout=timeout,
                           jobs=jobs, progress=_progress_printer(sys.stderr.isatty()))
    for path in written:
        click.echo(f"wrote {path}", err=True)


def main() -> None:
    cli(prog_name="xbn")


@cli.command()
@click.argument("framework", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table",
              show_default=True)
def explain(framework, fmt) -> None:
    """The semantics matrix: each framework's value for every switch (FRAMEWORK: with sources).

    These profiles are what the explanation column searches and what the conformance suite
    holds every adapter to.
    """
    import json

    from .profiles import PROFILES, profile_matrix

    if framework is not None and framework not in PROFILES:
        _fail(f"unknown framework {framework!r}; known: {', '.join(PROFILES)}")
    if framework is None:
        matrix = profile_matrix()
        if fmt == "json":
            click.echo(json.dumps(matrix, indent=1))
            return
        from .report.text import matrix_text

        click.echo(matrix_text(matrix, markdown=fmt == "markdown"))
        return
    facts = PROFILES[framework]
    if fmt == "json":
        click.echo(json.dumps({k: {"value": f.value, "source": f.source} for k, f in facts.items()},
                              indent=1))
        return
    for switch, fact in facts.items():
        click.echo(f"{switch:24s} {str(fact.value):14s} {fact.source}")


# Command groups that live in their own modules (imported lazily by their own commands).
# register-commands: one line per module, e.g. `cli.add_command(some_module.command)`
from . import cli_guard; cli.add_command(cli_guard.snapshot); cli.add_command(cli_guard.check)  # noqa: E402, E702, I001
from . import cli_port; cli.add_command(cli_port.port); cli.add_command(cli_port.convert); cli.add_command(cli_port.audit); cli.add_command(cli_port.verify)  # noqa: E402, E702, I001
