"""xbn in your own test suite: a pytest plugin (entry point ``pytest11``, loaded by pytest once
xbn is installed; ``-p no:xbn.pytest_plugin`` turns it off).

- the ``xbn`` fixture runs a scenario (a file, or a dict in the scenario language) through the
  frameworks you choose and returns its diff table (``DiffTable``); ``table.assert_agree()``
  fails with the rows that differ and why; ``xbn.assert_bn_equivalent`` is
  ``xbn.testing.assert_bn_equivalent`` (two models of your own, layer by layer);
- ``--xbn-baseline FILE`` re-runs the scenarios a committed snapshot (``xbn snapshot``) holds,
  one test per scenario that fails with what changed, and ``--xbn-update`` rewrites the
  snapshot from the scenario files instead (syrupy's ``--snapshot-update`` habit);
- ``--xbn-divergences FILE`` (or ``xbn_divergences`` in the ini file): your own known
  divergences, the TOML schema of xbn's own, scoped by what a scenario does; a row they cover
  passes, and an entry that covers nothing is reported as stale in the terminal summary.

Why a plugin and not a helper module: pytest's options and ini keys are where a project keeps
its CI switches (``--xbn-update`` next to ``--snapshot-update``). This module imports only
pytest and the standard library at import time: nothing of xbn's machinery, and no framework,
is imported until a test asks (frameworks are imported only in xbn's worker processes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DEFAULT_TIMEOUT = 600.0  # seconds a framework's worker may take in a test


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xbn", "xbn: cross-framework BatchNorm checks")
    group.addoption("--xbn-baseline", metavar="FILE", default=None,
                    help="Check the scenarios of this xbn snapshot (one test per scenario).")
    group.addoption("--xbn-update", action="store_true", default=False,
                    help="Rewrite the --xbn-baseline snapshot from its scenario files and the "
                         "frameworks installed now, instead of checking it.")
    group.addoption("--xbn-divergences", metavar="FILE", default=None,
                    help="Your known divergences (TOML, xbn's divergences schema).")
    group.addoption("--xbn-frameworks", metavar="IDS", default=None,
                    help="Comma-separated framework ids the xbn fixture runs by default.")
    parser.addini("xbn_baseline", "default for --xbn-baseline", default=None)
    parser.addini("xbn_divergences", "default for --xbn-divergences", default=None)
    parser.addini("xbn_frameworks", "default for --xbn-frameworks", default=None)


def _setting(config: pytest.Config, name: str) -> str | None:
    """An option, else its ini key; a file named on the command line is relative to where
    pytest was started, one in the ini file to the ini file's folder."""
    value = config.getoption(f"--{name.replace('_', '-')}")
    base = config.invocation_params.dir
    if not value:
        value = config.getini(name)
        base = config.inipath.parent if config.inipath else config.rootpath
    if value and name in ("xbn_baseline", "xbn_divergences"):
        return str(Path(base, value))
    return value or None


# ----------------------------------------------------------------------------------------
# the user's divergences: loaded once per session, with a record of the rows they covered


class _Divergences:
    def __init__(self, file: str | None):
        self.file, self.entries, self.rows, self.used = file, (), [], False
        self.frameworks: set[str] = set()  # the frameworks run: only their entries are judged
        if file:
            from .profiles.divergences import load_user_divergences

            try:
                self.entries = load_user_divergences(file)
            except ValueError as exc:
                raise pytest.UsageError(f"xbn: {exc}") from None

    def stale(self) -> list[dict]:
        from .profiles.divergences import stale_divergences

        scenarios = {id(s): s for s, *_ in self.rows}
        stale = stale_divergences(self.entries, list(scenarios.values()),
                                  [(s.name, *rest) for s, *rest in self.rows])
        return [d for d in stale if d["framework"] in self.frameworks]


def _divergences(config: pytest.Config) -> _Divergences:
    if not hasattr(config, "_xbn_divergences"):
        config._xbn_divergences = _Divergences(_setting(config, "xbn_divergences"))
    return config._xbn_divergences


# ----------------------------------------------------------------------------------------
# the fixture


@dataclass
class DiffTable:
    """A scenario's diff table: ``diffs`` (pandas DataFrame, one row per framework, step and
    quantity, with verdict and explanation, as ``xbn run --format json`` writes it) and the
    ``report`` it came from."""

    scenario: Any
    report: Any
    divergences: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def diffs(self):
        return self.report.diffs

    @property
    def failing(self):
        """Rows that differ or fail and that no known divergence (xbn's or yours) covers."""
        d = self.diffs
        known = d["explanation"].fillna("").str.startswith("known divergence")
        return d[d["verdict"].isin(["differs", "error"]) & ~known]

    @property
    def ok(self) -> bool:
        return self.failing.empty

    def summary(self, limit: int = 20) -> str:
        """The failing rows, one line each: step, op, framework, quantity, verdict, size and
        the explanation (the switch that reproduces it) or the error's message."""
        rows = self.failing
        head = (f"xbn: scenario {self.scenario.name!r}: {len(rows)} row(s) differ from "
                f"{self.report.reference} beyond the tolerance ({self.report.k:g} eps) or fail")
        lines = [head]
        for r in rows.head(limit).itertuples(index=False):
            size = f"max_ulp {r.max_ulp}" if r.verdict == "differs" else (r.message or "")
            why = r.explanation if isinstance(r.explanation, str) else "unexplained"
            lines.append(f"  step {r.step} {r.op:<11} {r.framework:<12} {r.quantity:<16} "
                         f"{r.verdict}: {size}; {why}")
        if len(rows) > limit:
            lines.append(f"  ... and {len(rows) - limit} more")
        versions = ", ".join(f"{f} {m.get('version')}" for f, m in self.report.frameworks.items()
                             if m.get("available"))
        lines.append(f"  versions: {versions}")
        return "\n".join(lines)

    def assert_agree(self) -> DiffTable:
        """Raise AssertionError with ``summary()`` unless every row agrees (or is n/a, or is a
        known divergence)."""
        if not self.ok:
            raise AssertionError(self.summary())
        return self


class XbnFixture:
    """What the ``xbn`` fixture gives a test: ``run`` (a scenario through frameworks, its diff
    table) and ``assert_bn_equivalent`` (two models of your own)."""

    def __init__(self, config: pytest.Config, name: str):
        self.config, self.name = config, name

    @property
    def assert_bn_equivalent(self):
        """``xbn.testing.assert_bn_equivalent``, imported when a test asks for it."""
        from .testing import assert_bn_equivalent

        return assert_bn_equivalent

    def load(self, scenario: str | Path | dict):
        """A scenario from a path (relative to the test's root), a built-in name or a dict
        in the scenario language; a bad one fails the test with xbn's one-line message."""
        from .scenario.loader import ScenarioError, load, parse, resolve
        from .schemas import validate

        try:
            if isinstance(scenario, dict):
                parsed = parse(scenario, f"<{self.name}>")
                validate("scenario", scenario, f"<{self.name}>", ScenarioError)
                return parsed
            path = Path(scenario)
            if not path.is_absolute() and not path.exists():
                ini = self.config.inipath
                path = Path(ini.parent if ini else self.config.rootpath, path)
            return load(path if path.exists() else resolve(str(scenario)))
        except ScenarioError as exc:
            pytest.fail(f"xbn: {exc}", pytrace=False)

    def run(self, scenario: str | Path | dict, frameworks: list[str] | str | None = None,
            reference: str = "numpy", tolerance: float | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> DiffTable:
        """Run ``scenario`` through ``frameworks`` (default: ``--xbn-frameworks``, else every
        installed one) against ``reference``; returns its diff table, explained, with your
        divergences file consulted. A framework that is not installed skips the test."""
        from .analysis.pipeline import run_and_analyze
        from .comparison.diffs import DEFAULT_K
        from .frameworks.registry import missing
        from .profiles.divergences import user_divergences

        loaded = self.load(scenario)
        ids = frameworks or _setting(self.config, "xbn_frameworks")
        if isinstance(ids, str):
            ids = [f.strip() for f in ids.split(",") if f.strip()]
        if ids is not None:
            ids = [reference, *(f for f in ids if f != reference)]
            absent = {f: missing(f) for f in ids if missing(f)}
            if absent:
                pytest.skip("xbn: not installed: " + ", ".join(
                    f"{f} ({', '.join(m)})" for f, m in absent.items()))
        div = _divergences(self.config)
        k = DEFAULT_K if tolerance is None else tolerance
        with user_divergences(div.entries):
            report = run_and_analyze([loaded], ids, reference, k, timeout=timeout)
        bad = report.diffs[report.diffs["verdict"].isin(["differs", "error"])]
        div.used = True
        div.frameworks.update(report.frameworks)
        div.rows += [(loaded, r.step, r.framework, r.quantity)
                     for r in bad.itertuples(index=False)]
        return DiffTable(loaded, report, div.entries)


@pytest.fixture
def xbn(request: pytest.FixtureRequest) -> XbnFixture:
    """Run scenarios through frameworks and get their diff tables (``XbnFixture``)."""
    return XbnFixture(request.config, request.node.name)


# ----------------------------------------------------------------------------------------
# --xbn-baseline / --xbn-update: one test per scenario of a committed snapshot


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xbn: a check of a scenario against an xbn baseline")
    baseline = _setting(config, "xbn_baseline")
    if config.getoption("--xbn-update") and not baseline:
        raise pytest.UsageError("xbn: --xbn-update needs --xbn-baseline FILE (or xbn_baseline)")
    if baseline:
        config._xbn_baseline = _Baseline(config, Path(baseline))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    baseline = getattr(config, "_xbn_baseline", None)
    if baseline is not None:
        parent = BaselineFile.from_parent(session, path=baseline.path)
        items.extend(parent.collect())


class _Baseline:
    """The snapshot and, once the first of its tests asks, the check of all its scenarios
    (one run of every framework, not one per test)."""

    def __init__(self, config: pytest.Config, path: Path):
        self.config, self.path, self.result, self.updated = config, path, None, None
        self.update = bool(config.getoption("--xbn-update"))

    def snapshot(self):
        from .guard.snapshot import SnapshotError, load_snapshot

        try:
            return load_snapshot(self.path)
        except SnapshotError as exc:
            raise pytest.UsageError(f"xbn: {exc}") from None

    def names(self) -> list[str]:
        if self.update and not self.path.exists():
            raise pytest.UsageError(f"xbn: {self.path}: no such snapshot; make the first one "
                                    "with `xbn snapshot SCENARIOS -f IDS -o FILE`")
        return [s.name for s in self.snapshot().scenarios]

    def checked(self):
        if self.result is None:
            from .guard.check import accept_documented, check

            result = check(self.snapshot(), timeout=DEFAULT_TIMEOUT)
            div = _divergences(self.config)
            if div.entries:
                accept_documented(result, div.entries)
                by_name = {s.name: s for s in result.snapshot.scenarios}
                div.used = True
                div.frameworks.update(f for f, c in result.frameworks.items()
                                      if c.status == "checked")
                div.rows += [(by_name[c.scenario], c.step, c.framework, c.quantity)
                             for c in result.accepted]
            self.result = result
        return self.result

    def rewrite(self) -> str:
        """Re-run the snapshot's scenarios (from their files where they still exist, else the
        stored definitions) through its frameworks and write the snapshot again."""
        if self.updated is None:
            from .execution.runner import run
            from .guard.snapshot import dumps, snapshot_document
            from .report import write_atomic
            from .scenario.loader import ScenarioError, load, resolve

            old = self.snapshot()
            scenarios = []
            for s in old.scenarios:  # paths are recorded relative to where the snapshot was made
                files = [f for f in (resolve(s.path), Path(self.config.rootpath, s.path))
                         if s.path != "<memory>" and f.is_file()]
                try:
                    scenarios.append(load(files[0]) if files else s)
                except ScenarioError as exc:
                    raise pytest.UsageError(f"xbn: {exc}") from None
            ids = [f for f, m in old.frameworks.items() if m.get("available")]
            result = run(scenarios, ids, timeout=DEFAULT_TIMEOUT)
            write_atomic(str(self.path), dumps(snapshot_document(result)))
            self.updated = f"xbn: rewrote {self.path} ({len(result.observations)} observations)"
        return self.updated


class BaselineFile(pytest.File):
    """The snapshot named by --xbn-baseline, collected as one item per scenario."""

    def collect(self):
        baseline: _Baseline = self.config._xbn_baseline
        for name in baseline.names():
            yield BaselineItem.from_parent(self, name=name)


class BaselineItem(pytest.Item):
    """One scenario of the baseline: passes when no observation of it changed (or every
    change is covered by your divergences file)."""

    def runtest(self) -> None:
        baseline: _Baseline = self.config._xbn_baseline
        if baseline.update:
            baseline.rewrite()
            return
        result = baseline.checked()
        changes = [c for c in result.changes if c.scenario == self.name]
        if changes:
            raise BaselineChanged(result, self.name, changes)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, BaselineChanged):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"xbn baseline: {self.name}"


class BaselineChanged(Exception):
    """What changed in one scenario since the baseline, readable in a test report."""

    def __init__(self, result, scenario: str, changes: list):
        self.result, self.scenario, self.changes = result, scenario, changes
        super().__init__(self.text())

    def text(self, limit: int = 20) -> str:
        lines = [f"xbn: scenario {self.scenario!r}: {len(self.changes)} observation(s) changed "
                 f"since {self.result.snapshot.file}"]
        for c in self.changes[:limit]:
            size = f", max_ulp {c.max_ulp:g}" if c.max_ulp is not None else ""
            lines.append(f"  step {c.step} {c.op:<11} {c.framework:<12} {c.quantity:<16} "
                         f"{c.kind}{size}: {c.explanation or 'unexplained'}")
        if len(self.changes) > limit:
            lines.append(f"  ... and {len(self.changes) - limit} more")
        moved = {c.framework for c in self.changes}
        for fid, fc in self.result.frameworks.items():
            if fid in moved and fc.new:
                lines.append(f"  {fid}: {fc.old.get('version')} in the baseline, "
                             f"{fc.new.get('version')} now")
        lines.append("  a deliberate upgrade? review, then `pytest --xbn-baseline "
                     f"{self.result.snapshot.file} --xbn-update` and commit the snapshot")
        return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """Stale entries of the user's divergences file (array-api-tests' report of xfails that
    pass), and where the baseline was rewritten."""
    div = getattr(config, "_xbn_divergences", None)
    baseline = getattr(config, "_xbn_baseline", None)
    stale = div.stale() if div is not None and div.entries and div.used else []
    if stale:
        terminalreporter.section("xbn: stale divergences")
        for d in stale:
            terminalreporter.write_line(f"{d['origin']} ({d['framework']}: "
                                        f"{', '.join(d['quantity'])}) matched nothing: remove it")
    if baseline is not None and baseline.updated:
        terminalreporter.write_line(baseline.updated)
