"""The upgrade guard: after an upgrade, re-run what a snapshot recorded (``xbn check``) and
say what changed, where and why. The snapshot file itself (writing, strict reading) is
``xbn.guard.snapshot``; the explanation of a change is ``xbn.explain.changes``.

``check`` compares each new observation with the old one of the same scenario, step,
framework and quantity, by ``compare.agreement`` with the old observation as the reference.
The default tolerance is exact: the same versions on the same machine must reproduce every
bit, so anything else is worth a look. ``k > 0`` uses ``compare.measure``'s rule
(k * eps(dtype) * largest magnitude of the old array).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .._version import __version__
from ..comparison.diffs import DEFAULT_K, agreement
from ..scenario.observation import OK
from .snapshot import Snapshot, platform_info


class CheckError(ValueError):
    """A check that cannot be run as asked (e.g. a framework id the snapshot does not hold)."""


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
    rep: int | None = None  # the repetition of a traced step


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
    # changes that the user's own known divergences cover (``accept_documented``): reported,
    # not failing
    accepted: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def accept_documented(result: CheckResult, entries: tuple[dict, ...]) -> list[dict]:
    """Move the changes that ``entries`` (the user's ``--divergences`` file, scoped by content:
    ``xbn.profiles.divergences``) cover from ``changes`` to ``accepted``, each named in a
    warning; returns the entries that covered no change (stale)."""
    from ..profiles.divergences import covers, stale_divergences

    by_name = {s.name: s for s in result.snapshot.scenarios}
    kept = []
    for change in result.changes:
        entry = next((d for d in entries if d["framework"] == change.framework and
                      covers(d, by_name[change.scenario], change.step, change.quantity)), None)
        if entry is None:
            kept.append(change)
            continue
        result.accepted.append(change)
        result.warnings.append(f"accepted ({entry['origin']}): {change.scenario} step "
                               f"{change.step} {change.framework} {change.quantity} "
                               f"({change.kind}): {entry['reason']}")
    result.changes = kept
    return stale_divergences(entries, result.snapshot.scenarios,
                             [(c.scenario, c.step, c.framework, c.quantity)
                              for c in result.accepted])


def plan(snapshot: Snapshot, wanted: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Frameworks to re-run now, and those skipped with the reason."""
    from ..frameworks.devices import base_id
    from ..frameworks.registry import FRAMEWORKS, availability, moded_availability

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
        elif base_id(fid) not in FRAMEWORKS or not _known_spelling(fid):
            skipped[fid] = f"unknown to xbn {__version__}"
        elif not (now := moded_availability(fid, avail[base_id(fid)]))["available"]:
            skipped[fid] = (f"not installed now (pip install \"xbn[{now['extra']}]\"; "
                            f"missing {', '.join(now['missing'])})")
        else:
            runnable.append(fid)
    return runnable, skipped


def _known_spelling(fid: str) -> bool:
    """Whether this xbn parses ``fid`` (a mode or device a later xbn added is unknown here)."""
    from ..frameworks.devices import IdError, parse

    try:
        return parse(fid) == fid
    except IdError:
        return False


# The tolerance of a check whose snapshot was made on another CPU: float rounding of that
# CPU's kernels (the comparison's own rule for "same"), not a change of behaviour.
OTHER_CPU_K = DEFAULT_K


def tolerance_for(snapshot: Snapshot, k: float | None) -> tuple[float, str | None]:
    """The check's tolerance and, where it was chosen for the user, why. ``k`` None: exact
    on the CPU the snapshot was made on; elsewhere ``OTHER_CPU_K``, since another CPU's
    float32 kernels (FMA, vector widths) round differently without any upgrade."""
    from .snapshot import same_cpu

    if k is not None:
        return k, None
    if same_cpu(snapshot.platform):
        return 0.0, None
    made_on = snapshot.platform.get("cpu") or "a CPU it does not name"
    return OTHER_CPU_K, (f"the snapshot was made on another CPU ({made_on}): compared within "
                         f"{OTHER_CPU_K:g} eps of the dtype (float rounding of this CPU's "
                         f"kernels) instead of bit for bit; --tolerance 0 insists on the bits")


def check(snapshot: Snapshot, frameworks: list[str] | None = None, k: float | None = None, *,
          require_all: bool = False, timeout: float = 1800.0, jobs: int | None = None,
          progress: Callable[[str], None] | None = None) -> CheckResult:
    """Re-run the snapshot's scenarios through its installed frameworks and compare.

    A framework the snapshot recorded that cannot run here (not installed now, unknown to this
    xbn) is skipped with a warning; with ``require_all`` it is checked with no observations
    instead, so each of its recorded rows is a "missing" change and the check fails. ``k``
    None: exact on the snapshot's CPU, else within the rounding tolerance (``tolerance_for``).
    """
    from ..execution.runner import run

    k, why = tolerance_for(snapshot, k)

    runnable, skipped = plan(snapshot, frameworks)
    absent = {}
    if require_all:
        absent = {fid: why for fid, why in skipped.items()
                  if snapshot.frameworks[fid].get("available")}
        skipped = {fid: why for fid, why in skipped.items() if fid not in absent}
    if not runnable and not absent:
        raise CheckError("nothing to check: none of the snapshot's frameworks "
                         f"({', '.join(snapshot.frameworks)}) can run here")
    observations, now = [], {}
    if runnable:
        result = run(snapshot.scenarios, runnable, timeout=timeout, jobs=jobs, progress=progress)
        observations, now = result.observations, dict(result.frameworks)
    now.update({fid: {"available": False, "error": f"{why}, and --require-all requires it"}
                for fid, why in absent.items()})
    result = compare_run(snapshot, observations, now, skipped, k)
    if why:
        result.warnings.insert(0, why)
    return result


def compare_run(snapshot: Snapshot, observations: list[dict], now: dict[str, dict],
                skipped: dict[str, str], k: float = 0.0) -> CheckResult:
    """Compare a new run's observations (of the frameworks in ``now``) with the snapshot's."""
    from ..explain.changes import Explainer

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
    gone = {fid: why for fid, why in failed.items() if not now[fid].get("available", True)}
    failed_steps = {(o["scenario"], o["step"], o["framework"]): o
                    for o in reversed(observations) if o["status"] != OK}
    explainer = Explainer(snapshot.scenarios,
                          {fid: why for fid, why in failed.items() if fid not in gone},
                          failed_steps)
    for change in changes:  # a framework that could not run here (require_all) has no worker
        change.explanation = (f"not measured: {gone[change.framework]}"
                              if change.framework in gone else explainer.explain(change))
    fw = {fid: FrameworkCheck(fid, "checked", snapshot.frameworks[fid], now[fid])
          for fid in checked}
    fw.update({fid: FrameworkCheck(fid, "skipped", snapshot.frameworks[fid], reason=why)
               for fid, why in skipped.items()})
    fw = {fid: fw[fid] for fid in snapshot.frameworks if fid in fw}
    cases = [(s.name, fid, counts.get((s.name, fid), 0)) for s in snapshot.scenarios
             for fid in fw]
    warnings = [f"{fid}: {why}; its recorded rows are listed as missing" if fid in gone else
                f"{fid}: the worker failed ({why}); its missing rows are listed as changes"
                for fid, why in failed.items()]
    return CheckResult(snapshot, k, fw, len(old.keys() | new.keys()), changes, cases,
                       _warnings(snapshot, fw) + warnings)


def _key(o: dict) -> tuple:
    return (o["scenario"], o["step"], o["framework"], o["quantity"], o.get("rep"))


def classify(old: dict | None, new: dict | None, k: float = 0.0) -> Change | None:
    """The change between two observations of the same key, or None when unchanged."""
    some = old or new
    assert some is not None

    def change(kind: str, **extra) -> Change:
        return Change(some["scenario"], some["step"], some["op"], some["framework"],
                      some["quantity"], kind, _side(old), _side(new), rep=some.get("rep"),
                      **extra)

    if new is None:
        return change("missing")
    if old is None:
        return change("new")
    a = agreement(new, old, k, same_dtype=True)
    if a.agree:
        return None
    if a.kind in ("dtype", "value"):
        return change(a.kind, max_abs=a.max_abs, max_ulp=a.max_ulp, tolerance=a.tolerance)
    return change(a.kind)  # status (or exception type), shape


def _side(o: dict | None) -> dict | None:
    if o is None:
        return None
    return {k: o.get(k) for k in ("status", "value", "dtype", "message")}


def _warnings(snapshot: Snapshot, fw: dict[str, FrameworkCheck]) -> list[str]:
    out = [f"{fid} skipped: {c.reason}" + ("" if not c.old.get("available") else
                                            " (--require-all makes this a failure)")
           for fid, c in fw.items() if c.status == "skipped"]
    here = platform_info()
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
    from ..scenario.loader import ScenarioError, load, resolve

    out = []
    for s in snapshot.scenarios:
        if s.path == "<memory>":
            continue
        file = resolve(s.path)  # builtin:NAME, a path relative to here, or an absolute one
        if not file.is_file():
            continue
        try:
            current = load(file)
        except ScenarioError:
            continue
        if current.digest != s.digest:
            out.append(f"{s.path} has changed since the snapshot; checked the snapshot's copy "
                       f"of {s.name!r}")
    return out
