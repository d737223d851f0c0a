"""The version matrix's plan (``xbn matrix plan VERSIONS.toml``): which version sets to run and
what each runs, written once as engine-neutral JSON so that every engine (``xbn matrix run
--engine local|ray``, or a GitHub Actions matrix through ``--format github``) runs the same cells.

A *cell* is one pinned requirement set (``keras==3.0.2``) with the scenarios and framework ids
it runs; its id (``keras-3.0.2``) is made from the pins alone, so it is stable across plans and
names the cell's snapshot (``snapshot-keras-3.0.2.json``), which is what lets a run resume.
One cell per version set, never per scenario: ``xbn matrix`` reads one snapshot as one release,
and a scenario adds milliseconds to a cell whose cost is importing its frameworks.

Versions are taken as listed, or resolved from the index the user's own pip sees
(``pip index versions``: only releases installable on this Python and platform) within a range,
optionally the newest N. A listed version that index does not offer, and any combination an
``[[exclude]]`` names, is dropped with its reason, which the plan keeps.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

from ..common.strict import TOML_NAMES, Fields, StrictError, closest, read_text

PLAN_KIND = "xbn-matrix-plan"
PLAN_SCHEMA = 1
TOP_KEYS = {"schema", "name", "frameworks", "scenarios", "packages", "exclude"}
PACKAGE_KEYS = {"versions", "range", "last", "prereleases"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PlanError(StrictError):
    """A VERSIONS.toml or plan file that cannot be used: one line naming file, key and why."""


class _Fields(Fields):
    error = PlanError
    names = TOML_NAMES
    wanted = TOML_NAMES


def cell_id(pins: dict[str, str]) -> str:
    """``{"keras": "3.0.2", "torch": "2.1.0"}`` -> ``keras-3.0.2+torch-2.1.0`` (names sorted)."""
    return "+".join(f"{name}-{version}" for name, version in sorted(pins.items()))


def index_versions(package: str) -> list[str]:
    """The releases of ``package`` the running interpreter's pip can install, oldest first."""
    from packaging.version import InvalidVersion, Version

    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", package],
                          capture_output=True, text=True, timeout=300, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("Available versions:")),
                None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PlanError("pip index versions", f"{package}: {tail}")
    found = []
    for text in line.split(":", 1)[1].split(","):
        try:
            found.append(Version(text.strip()))
        except InvalidVersion:
            continue
    return [str(v) for v in sorted(found)]


def _versions(name: str, spec: dict, f: _Fields, offline: bool, dropped: list) -> list[str]:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import Version

    for key in spec:
        if key not in PACKAGE_KEYS:
            f.fail(f"unknown key{closest(key, PACKAGE_KEYS)}", key)
    listed, rng = spec.get("versions"), spec.get("range")
    if (listed is None) == (rng is None):
        f.fail("give either versions = [...] or range = \"...\"")
    if listed is not None:
        if not isinstance(listed, list) or not listed or \
                not all(isinstance(v, str) and v for v in listed):
            f.fail("expected a non-empty list of version strings", "versions")
        if offline:
            return list(listed)
        known = set(index_versions(name))
        kept = []
        for v in listed:
            if v in known:
                kept.append(v)
            else:
                dropped.append({"id": cell_id({name: v}), "reason": f"{name} {v} is not on the "
                                f"index pip sees for Python {sys.version_info[0]}."
                                f"{sys.version_info[1]} on this platform"})
        return kept
    if not isinstance(rng, str):
        f.fail("expected a string such as \">=3.0,<3.1\"", "range")
    if offline:
        f.fail("a range needs the package index (drop --offline or list versions)", "range")
    try:
        spec_set = SpecifierSet(rng)
    except InvalidSpecifier:
        f.fail(f"not a version specifier: {rng!r}", "range")
    pre = spec.get("prereleases", False)
    if not isinstance(pre, bool):
        f.fail("expected true or false", "prereleases")
    found = [v for v in index_versions(name)
             if spec_set.contains(Version(v), prereleases=pre)]
    last = spec.get("last")
    if last is not None:
        if not isinstance(last, int) or isinstance(last, bool) or last < 1:
            f.fail("expected a positive integer", "last")
        found = found[-last:]
    if not found:
        f.fail(f"no release of {name} on the index matches {rng!r}", "range")
    return found


def _excluded(pins: dict[str, str], rules: list[dict]) -> str | None:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    for rule in rules:
        specs = {k: v for k, v in rule.items() if k != "reason"}
        if all(k in pins and SpecifierSet(s).contains(Version(pins[k]), prereleases=True)
               for k, s in specs.items()):
            return rule["reason"]
    return None


def _scenarios(entries, f: _Fields, base: Path) -> list[str]:
    """Scenario files resolved against the VERSIONS.toml's folder and written relative to the
    current directory (where cells run; in CI the checkout); built-in names as given."""
    import os

    if not isinstance(entries, list) or not entries or not all(isinstance(s, str) and s
                                                               for s in entries):
        f.fail("expected a non-empty list of scenario files or built-in names", "scenarios")
    out = []
    for s in entries:
        if not s.endswith(".toml"):
            out.append(s)
            continue
        path = (base / s).resolve()
        if not path.is_file():
            f.fail(f"no such scenario file: {path}", "scenarios")
        rel = os.path.relpath(path)
        out.append(path.as_posix() if rel.startswith("..") else Path(rel).as_posix())
    return out


def make_plan(path: str | Path, offline: bool = False) -> dict:
    """Read VERSIONS.toml and build the plan document (``PLAN_KIND``)."""
    import tomllib

    file = str(path)
    f = _Fields(file)
    try:
        data = tomllib.loads(read_text(path, PlanError))
    except tomllib.TOMLDecodeError as exc:
        f.fail(f"not valid TOML: {exc}")
    for key in data:
        if key not in TOP_KEYS:
            f.fail(f"unknown key{closest(key, TOP_KEYS)}", key)
    if data.get("schema") != 1:
        f.fail("expected schema = 1", "schema")
    name = data.get("name", Path(file).stem)
    if not isinstance(name, str) or not NAME.match(name):
        f.fail("expected a name of letters, digits, '.', '_' or '-'", "name")
    frameworks = data.get("frameworks")
    if not isinstance(frameworks, list) or not frameworks or \
            not all(isinstance(x, str) and x for x in frameworks):
        f.fail("expected a non-empty list of framework ids", "frameworks")
    from ..frameworks.devices import base_id
    from ..frameworks.registry import FRAMEWORK_IDS

    for fid in frameworks:
        if base_id(fid) not in FRAMEWORK_IDS:
            f.fail(f"unknown framework id {fid!r}{closest(base_id(fid), FRAMEWORK_IDS)}",
                   "frameworks")
    scenarios = _scenarios(data.get("scenarios"), f, Path(file).parent)
    packages = data.get("packages")
    if not isinstance(packages, dict) or not packages:
        f.fail("expected a [packages.NAME] table for at least one package", "packages")
    dropped: list[dict] = []
    axes = {}
    for pkg, spec in packages.items():
        if not NAME.match(pkg) or not isinstance(spec, dict):
            f.fail("expected a table with versions or range", f"packages.{pkg}")
        axes[pkg] = _versions(pkg, spec, f.within(f"packages.{pkg}"), offline, dropped)
    rules = data.get("exclude", [])
    if not isinstance(rules, list):
        f.fail("expected [[exclude]] tables", "exclude")
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or not isinstance(rule.get("reason"), str) or \
                len(rule) < 2 or any(k not in packages for k in rule if k != "reason"):
            f.fail("expected package = \"specifier\" pairs of listed packages and a reason",
                   f"exclude[{i}]")
    cells = []
    for combo in itertools.product(*axes.values()):
        pins = dict(zip(axes, combo, strict=True))
        reason = _excluded(pins, rules)
        if reason:
            dropped.append({"id": cell_id(pins), "reason": reason})
            continue
        cells.append({"id": cell_id(pins),
                      "requirements": [f"{p}=={v}" for p, v in sorted(pins.items())],
                      "frameworks": list(frameworks), "scenarios": scenarios})
    return {"kind": PLAN_KIND, "plan_schema": PLAN_SCHEMA, "name": name, "source": file,
            "cells": cells, "dropped": dropped}


def github_matrix(plan: dict) -> str:
    """The plan as a GitHub Actions ``strategy.matrix`` (``fromJson``): one include per cell,
    its fields as strings ready for a shell line."""
    include = [{"id": c["id"], "requirements": " ".join(c["requirements"]),
                "frameworks": ",".join(c["frameworks"]), "scenarios": " ".join(c["scenarios"])}
               for c in plan["cells"]]
    return json.dumps({"include": include}, separators=(",", ":"))


def load_plan(path: str | Path) -> dict:
    """Read a plan written by ``make_plan`` (JSON); a defect raises ``PlanError``."""
    file = str(path)
    f = _Fields(file)
    text = read_text(path, PlanError)
    try:
        data = json.loads(text)
    except ValueError as exc:
        f.fail(f"not valid JSON: {exc}")
    if not isinstance(data, dict) or data.get("kind") != PLAN_KIND:
        f.fail(f"not an xbn matrix plan (expected \"kind\": \"{PLAN_KIND}\"; make one with "
               "`xbn matrix plan VERSIONS.toml`)")
    if data.get("plan_schema") != PLAN_SCHEMA:
        f.fail(f"plan_schema {data.get('plan_schema')!r} is not {PLAN_SCHEMA}")
    cells = data.get("cells")
    if not isinstance(cells, list):
        f.fail("expected a list", "cells")
    seen = set()
    for i, c in enumerate(cells):
        ok = isinstance(c, dict) and isinstance(c.get("id"), str) and NAME.match(
            c["id"].replace("+", "-")) and all(
            isinstance(c.get(k), list) and c[k] and all(isinstance(x, str) for x in c[k])
            for k in ("requirements", "frameworks", "scenarios"))
        if not ok:
            f.fail("expected id, requirements, frameworks and scenarios", f"cells[{i}]")
        if c["id"] in seen:
            f.fail(f"duplicate cell id {c['id']!r}", f"cells[{i}].id")
        seen.add(c["id"])
    return data
