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
    from .frameworks.modes import describe

    for fid in avail:  # what each op runs as, plain and under each named mode
        avail[fid]["runs"] = describe(fid)
    return avail


def report_frameworks(ids: list[str] | None, scenario_names: list[str], all_modes: bool = False,
                      ) -> tuple[list[str] | None, dict[str, set[str]]]:
    """The framework ids ``xbn report`` runs and, for the mode ids it adds, the scenarios each
    runs (``xbn.execution.runner.run``'s ``only``).

    ``ids`` (None: every installed framework) as given; each plain id among them brings its
    mode ids: with ``all_modes`` every named mode on every scenario, else the committed
    report's selection (``xbn.frameworks.modes.REPORT_MODES``) on its scenarios. A mode id
    given in ``ids`` runs everywhere. ``ID@DEVICE`` brings ``ID+MODE@DEVICE``."""
    from .frameworks.devices import CPU, device_of, mode_of, run_id
    from .frameworks.modes import REPORT_MODES, all_mode_ids

    if ids is None:
        from .frameworks.registry import availability

        ids = [f for f, a in availability().items() if a["available"]]
    out, only = list(ids), {}
    for fid in ids:
        if mode_of(fid) is not None:
            continue
        at = "" if device_of(fid) == CPU else f"@{device_of(fid)}"
        wanted = {m: None for m in all_mode_ids(run_id(fid))} if all_modes else \
            {m: names for m, names in REPORT_MODES.items() if m.partition("+")[0] == run_id(fid)}
        for mode_id, names in wanted.items():
            moded = mode_id + at
            if moded in out:
                continue
            out.append(moded)
            if names is not None:
                only[moded] = {n for n in names if n in scenario_names}
    return out, only


def write_report_files(output_dir: Path, scenarios: list, ids: list[str] | None, reference: str,
                       store, analyze: Callable[[list], object],
                       on_analyzed: Callable[[object], None] | None = None,
                       only: dict[str, set[str]] | None = None,
                       ) -> tuple[list[Path], bool]:
    """``scenarios`` through ``ids``, written to ``output_dir`` (index.html, index.md,
    diffs.csv, results.json); returns (paths, whether they came from the cache).

    ``store`` (a ``ResultCache`` or None): unchanged results, versions and xbn give the same
    files, copied from the cache; files written from a run in which no framework's worker
    failed are kept there for the next time. ``analyze(scenarios)`` runs and analyses them
    (the command line passes its progress display); ``on_analyzed(report)`` sees the report
    before it is written; ``only``: the mode ids that ran a selection of the scenarios
    (``report_frameworks``), part of the cache key."""
    from .profiles.facts import profile_matrix
    from .report.files import write_report

    if store is not None:
        from .execution.cache import report_key

        kept = store.restore_files(report_key(scenarios, ids, reference, store.root, only),
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
        store.keep_files(report_key(scenarios, ids, reference, store.root, only), written)
    return written, False
