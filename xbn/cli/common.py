"""What every command shares: failing, emitting, the worker options, progress, framework ids
(with "did you mean") and scenario loading.

Commands import this module; it imports no command module. Only click is imported at module
level: everything else is imported where it is used, so ``xbn --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click


def fail(message: str) -> NoReturn:
    """Bad input or usage: one line on stderr, exit status 2."""
    click.echo(f"xbn: error: {message}", err=True)
    sys.exit(2)


def emit(text: str, output: str | None) -> None:
    """Print to stdout, or write a file atomically (never half a report over a good one)."""
    if output:
        from ..report import write_atomic

        write_atomic(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


# Options every command that runs workers takes.
timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=1), default=1800, show_default=True,
    help="Seconds a framework's worker may run before its rows become errors.")
jobs_option = click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
                           help="Workers at once (default: one per CPU core, longest first).")


cache_option = click.option(
    "--no-cache", "no_cache", is_flag=True,
    help="Run every scenario, neither reading nor filling the result cache (`xbn cache`).")


def result_cache(no_cache: bool):
    """The user's result cache (``xbn.execution.cache``), or None with --no-cache."""
    if no_cache:
        return None
    from ..execution.cache import ResultCache

    return ResultCache()


quiet_option = click.option("--quiet", "-q", is_flag=True,
                            help="No progress on stderr (neither the live display nor lines).")


def progress_printer(quiet: bool = False):
    """The progress display for stderr: a live table per framework on a terminal, a plain line
    per finished scenario and framework otherwise (CI logs), None with ``quiet``. Use it as a
    context manager where possible, so a live display stops even when the run fails."""
    from .progress import progress_display

    return progress_display(quiet)


def analyze_with_progress(scenarios: list, frameworks: list[str] | None, reference: str,
                          k: float | None, timeout: float, jobs: int | None, quiet: bool,
                          cache=None, only: dict[str, set[str]] | None = None):
    """Run with the progress display on stderr (stopped even if the run fails), then analyse.

    The workers start first: the analysis' imports (pandas and the comparison code, about half
    a second of CPU) are made in a thread while the workers import their frameworks, not
    before they start, so they are off the critical path of a one-framework ``xbn run``.
    ``only``: framework id -> the scenarios it runs (``xbn.execution.runner.run``)."""
    import threading
    from contextlib import nullcontext

    from ..execution.runner import run

    early = {}  # "searches": the analysis' early explanations, made by the preload

    def prepare() -> None:
        from ..analysis.pipeline import EarlyExplanations
        from ..comparison.diffs import DEFAULT_K

        early["k"] = k if k is not None else DEFAULT_K
        early["searches"] = EarlyExplanations(scenarios, reference, early["k"], cache)

    def framework_done(framework: str, observations: list[dict]) -> None:
        preload.join()  # from the workers' reader threads: the searches exist once it ends
        if "searches" in early:  # else the import failed: raised below, where it is made again
            early["searches"].framework_done(framework, observations)

    preload = threading.Thread(target=prepare, daemon=True)
    display = progress_printer(quiet)
    with display if display is not None else nullcontext():
        preload.start()
        result = run(scenarios, frameworks, timeout=timeout, jobs=jobs, progress=display,
                     cache=cache, on_framework=framework_done, only=only)
    preload.join()
    from ..analysis.pipeline import analyze

    return analyze(result, reference, early["k"], cache, early["searches"])


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest of ``choices``, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def framework_ids(value: str | None, devices: bool = False) -> list[str] | None:
    """The ids of a comma-separated ``--frameworks`` value (None: not given); exit 2 on an
    unknown id. ``ID@DEVICE`` (``torch@cuda``, ``xbn.frameworks.devices``) is accepted where ``devices``
    (the commands that run scenarios for a report) and normalized (``torch@cpu`` is ``torch``);
    a device the framework has not is a usage error."""
    if value is None:
        return None
    from ..frameworks.devices import CPU, IdError, base_id, device_of, parse
    from ..frameworks.registry import FRAMEWORK_IDS

    ids = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [i for i in ids if base_id(i).strip() not in FRAMEWORK_IDS]
    if unknown:
        hints = "".join(did_you_mean(base_id(u).strip(), FRAMEWORK_IDS) for u in unknown)
        fail(f"unknown framework id(s) {', '.join(unknown)}{hints}; "
             f"known: {', '.join(FRAMEWORK_IDS)}")
    parsed = []
    for i in ids:
        try:
            fid = parse(i)
        except IdError as exc:
            fail(str(exc))
        if device_of(fid) != CPU and not devices:
            fail(f"{fid}: this command runs frameworks on CPU only (devices are for xbn run "
                 f"and xbn report); write {fid.partition('@')[0]}")
        parsed.append(fid)
    return parsed


def check_reference(reference: str) -> None:
    """Exit 2 unless ``reference`` is a known framework id (``ID@DEVICE`` included, written
    as ``xbn.frameworks.devices.parse`` normalizes it)."""
    from ..frameworks.devices import IdError, base_id, parse
    from ..frameworks.registry import FRAMEWORK_IDS

    base = base_id(reference)
    if base not in FRAMEWORK_IDS:
        fail(f"unknown reference {reference!r}{did_you_mean(base, FRAMEWORK_IDS)}; "
             f"known: {', '.join(FRAMEWORK_IDS)}")
    try:
        written = parse(reference)
    except IdError as exc:
        fail(f"reference: {exc}")
    if written != reference:
        fail(f"reference {reference!r}: write {written!r}")


def frameworks_to_run(value: str | None, reference: str,
                      devices: bool = False) -> list[str] | None:
    """``framework_ids`` with the reference added first when missing; None (every installed
    framework) when not given, after checking that the reference is installed."""
    ids = framework_ids(value, devices)
    if ids is None:
        from ..frameworks.devices import base_id
        from ..frameworks.registry import missing

        if missing(reference):
            fail(f"reference framework {reference!r} is not installed")
        if base_id(reference) != reference:  # every installed framework, and this id
            from ..frameworks.registry import availability

            return [reference, *(f for f, a in availability().items() if a["available"])]
        return None
    if reference not in ids:
        ids.insert(0, reference)
    return ids


def _missing_scenario(name: str) -> None:
    """Exit 2 for a path that does not exist and is no built-in name, naming close matches
    among the built-in scenarios and the files beside it."""
    from pathlib import Path

    from ..scenario.loader import BUILTIN, builtin_paths

    path = Path(name.removeprefix(BUILTIN))
    builtins = [p.stem for p in builtin_paths()]
    siblings = ([str(p) for p in path.parent.iterdir() if p.suffix in (".toml", ".json")]
                if path.parent.is_dir() else [])
    if path.suffix or path.parent != Path("."):  # written as a path: its neighbours first
        hint = did_you_mean(str(path), siblings) or did_you_mean(path.stem, builtins)
    else:
        hint = did_you_mean(str(path), builtins) or did_you_mean(str(path), siblings)
    fail(f"{name}: no such file or built-in scenario{hint}; `xbn list` shows the built-in ones")


def load_scenarios(files) -> list:
    """Load scenario files or built-in names; exit 2 on a bad file or a name used twice."""
    from ..scenario.loader import ScenarioError, load, resolve

    scenarios = []
    for f in files:
        if not resolve(f).exists():
            _missing_scenario(f)
        try:
            scenarios.append(load(resolve(f)))
        except ScenarioError as exc:
            fail(str(exc))
    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        fail(f"scenario name(s) used twice: {', '.join(dupes)}")
    return scenarios


def builtin_scenarios() -> list:
    """Every built-in scenario, loaded."""
    from ..scenario.loader import builtin_paths

    return load_scenarios([str(p) for p in builtin_paths()])
