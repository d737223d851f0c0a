"""The snapshot file (``xbn snapshot`` writes it, ``xbn check`` reads it): its format, written
for review and read strictly.

A snapshot is strict JSON (never pickle: a baseline is reviewed in pull requests and must be
safe to load). It holds every observation of a run, each framework's versions, the xbn
version, the kind of machine, and each scenario's full definition (``Scenario.to_dict()``)
with its sha256 (``Scenario.digest``). The definition is stored, not referenced, because
``check`` must re-run exactly what was recorded even when the scenario file has since been
edited or deleted; the digest makes an edited definition detectable (tamper-evident, not a
signature: anyone can re-hash). Non-finite floats are the strings "NaN", "Infinity",
"-Infinity", as in ``xbn run --format json``.

Regenerating a snapshot on the same machine with the same versions gives the same bytes:
nothing time-varying (no timings, no dates) and no absolute path is written (a scenario's
``path`` is ``builtin:NAME`` or relative to the working directory, see
``xbn.scenario.loader.recorded_path``).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

from .._version import __version__
from ..common.jsonio import review_dumps, strict_loads
from ..common.strict import JSON_NAMES, Fields, StrictError, join, read_text
from ..scenario.loader import Scenario
from ..scenario.observation import FIELDS, OK, REP, STATUSES, STEP, Observation, with_rep
from ..schemas import validate

KIND = "xbn-snapshot"
SCHEMA = 1
# An observation's fields in their order, ``rep`` after ``step``; rep, origin: only where the run
# has them. No ``scale``: the guard compares each framework with its own run in the snapshot at
# that value's magnitude (``agreement`` would read a stored scale, and the verdicts would move).
OBSERVATION_KEYS = tuple(k for k in with_rep(list(FIELDS)) if k != "scale")
# What a snapshot keeps of a framework's run metadata (a run's timings are left out).
FRAMEWORK_META = ("available", "version", "versions", "notes", "error", "extra", "missing")


class SnapshotError(StrictError):
    """A snapshot that cannot be trusted or read: one line naming the file and the field."""


@dataclass
class Snapshot:
    file: str
    xbn_version: str
    frameworks: dict[str, dict]
    scenarios: list[Scenario]
    observations: list[Observation]
    platform: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# writing


def platform_info() -> dict:
    """Where the snapshot was made: bit-exact results are only expected on the same kind of
    machine, CPU included (its model and a digest of its feature flags: fused multiply-adds and
    vector widths change the float32 kernels' bits), as the result cache keys it."""
    from ..execution.cache import device

    cpu = device()
    return {"python": platform.python_version(), "system": platform.system(),
            "machine": platform.machine(), "cpu": cpu["cpu"], "cpu_flags": cpu["flags"]}


def same_cpu(recorded: dict) -> bool:
    """Whether a snapshot's ``platform`` names this machine's CPU (model and feature flags);
    False for a snapshot that does not say."""
    here = platform_info()
    return bool(recorded.get("cpu_flags")) and all(
        recorded.get(k) == here[k] for k in ("machine", "cpu", "cpu_flags"))


def snapshot_document(result) -> dict:
    """The snapshot of a ``runner.RunResult`` as plain data (see ``dumps``)."""
    from ..comparison.diffs import QUANTITY_ORDER

    frameworks = {fid: {k: meta[k] for k in FRAMEWORK_META if k in meta}
                  for fid, meta in result.frameworks.items()}
    scenario_pos = {s.name: i for i, s in enumerate(result.scenarios)}
    fw_pos = {fid: i for i, fid in enumerate(frameworks)}
    q_pos = {q: i for i, q in enumerate((STEP, *QUANTITY_ORDER))}
    observations = sorted(
        ({k: o.get(k) for k in OBSERVATION_KEYS
          if (k != "origin" or o.get(k)) and (k != REP or o.get(k) is not None)}
         for o in result.observations if o["framework"] in frameworks),
        key=lambda o: (scenario_pos.get(o["scenario"], len(scenario_pos)), o["step"],
                       o.get(REP, -1), fw_pos[o["framework"]],
                       q_pos.get(o["quantity"], len(q_pos))))
    return {
        "kind": KIND,
        "snapshot_schema": SCHEMA,
        "xbn_version": __version__,
        "platform": platform_info(),
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
    return review_dumps(document)


# ----------------------------------------------------------------------------------------
# reading and validating


class _Fields(Fields):
    """Type checks that fail with the file and the JSON path of the bad field."""

    error = SnapshotError


def load_snapshot(path: str | Path) -> Snapshot:
    """Read and strictly validate a snapshot file; any defect raises ``SnapshotError``."""
    file = str(path)
    text = read_text(path, SnapshotError)
    try:
        data = strict_loads(text)
    except ValueError as exc:  # json.JSONDecodeError is one
        raise SnapshotError(file, f"not valid JSON: {exc}") from None
    snapshot = parse_snapshot(data, file)
    # the published schema (``xbn schema snapshot``), after the reader's precise messages and
    # before anything re-runs
    validate("snapshot", data, file, SnapshotError)
    return snapshot


def parse_snapshot(data, file: str = "<memory>") -> Snapshot:
    """Validate a decoded snapshot document and build a ``Snapshot``."""
    f = _Fields(file)
    if not isinstance(data, dict):
        f.fail(f"expected a JSON object, got {JSON_NAMES.get(type(data), 'something else')}")
    if "kind" not in data:
        f.fail(f"not an xbn snapshot (no \"kind\": \"{KIND}\" field)")
    if data["kind"] != KIND:
        f.fail(f"not an xbn snapshot: kind is {data['kind']!r}, expected {KIND!r}", "kind")
    schema = f.get(data, "snapshot_schema", (int,))
    if schema != SCHEMA:
        f.fail(f"unsupported snapshot_schema {schema}; this xbn ({__version__}) reads schema "
               f"{SCHEMA}: regenerate it with `xbn snapshot`", "snapshot_schema")
    xbn_version = f.get(data, "xbn_version", (str,))
    plat = f.get(data, "platform", (dict,), optional=True) or {}
    frameworks = _parse_frameworks(f, f.get(data, "frameworks", (dict,)))
    scenarios = _parse_scenarios(f, f.get(data, "scenarios", (list,)))
    observations = _parse_observations(f, f.get(data, "observations", (list,)),
                                       {s.name: s for s in scenarios}, frameworks)
    return Snapshot(file, xbn_version, frameworks, scenarios, observations, plat)


def _parse_frameworks(f: _Fields, raw: dict) -> dict[str, dict]:
    if not raw:
        f.fail("empty: the snapshot ran no framework", "frameworks")
    out = {}
    for fid, meta in raw.items():
        where = f"frameworks.{fid}"
        if not isinstance(meta, dict):
            f.fail(f"expected an object, got {JSON_NAMES.get(type(meta), '?')}", where)
        f.get(meta, "available", (bool,), where)
        f.get(meta, "version", (str,), where, optional=True)
        versions = f.get(meta, "versions", (dict,), where, optional=True) or {}
        for pkg, v in versions.items():
            if not isinstance(v, str):
                f.fail("expected a string", f"{where}.versions.{pkg}")
        out[fid] = dict(meta)
    return out


def _parse_scenarios(f: _Fields, raw: list) -> list[Scenario]:
    if not raw:
        f.fail("empty: the snapshot holds no scenario", "scenarios")
    scenarios: list[Scenario] = []
    for i, entry in enumerate(raw):
        where = f"scenarios[{i}]"
        if not isinstance(entry, dict):
            f.fail("expected an object", where)
        name = f.get(entry, "name", (str,), where)
        digest = f.get(entry, "sha256", (str,), where)
        definition = _restore_expect(f, f.get(entry, "definition", (dict,), where), where)
        if definition_digest(definition) != digest:
            f.fail(f"scenario {name!r}: the stored definition does not match its sha256 "
                   "(the snapshot was edited or corrupted); regenerate it with `xbn snapshot`",
                   where)
        try:
            scenario = Scenario.from_dict(definition)
        except SnapshotError:
            raise
        except Exception as exc:  # from_dict trusts its input: any defect lands here
            f.fail(f"malformed scenario definition ({type(exc).__name__}: {exc})",
                   f"{where}.definition")
        if scenario.name != name:
            f.fail(f"{scenario.name!r} does not match the entry's name {name!r}",
                   f"{where}.definition.name")
        if name in {s.name for s in scenarios}:
            f.fail(f"scenario {name!r} appears twice", where)
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
        f.fail("expected a list", f"{where}.definition.steps")
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
                        frameworks: dict[str, dict]) -> list[Observation]:
    seen: set[tuple] = set()
    out = []
    for i, o in enumerate(raw):
        where = f"observations[{i}]"
        if not isinstance(o, dict):
            f.fail("expected an object", where)
        name = f.get(o, "scenario", (str,), where)
        if name not in scenarios:
            f.fail(f"unknown scenario {name!r}", f"{where}.scenario")
        step = f.get(o, "step", (int,), where)
        if not 0 <= step < len(scenarios[name].steps):
            f.fail(f"scenario {name!r} has no step {step}", f"{where}.step")
        fid = f.get(o, "framework", (str,), where)
        if fid not in frameworks:
            f.fail(f"{fid!r} is not in the snapshot's frameworks", f"{where}.framework")
        status = f.choice(f.get(o, "status", (str,), where), STATUSES, join(where, "status"))
        rec: Observation = {
            "scenario": name, "step": step, "op": f.get(o, "op", (str,), where),
            "framework": fid, "quantity": f.get(o, "quantity", (str,), where),
            "status": status, "value": None,
            "dtype": f.get(o, "dtype", (str,), where, optional=True),
            "message": f.get(o, "message", (str,), where, optional=True),
            "origin": f.get(o, "origin", (str,), where, optional=True)}
        if "value" not in o:
            f.fail(f.missing, f"{where}.value")
        if o["value"] is not None:
            rec["value"] = f.numbers(o["value"], f"{where}.value")
        elif status == OK and rec["quantity"] != STEP:
            f.fail("an ok observation needs a value", f"{where}.value")
        rep = f.get(o, REP, (int,), where, optional=True)
        if rep is not None:  # a traced step's repetition
            s = scenarios[name].steps[step]
            if not s.trace or not 0 <= rep < s.repeat:
                f.fail(f"step {step} of {name!r} records no repetition {rep}", f"{where}.rep")
            rec[REP] = rep
        key = (name, step, fid, rec["quantity"], rep)
        if key in seen:
            f.fail(f"duplicate observation {key}", where)
        seen.add(key)
        out.append(rec)
    return out
