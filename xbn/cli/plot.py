"""`xbn plot`: one scenario's drift plot as a PNG or SVG file, the figure the HTML report
shows for it; what the README's image is made with, so anyone can make it again."""

from __future__ import annotations

import click

from .common import (
    analyze_with_progress,
    cache_option,
    check_reference,
    fail,
    frameworks_to_run,
    jobs_option,
    load_scenarios,
    quiet_option,
    result_cache,
    timeout_option,
)

EXAMPLES = """
\b
Examples:
  xbn plot long-run-float32 -o drift.png
  xbn plot seed-keras -f numpy,torch,keras,tf-keras,haiku -o docs/drift.png
"""


@click.command(epilog=EXAMPLES)
@click.argument("scenario")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="A .png or .svg file.")
@click.option("--frameworks", "-f", help="Comma-separated framework ids (default: all installed).")
@click.option("--reference", "-r", default="numpy", show_default=True)
@click.option("--dpi", type=click.IntRange(min=30, max=600), default=110, show_default=True,
              help="Resolution of a PNG.")
@timeout_option
@jobs_option
@cache_option
@quiet_option
def plot(scenario, output, frameworks, reference, dpi, timeout, jobs, no_cache, quiet) -> None:
    """Run SCENARIO and draw each framework's distance to the reference per step."""
    if not output.lower().endswith((".png", ".svg")):
        fail(f"--output {output}: write a .png or .svg file")
    check_reference(reference)
    ids = frameworks_to_run(frameworks, reference)
    (loaded,) = load_scenarios([scenario])
    from ..report.plots import drift_figure, save
    from ..report.view import column_order

    report = analyze_with_progress([loaded], ids, reference, None, timeout, jobs, quiet,
                                   result_cache(no_cache))
    fig = drift_figure(report.drift, loaded.name, column_order(report), reference, loaded.steps)
    if fig is None:
        fail(f"{loaded.name}: no running statistics measured at two or more steps to plot")
    from pathlib import Path

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    save(fig, output, dpi=dpi)
    click.echo(f"wrote {output}", err=True)


COMMANDS = (plot,)
