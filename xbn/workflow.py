"""What the commands do, as plain functions over the packages below (as nox's ``workflow.py``
under its ``_cli.py``): the command line parses, calls one of these and prints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def frameworks_table(probe_devices: bool = True) -> dict[str, dict]:
    """Each framework id: installed or not, version, missing distributions, pip extra, and
    (``probe_devices``) the devices its engine finds, asked in a process per engine so this
    one imports no framework."""
    from .execution.device_probe import framework_devices, probe_engines
    from .frameworks.devices import ENGINES
    from .frameworks.registry import availability

    avail = availability()
    if probe_devices:
        installed = [f for f, a in avail.items() if a["available"]]
        probed = probe_engines(sorted({ENGINES[f] for f in installed if f in ENGINES}))
        for fid, found in framework_devices(installed, probed).items():
            avail[fid].update(found)
    return avail


def write_report_files(output_dir: Path, scenarios: list, ids: list[str] | None, reference: str,
                       store, analyze: Callable[[list], object],
                       on_analyzed: Callable[[object], None] | None = None,
                       ) -> tuple[list[Path], bool]:
    """``scenarios`` through ``ids``, written to ``output_dir`` (index.html, index.md,
    diffs.csv, results.json); returns (paths, whether they came from the cache).

    ``store`` (a ``ResultCache`` or None): unchanged results, versions and xbn give the same
    files, copied from the cache; files written from a run in which no framework's worker
    failed are kept there for the next time. ``analyze(scenarios)`` runs and analyses them
    (the command line passes its progress display); ``on_analyzed(report)`` sees the report
    before it is written."""
    from .profiles.facts import profile_matrix
    from .report.files import write_report

    if store is not None:
        from .execution.cache import report_key

        kept = store.restore_files(report_key(scenarios, ids, reference, store.root),
                                   Path(output_dir))
        if kept:
            return kept, True
    analyzed = analyze(scenarios)
    if on_analyzed is not None:
        on_analyzed(analyzed)
    written = write_report(analyzed, Path(output_dir), profile_matrix())
    if store is not None and not any(meta.get("error") for meta in analyzed.frameworks.values()):
        # keyed again: the run's workers have now recorded what they load (a worker's error
        # is kept for no later run)
        store.keep_files(report_key(scenarios, ids, reference, store.root), written)
    return written, False
