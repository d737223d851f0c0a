"""The upgrade guard: record what BatchNorm did (``xbn snapshot``), and after an upgrade re-run
it and say what changed, where and why (``xbn check``).

A snapshot is strict JSON (never pickle: a baseline is reviewed in pull requests and must be
safe to load). It holds every observation of a run, each framework's versions, the xbn
version, and each scenario's full definition (``Scenario.to_dict()``) with its sha256
(``Scenario.digest``). The definition is stored, not referenced, because ``check`` must re-run
exactly what was recorded even when the scenario file has since been edited or deleted; the
digest makes an edited definition detectable (tamper-evident, not a signature: anyone can
re-hash). Non-finite floats are the strings "NaN", "Infinity", "-Infinity", as in
``xbn run --format json``.

``check`` compares each new observation with the old one of the same scenario, step,
framework and quantity. The default tolerance is exact: the same versions on the same machine
must reproduce every bit, so anything else is worth a look. ``k > 0`` uses
``compare.measure``'s rule (k * eps(dtype) * largest magnitude of the old array).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .scenario import Scenario

KIND = "xbn-snapshot"
SCHEMA = 1
STATUSES = ("ok", "error", "n/a")
OBSERVATION_KEYS = ("scenario", "step", "op", "framework", "quantity", "status", "value",
                    "dtype", "message")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FRAMEWORK_META = ("available", "version", "versions", "notes", "error", "extra", "missing")


class SnapshotError(ValueError):
    """A snapshot that cannot be trusted or read: one line naming the file and the field."""

    def __init__(self, file: str, message: str, where: str | None = None):
        self.file, self.where, self.message = file, where, message
        super().__init__(f"{file}: {where + ': ' if where else ''}{message}")


class CheckError(ValueError):
    """A check that cannot be run as asked (e.g. a framework id the snapshot does not hold)."""


@dataclass
class Snapshot:
    file: str
    xbn_version: str
    frameworks: dict[str, dict]
    scenarios: list[Scenario]
    observations: list[dict]
    platform: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# writing


def _platform() -> dict:
    """Where the snapshot was made: bit-exact results are only expected on the same kind."""
    return {"python": platform.python_version(), "system": platform.system(),
            "machine": platform.machine()}


def snapshot_document(result) -> dict:
    """The snapshot of a ``runner.RunResult`` as plain data (see ``dumps``)."""
    from .compare import QUANTITY_ORDER

    frameworks = {fid: {k: meta[k] for k in _FRAMEWORK_META if k in meta}
                  for fid, meta in result.frameworks.items()}
    scenario_pos = {s.name: i for i, s in enumerate(result.scenarios)}
    fw_pos = {fid: i for i, fid in enumerate(frameworks)}
    q_pos = {q: i for i, q in enumerate(("step", *QUANTITY_ORDER))}
    observations = sorted(
        ({k: o.get(k) for k in OBSERVATION_KEYS} for o in result.observations
         if o["framework"] in frameworks),
        key=lambda o: (scenario_pos.get(o["scenario"], len(scenario_pos)), o["step"],
                       fw_pos[o["framework"]], q_pos.get(o["quantity"], len(q_pos))))
    return {
        "kind": KIND,
        "snapshot_schema": SCHEMA,
        "xbn_version": __version__,
        "platform": _platform(),
        "frameworks": frameworks,
        "scenarios": [{"name": s.name, "sha256": s.digest, "definition": s.to_dict()}
                      for s in result.scenarios],
        "observations": observations,
    }


def dumps(document: dict) -> str:
    """Strict JSON text of a snapshot (or check) document, non-finite floats as strings.

    Laid out for review in a pull request: one line per observation and per array, so that
    a regenerated baseline's diff shows exactly the observations that moved.
    """
    from .report.json_out import _clean

    return _layout(_clean(document), 0) + "\n"


def _flat(value) -> bool:
    """No object inside (an array, or a record of scalars and arrays): fits on one line."""
    if isinstance(value, dict):
        return all(_flat(v) and not isinstance(v, dict) for v in value.values())
    if isinstance(value, list):
        return all(_flat(v) and not isinstance(v, dict) for v in value)
    return True


def _layout(value, level: int) -> str:
    if not isinstance(value, (dict, list)) or not value or \
            (isinstance(value, list) and _flat(value)):
        return json.dumps(value, allow_nan=False)
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(value, list):
        items = [json.dumps(v, allow_nan=False) if _flat(v) else _layout(v, level + 1)
                 for v in value]
        return "[\n" + ",\n".join(inner + i for i in items) + "\n" + pad + "]"
    items = [f"{json.dumps(k)}: {_layout(v, level + 1)}" for k, v in value.items()]
    return "{\n" + ",\n".join(inner + i for i in items) + "\n" + pad + "}"


# ----------------------------------------------------------------------------------------
# reading and validating


def _reject_constant(name: str):
    raise ValueError(f"{name} is not strict JSON (xbn writes it as the string \"{name}\")")


def load_snapshot(path: str | Path) -> Snapshot:
    """Read and strictly validate a snapshot file; any defect raises ``SnapshotError``."""
    file = str(path)
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(file, "no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotError(file, f"cannot read: {exc}") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise SnapshotError(file, f"not valid JSON: {exc}") from None
    except ValueError as exc:
        raise SnapshotError(file, f"not valid JSON: {exc}") from None
    return parse_snapshot(data, file)


class _Fields:
    """Type checks that fail with the file and the JSON path of the bad field."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, where: str | None, message: str):
        raise SnapshotError(self.file, message, where)

    def get(self, table: dict, key: str, kinds: tuple, where: str, optional=False):
        if key not in table:
            if optional:
                return None
            self.fail(f"{where}.{key}" if where else key, "required field is missing")
        value = table[key]
        if value is None and optional:
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
            self.fail(f"{where}.{key}" if where else key,
                      f"expected {names}, got {_JSON_NAMES.get(type(value), type(value).__name__)}")
        return value

    def numbers(self, value, where: str):
        """A number or nested list of numbers; "NaN"/"Infinity" strings become floats."""
        if isinstance(value, list):
            return [self.numbers(v, where) for v in value]
        if isinstance(value, str) and value in _NONFINITE:
            return _NONFINITE[value]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(where, f"expected numbers, got {value!r:.40}")
        return value


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer",
               float: "a number", bool: "true or false", type(None): "null"}


def parse_snapshot(data, file: str = "<memory>") -> Snapshot:
    """Validate a decoded snapshot document and build a ``Snapshot``."""
    f = _Fields(file)
    if not isinstance(data, dict):
        f.fail(None, f"expected a JSON object, got {_JSON_NAMES.get(type(data), 'something else')}")
    if "kind" not in data:
        f.fail(None, f"not an xbn snapshot (no \"kind\": \"{KIND}\" field)")
    if data["kind"] != KIND:
        f.fail("kind", f"not an xbn snapshot: kind is {data['kind']!r}, expected {KIND!r}")
    schema = f.get(data, "snapshot_schema", (int,), "")
    if schema != SCHEMA:
        f.fail("snapshot_schema", f"unsupported snapshot_schema {schema}; this xbn "
               f"({__version__}) reads schema {SCHEMA}: regenerate it with `xbn snapshot`")
    xbn_version = f.get(data, "xbn_version", (str,), "")
    plat = f.get(data, "platform", (dict,), "", optional=True) or {}
    frameworks = _parse_frameworks(f, f.get(data, "frameworks", (dict,), ""))
    scenarios = _parse_scenarios(f, f.get(data, "scenarios", (list,), ""))
    observations = _parse_observations(f, f.get(data, "observations", (list,), ""),
                                       {s.name: s for s in scenarios}, frameworks)
    return Snapshot(file, xbn_version, frameworks, scenarios, observations, plat)


def _parse_frameworks(f: _Fields, raw: dict) -> dict[str, dict]:
    if not raw:
        f.fail("frameworks", "empty: the snapshot ran no framework")
    out = {}
    for fid, meta in raw.items():
        where = f"frameworks.{fid}"
        if not isinstance(meta, dict):
            f.fail(where, f"expected an object, got {_JSON_NAMES.get(type(meta), '?')}")
        f.get(meta, "available", (bool,), where)
        f.get(meta, "version", (str,), where, optional=True)
        versions = f.get(meta, "versions", (dict,), where, optional=True) or {}
        for pkg, v in versions.items():
            if not isinstance(v, str):
                f.fail(f"{where}.versions.{pkg}", "expected a string")
        out[fid] = dict(meta)
    return out


def _parse_scenarios(f: _Fields, raw: list) -> list[Scenario]:
    if not raw:
        f.fail("scenarios", "empty: the snapshot holds no scenario")
    scenarios: list[Scenario] = []
    for i, entry in enumerate(raw):
        where = f"scenarios[{i}]"
        if not isinstance(entry, dict):
            f.fail(where, "expected an object")
        name = f.get(entry, "name", (str,), where)
        digest = f.get(entry, "sha256", (str,), where)
        definition = _restore_expect(f, f.get(entry, "definition", (dict,), where), where)
        if definition_digest(definition) != digest:
            f.fail(where, f"scenario {name!r}: the stored definition does not match its sha256 "
                   "(the snapshot was edited or corrupted); regenerate it with `xbn snapshot`")
        try:
            scenario = Scenario.from_dict(definition)
        except SnapshotError:
            raise
        except Exception as exc:  # from_dict trusts its input: any defect lands here
            f.fail(f"{where}.definition", f"malformed scenario definition "
                   f"({type(exc).__name__}: {exc})")
        if scenario.name != name:
            f.fail(f"{where}.definition.name",
                   f"{scenario.name!r} does not match the entry's name {name!r}")
        if name in {s.name for s in scenarios}:
            f.fail(where, f"scenario {name!r} appears twice")
        scenarios.append(scenario)
    return scenarios


def definition_digest(definition: dict) -> str:
    """sha256 of a stored definition, computed the way ``Scenario.digest`` is (so the two agree
    when the snapshot is written) but from the stored data itself, so that a later xbn whose
    Scenario gained a field with a default still accepts an untouched older snapshot."""
    body = {k: v for k, v in definition.items() if k != "path"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _restore_expect(f: _Fields, definition: dict, where: str) -> dict:
    """Published values may be non-finite: decode their strings back to floats."""
    steps = definition.get("steps")
    if not isinstance(steps, list):
        f.fail(f"{where}.definition.steps", "expected a list")
    restored = []
    for i, step in enumerate(steps):
        if isinstance(step, dict) and isinstance(step.get("expect"), dict):
            expect = {q: v if q == "source" else
                      f.numbers(v, f"{where}.definition.steps[{i}].expect.{q}")
                      for q, v in step["expect"].items()}
            step = {**step, "expect": expect}
        restored.append(step)
    return {**definition, "steps": restored}


def _parse_observations(f: _Fields, raw: list, scenarios: dict[str, Scenario],
                        frameworks: dict[str, dict]) -> list[dict]:
    seen: set[tuple] = set()
    out = []
    for i, o in enumerate(raw):
        where = f"observations[{i}]"
        if not isinstance(o, dict):
            f.fail(where, "expected an object")
        name = f.get(o, "scenario", (str,), where)
        if name not in scenarios:
            f.fail(f"{where}.scenario", f"unknown scenario {name!r}")
        step = f.get(o, "step", (int,), where)
        if not 0 <= step < len(scenarios[name].steps):
            f.fail(f"{where}.step", f"scenario {name!r} has no step {step}")
        fid = f.get(o, "framework", (str,), where)
        if fid not in frameworks:
            f.fail(f"{where}.framework", f"{fid!r} is not in the snapshot's frameworks")
        status = f.get(o, "status", (str,), where)
        if status not in STATUSES:
            f.fail(f"{where}.status", f"must be one of {', '.join(STATUSES)}; got {status!r}")
        rec = {"scenario": name, "step": step, "op": f.get(o, "op", (str,), where),
               "framework": fid, "quantity": f.get(o, "quantity", (str,), where),
               "status": status, "value": None,
               "dtype": f.get(o, "dtype", (str,), where, optional=True),
               "message": f.get(o, "message", (str,), where, optional=True)}
        if "value" not in o:
            f.fail(f"{where}.value", "required field is missing")
        if o["value"] is not None:
            rec["value"] = f.numbers(o["value"], f"{where}.value")
        elif status == "ok" and rec["quantity"] != "step":
            f.fail(f"{where}.value", "an ok observation needs a value")
        key = (name, step, fid, rec["quantity"])
        if key in seen:
            f.fail(where, f"duplicate observation {key}")
        seen.add(key)
        out.append(rec)
    return out


# ----------------------------------------------------------------------------------------
# checking


@dataclass
class Change:
    """One observation that is not what the snapshot recorded."""

    scenario: str
    step: int
    op: str
    framework: str
    quantity: str
    kind: str  # value | dtype | shape | status | missing | new
    old: dict | None
    new: dict | None
    max_abs: float | None = None
    max_ulp: float | None = None
    tolerance: float | None = None
    explanation: str = ""


@dataclass
class FrameworkCheck:
    id: str
    status: str  # checked | skipped
    old: dict
    new: dict | None = None
    reason: str | None = None


@dataclass
class CheckResult:
    snapshot: Snapshot
    k: float
    frameworks: dict[str, FrameworkCheck]
    compared: int
    changes: list[Change]
    cases: list[tuple[str, str, int]]  # (scenario, framework, observations compared)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def plan(snapshot: Snapshot, wanted: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Frameworks to re-run now, and those skipped with the reason."""
    from .adapters import FRAMEWORKS, availability

    if wanted:
        absent = [w for w in wanted if w not in snapshot.frameworks]
        if absent:
            raise CheckError(f"framework(s) {', '.join(absent)} not in the snapshot "
                             f"(it has: {', '.join(snapshot.frameworks)})")
    avail = availability()
    runnable, skipped = [], {}
    for fid, meta in snapshot.frameworks.items():
        if wanted and fid not in wanted:
            continue
        if not meta.get("available"):
            skipped[fid] = "was not installed when the snapshot was made"
        elif fid not in FRAMEWORKS:
            skipped[fid] = f"unknown to xbn {__version__}"
        elif not avail[fid]["available"]:
            skipped[fid] = (f"not installed now (pip install \"xbn[{avail[fid]['extra']}]\"; "
                            f"missing {', '.join(avail[fid]['missing'])})")
        else:
            runnable.append(fid)
    return runnable, skipped


def check(snapshot: Snapshot, frameworks: list[str] | None = None, k: float = 0.0, *,
          timeout: float = 1800.0, jobs: int | None = None,
          progress: Callable[[str], None] | None = None) -> CheckResult:
    """Re-run the snapshot's scenarios through its installed frameworks and compare."""
    from .runner import run

    runnable, skipped = plan(snapshot, frameworks)
    if not runnable:
        raise CheckError("nothing to check: none of the snapshot's frameworks "
                         f"({', '.join(snapshot.frameworks)}) can run here")
    result = run(snapshot.scenarios, runnable, timeout=timeout, jobs=jobs, progress=progress)
    return compare_run(snapshot, result.observations, result.frameworks, skipped, k)


def compare_run(snapshot: Snapshot, observations: list[dict], now: dict[str, dict],
                skipped: dict[str, str], k: float = 0.0) -> CheckResult:
    """Compare a new run's observations (of the frameworks in ``now``) with the snapshot's."""
    from .guard_explain import Explainer

    checked = [fid for fid in snapshot.frameworks if fid in now]
    old = {_key(o): o for o in snapshot.observations if o["framework"] in checked}
    new = {_key(o): o for o in observations if o["framework"] in checked}
    changes, counts = [], {}
    for key in [*old, *(key for key in new if key not in old)]:
        counts[(key[0], key[2])] = counts.get((key[0], key[2]), 0) + 1
        change = classify(old.get(key), new.get(key), k)
        if change is not None:
            changes.append(change)
    failed = {fid: now[fid]["error"] for fid in checked if now[fid].get("error")}
    failed_steps = {(o["scenario"], o["step"], o["framework"]): o
                    for o in reversed(observations) if o["status"] != "ok"}
    explainer = Explainer(snapshot.scenarios, failed, failed_steps)
    for change in changes:
        change.explanation = explainer.explain(change)
    fw = {fid: FrameworkCheck(fid, "checked", snapshot.frameworks[fid], now[fid])
          for fid in checked}
    fw.update({fid: FrameworkCheck(fid, "skipped", snapshot.frameworks[fid], reason=why)
               for fid, why in skipped.items()})
    fw = {fid: fw[fid] for fid in snapshot.frameworks if fid in fw}
    cases = [(s.name, fid, counts.get((s.name, fid), 0)) for s in snapshot.scenarios
             for fid in fw]
    warnings = [f"{fid}: the worker failed ({why}); its missing rows are listed as changes"
                for fid, why in failed.items()]
    return CheckResult(snapshot, k, fw, len(old.keys() | new.keys()), changes, cases,
                       _warnings(snapshot, fw) + warnings)


def _key(o: dict) -> tuple:
    return (o["scenario"], o["step"], o["framework"], o["quantity"])


def _exception_type(message: str | None) -> str:
    return (message or "").split(":")[0].strip()


def classify(old: dict | None, new: dict | None, k: float = 0.0) -> Change | None:
    """The change between two observations of the same key, or None when unchanged."""
    import numpy as np

    from .compare import _less_precise, measure

    some = old or new
    assert some is not None

    def change(kind: str, **extra) -> Change:
        return Change(some["scenario"], some["step"], some["op"], some["framework"],
                      some["quantity"], kind, _side(old), _side(new), **extra)

    if new is None:
        return change("missing")
    if old is None:
        return change("new")
    if old["status"] != new["status"]:
        return change("status")
    if old["status"] == "error" and _exception_type(old["message"]) != \
            _exception_type(new["message"]):
        return change("status")
    if old["status"] != "ok" or old["value"] is None or new["value"] is None:
        return None
    dtype = _less_precise(old["dtype"], new["dtype"])
    with np.errstate(all="ignore"):  # inf - inf and casts of inf are answers here, not news
        m = measure(new["value"], old["value"], dtype, k)
    numbers = {"max_abs": m["max_abs"], "max_ulp": m["max_ulp"], "tolerance": m["tolerance"]}
    if m["note"]:
        return change("shape")
    if old["dtype"] != new["dtype"]:
        return change("dtype", **numbers)
    if not m["within"]:
        return change("value", **numbers)
    return None


def _side(o: dict | None) -> dict | None:
    if o is None:
        return None
    return {k: o.get(k) for k in ("status", "value", "dtype", "message")}


def _warnings(snapshot: Snapshot, fw: dict[str, FrameworkCheck]) -> list[str]:
    out = [f"{fid} skipped: {c.reason}" for fid, c in fw.items() if c.status == "skipped"]
    here = _platform()
    there = snapshot.platform
    if there and (there.get("system"), there.get("machine")) != (here["system"],
                                                                 here["machine"]):
        out.append(f"the snapshot was made on {there.get('system')} {there.get('machine')}, "
                   f"this is {here['system']} {here['machine']}: float32 results need not be "
                   "bit-identical across platforms")
    if snapshot.xbn_version != __version__:
        out.append(f"the snapshot was made with xbn {snapshot.xbn_version}, this is xbn "
                   f"{__version__}: adapter changes may show as changes")
    out += _edited_scenarios(snapshot)
    return out


def _edited_scenarios(snapshot: Snapshot) -> list[str]:
    """A scenario whose file has changed since: the stored definition is what gets checked."""
    from .scenario import ScenarioError, load

    out = []
    for s in snapshot.scenarios:
        if s.path == "<memory>" or not Path(s.path).is_file():
            continue
        try:
            current = load(s.path)
        except ScenarioError:
            continue
        if current.digest != s.digest:
            out.append(f"{s.path} has changed since the snapshot; checked the snapshot's copy "
                       f"of {s.name!r}")
    return out


def versions_text(meta: dict | None) -> str:
    """'keras 3.15.1, tensorflow 2.21.0' from a framework's metadata."""
    if not meta:
        return "-"
    versions = meta.get("versions") or {}
    if versions:
        return ", ".join(f"{pkg} {v}" for pkg, v in versions.items())
    return meta.get("version") or "-"


def version_change(old: dict | None, new: dict | None) -> str:
    """Only the packages whose versions differ ('keras 3.0.4 -> 3.15.1'), or 'same (...)'."""
    o = (old or {}).get("versions") or {}
    n = (new or {}).get("versions") or {}
    if not o and not n:
        o = {"version": (old or {}).get("version")}
        n = {"version": (new or {}).get("version")}
    moved = [f"{pkg} {o.get(pkg) or '-'} -> {n.get(pkg) or '-'}"
             for pkg in dict.fromkeys([*o, *n]) if o.get(pkg) != n.get(pkg)]
    return ", ".join(moved) if moved else f"same ({versions_text(old)})"

