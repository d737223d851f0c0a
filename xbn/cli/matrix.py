"""`xbn matrix`: snapshots of several version sets merged into one behaviour-across-versions
report (the logic is in xbn.guard.matrix). Only click is imported at module level."""

from __future__ import annotations

import click

from .common import emit, fail


@click.command(epilog="""
\b
Examples:
  xbn matrix keras-3.0.2.json keras-3.0.3.json keras-3.15.1.json -o matrix.md
  xbn matrix snapshots/*.json --format json
""")
@click.argument("snapshots", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown",
              show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write here, not stdout.")
@click.option("--tolerance", "-k", type=click.FloatRange(min=0), default=None,
              help="Tolerance in eps(dtype) units (default 16), as in `xbn run`.")
def matrix(snapshots, fmt, output, tolerance) -> None:
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


COMMANDS = (matrix,)
