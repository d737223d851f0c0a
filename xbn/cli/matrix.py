"""`xbn matrix`: the version matrix. `xbn matrix SNAPSHOT...` (or `xbn matrix merge`) merges
snapshots of several version sets into one behaviour-across-versions report (xbn.guard.matrix);
`xbn matrix plan VERSIONS.toml` writes the cells to run (xbn.guard.plan); `xbn matrix run PLAN`
runs them on an engine (xbn.guard.engines) and writes the merged report. Only click is imported
at module level."""

from __future__ import annotations

import sys

import click

from .common import emit, fail

TOLERANCE_HELP = "Tolerance in eps(dtype) units (default 16), as in `xbn run`."


class _MergeByDefault(click.Group):
    """A group whose first argument, when it names no subcommand, starts `merge`: so
    `xbn matrix a.json b.json` keeps meaning what it meant before `plan` and `run` existed
    (a snapshot file named `plan` or `run` is given as `xbn matrix merge plan`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["merge", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_MergeByDefault, epilog="""
\b
Examples:
  xbn matrix keras-3.0.2.json keras-3.0.3.json keras-3.15.1.json -o matrix.md
  xbn matrix plan examples/matrix/versions.toml -o plan.json
  xbn matrix plan examples/matrix/versions.toml --format github    (for fromJson)
  xbn matrix run plan.json --engine local --out matrix-run
  xbn matrix run plan.json --engine ray --address ray://head:10001 --out matrix-run
""")
def matrix() -> None:
    """The version matrix: SNAPSHOT... merged into one behaviour-across-versions report (the
    same as `xbn matrix merge`), or a plan of version sets made (`plan`) and run (`run`)."""


@matrix.command("merge")
@click.argument("snapshots", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown",
              show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write here, not stdout.")
@click.option("--tolerance", "-k", type=click.FloatRange(min=0), default=None,
              help=TOLERANCE_HELP)
def merge_command(snapshots, fmt, output, tolerance) -> None:
    """Merge SNAPSHOTS (`xbn snapshot`, one per version set) into one report: per framework,
    the switch values each release shows and the release at which each changed. Nothing is
    re-run: each snapshot's own observations are analysed."""
    import json

    from ..guard.matrix import merge, render_markdown, to_json
    from ..guard.snapshot import SnapshotError, load_snapshot

    try:
        loaded = [load_snapshot(path) for path in snapshots]
    except SnapshotError as exc:
        fail(str(exc))
    merged = merge(loaded, tolerance)
    text = render_markdown(merged) if fmt == "markdown" else \
        json.dumps(to_json(merged), indent=1) + "\n"
    emit(text, output)


@matrix.command("plan")
@click.argument("versions", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["json", "github"]), default="json",
              show_default=True, help="github: the include list for a workflow's fromJson.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write here, not stdout.")
@click.option("--offline", is_flag=True,
              help="Take listed versions as given (no package index query; ranges refused).")
def plan_command(versions, fmt, output, offline) -> None:
    """Resolve VERSIONS.toml (packages with listed versions or a range, framework ids,
    scenarios) into a plan: one cell per pinned version set, with a stable id. Versions
    come from the index your pip sees; dropped ones are listed with their reason."""
    import json

    from ..guard.plan import PlanError, github_matrix, make_plan

    try:
        plan = make_plan(versions, offline=offline)
    except PlanError as exc:
        fail(str(exc))
    for d in plan["dropped"]:
        click.echo(f"xbn matrix plan: dropped {d['id']}: {d['reason']}", err=True)
    click.echo(f"xbn matrix plan: {len(plan['cells'])} cell(s)", err=True)
    emit(github_matrix(plan) + "\n" if fmt == "github" else json.dumps(plan, indent=1) + "\n",
         output)


@matrix.command("run")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              show_default=True)
@click.option("--out", "out", type=click.Path(file_okay=False), default="matrix-run",
              show_default=True, help="Folder for the snapshots, logs and merged report; "
              "a cell whose snapshot is there already is skipped (resume).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="local: cells run at once.")
@click.option("--address", default=None,
              help="ray: the cluster (default: a local Ray started for the run).")
@click.option("--cpus", type=click.IntRange(min=1), default=None,
              help="ray: CPUs of the local Ray started for the run (default: all).")
@click.option("--cpus-per-cell", type=click.FloatRange(min=0.01), default=1.0,
              show_default=True, help="ray: CPUs each cell's task reserves.")
@click.option("--ray-env", type=click.Choice(["xbn", "pip"]), default="xbn", show_default=True,
              help="ray: a cell's environment built by xbn on its node (a venv over the "
                   "node's environment), or Ray's runtime_env pip.")
@click.option("--tolerance", "-k", type=click.FloatRange(min=0), default=None,
              help=TOLERANCE_HELP)
def run_command(plan_file, engine, out, jobs, address, cpus, cpus_per_cell, ray_env,
                tolerance) -> None:
    """Run PLAN's cells (each its pinned environment and `xbn snapshot`) on an engine, then
    write OUT/matrix.md and OUT/matrix.json. Exit 0 when every cell has a snapshot, 1 when
    one failed (its log tail is printed; the report holds the others; rerun to resume)."""
    from pathlib import Path

    from ..guard.engines import run_plan
    from ..guard.engines.ray_engine import RayStartFailed
    from ..guard.plan import PlanError, load_plan

    try:
        plan = load_plan(plan_file)
    except PlanError as exc:
        fail(str(exc))
    if engine == "ray":
        from ..guard.engines.ray_engine import RayMissing, ray_module

        try:
            ray_module()
        except RayMissing as exc:
            fail(str(exc))

    def log(text: str) -> None:
        click.echo(f"xbn matrix: {text}", err=True)

    try:
        failed, _ = run_plan(plan, engine, Path(out), log, tolerance, jobs=jobs,
                             address=address, cpus=cpus, cpus_per_cell=cpus_per_cell,
                             ray_env=ray_env)
    except RayStartFailed as exc:  # no cluster at --address, or a local Ray that failed
        fail(str(exc))
    if failed:
        log(f"failed: {', '.join(r['id'] for r in failed)} (rerun the same command to resume)")
    sys.exit(1 if failed else 0)


COMMANDS = (matrix,)
