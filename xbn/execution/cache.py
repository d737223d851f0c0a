"""The result cache: one framework's observations of one scenario, kept between runs.

Most of a run is the frameworks' own work (a thousand Keras calls, JAX compiling every
primitive for every new shape), and an unchanged scenario through an unchanged framework gives
the same bits every time (the workers are deterministic, ``tests/test_determinism.py``). So
``xbn run`` and ``xbn report`` keep each scenario x framework result here and a re-run reads
it instead of starting a worker; a changed scenario re-runs only itself.

An entry is keyed by everything that can change its bits, so a stale entry is never read:

- the scenario's content (``Scenario.digest``: layer, inputs, steps; not its path);
- the framework id, its adapter module and the installed versions of its distributions (and
  numpy's), read from package metadata without importing anything;
- xbn's version *and a digest of xbn's own source*: in a development tree the version does not
  change when an adapter or the reference is edited, and an adapter edit must re-run;
- the device and determinism settings: Python, OS, machine, the CPU's model and feature
  flags (fused multiply-adds change float32 bits), the environment the worker is given
  (``environment.xbn_env``: ``DETERMINISM_ENV`` and the framework's own), and the variables of the caller's
  environment that a worker inherits and that change numerics;
- for an ``ID@DEVICE`` id (``torch@cuda``), the id itself, the device's worker environment and
  the accelerator (GPU models and driver read from /proc, ``devices.accelerator``).

``xbn check`` and ``xbn snapshot`` never use the cache: a check exists to re-run. The cache
lives in the user cache directory (``$XBN_CACHE_DIR``, else ``$XDG_CACHE_HOME/xbn``, else
``~/.cache/xbn``), next to JAX's compilation cache of the JAX workers (``compile_env``);
``--no-cache`` bypasses both and ``xbn cache clear`` empties both. Entries are
plain JSON written through a rename, so an interrupted write leaves no half entry; an entry
that cannot be read is a miss (and is removed).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from functools import cache, lru_cache
from importlib import metadata
from pathlib import Path

from .._version import __version__

ENTRY_SCHEMA = 1
# the folders under the cache directory ("jax": JAX's own compilation cache, ``compile_env``)
KINDS = ("results", "explanations", "reports", "timings", "jax")


def cache_dir() -> Path:
    """Where entries live: ``$XBN_CACHE_DIR``, else the user cache directory."""
    if os.environ.get("XBN_CACHE_DIR"):
        return Path(os.environ["XBN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xbn"


@lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of xbn's own source files (names and contents): an edit anywhere in xbn, an
    adapter or the reference, invalidates every entry even when the version string stays."""
    root = Path(__file__).parents[1]  # xbn/
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".toml") and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=1)
def device() -> dict:
    """The machine as far as it can change bits: platform and the CPU's model and flags."""
    info = {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "system": platform.system(), "machine": platform.machine(), "cpu": "", "flags": ""}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        info["cpu"] = platform.processor()
        return info
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "Processor") and not info["cpu"]:
            info["cpu"] = value.strip()
        elif name in ("flags", "Features") and not info["flags"]:
            info["flags"] = hashlib.sha256(value.strip().encode()).hexdigest()[:16]
    return info


@cache
def _versions(framework: str) -> dict[str, str | None]:
    """Installed versions of every distribution the framework names, and numpy's (read once
    per process: a run's keys are made for every scenario)."""
    from ..frameworks.devices import base_id
    from ..frameworks.registry import FRAMEWORKS

    info = FRAMEWORKS[base_id(framework)]
    names = {"numpy"} | {d for spec in (*info.distributions, *info.requires)
                         for d in spec.split("|")}
    found = {}
    for name in sorted(names):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def key_fields(scenario, framework: str) -> dict:
    """Everything an entry depends on (see the module docstring), as plain data."""
    from ..frameworks.devices import accelerator, base_id
    from ..frameworks.registry import module_path
    from .environment import NUMERIC_ENV, xbn_env

    base = base_id(framework)
    fields = {
        "entry_schema": ENTRY_SCHEMA,
        "scenario": scenario.digest,
        "framework": framework,
        "adapter": module_path(base),
        "versions": _versions(framework),
        "xbn": __version__,
        "xbn_source": source_digest(),
        "device": device(),
        "determinism": xbn_env(framework),
        "environment": {k: os.environ[k] for k in NUMERIC_ENV if k in os.environ},
    }
    if base != framework:  # ID@DEVICE: which accelerator (a CPU id's key is unchanged)
        fields["accelerator"] = accelerator(framework)
    return fields


def derived_key(*parts) -> str:
    """The key of a result derived from ``parts`` by xbn's code (an explanation search): the
    parts as exact JSON (floats by repr, arrays as lists) with xbn's version and source."""
    def plain(value):
        if hasattr(value, "tolist"):
            return value.tolist()
        if isinstance(value, float) and value != value:
            return "NaN"  # NaN != NaN: one spelling, so equal inputs give equal keys
        raise TypeError(type(value).__name__)

    text = json.dumps([__version__, source_digest(), *parts], default=plain)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_key(scenario, framework: str) -> str:
    text = json.dumps(key_fields(scenario, framework), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def report_key(scenarios, frameworks: list[str] | None, reference: str) -> str:
    """The key of a whole written report (``xbn report``): the result entries' keys of every
    scenario x framework it shows, what is installed (an unavailable framework is a column),
    and the reference; ``derived_key`` adds xbn's source, which makes the report from them."""
    from ..frameworks.devices import base_id
    from ..frameworks.registry import availability

    avail = availability()
    ids = list(frameworks) if frameworks else [f for f, a in avail.items() if a["available"]]
    keys = [[fid, avail[base_id(fid)]["available"]] + ([entry_key(s, fid) for s in scenarios]
                                                      if avail[base_id(fid)]["available"] else [])
            for fid in ids]
    return derived_key("report", reference, [s.name for s in scenarios], keys)


class ResultCache:
    """Entries under ``root/results``, one file per scenario x framework key."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir()
        self.hits = self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / "results" / key[:2] / f"{key}.json"

    def get(self, scenario, framework: str) -> dict | None:
        """The entry ({"observations", "versions", "notes"}) or None (a miss)."""
        path = self._path(entry_key(scenario, framework))
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry.get("entry_schema") != ENTRY_SCHEMA or \
                    not isinstance(entry.get("observations"), list):
                raise ValueError("not an entry")
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, scenario, framework: str, observations: list[dict], versions: dict,
            notes: list[str]) -> None:
        """Store one result; a failure to write (read-only home, full disk) only costs the
        next run its speed, so it is ignored."""
        # NaN/Infinity as JSON extensions and floats by repr: read back bit for bit
        self.put_json("results", entry_key(scenario, framework), {
            "entry_schema": ENTRY_SCHEMA, "scenario": scenario.name, "framework": framework,
            "observations": observations, "versions": versions, "notes": notes})

    def get_json(self, kind: str, key: str):
        """A derived result stored by ``put_json`` (e.g. ``explanations``), or None."""
        path = self.root / kind / key[:2] / f"{key}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return None

    def put_json(self, kind: str, key: str, value) -> None:
        """Store a derived result under ``key``, which the caller makes from everything the
        result depends on (see ``explain.explain_diffs``); written like an entry."""
        path = self.root / kind / key[:2] / f"{key}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(value, f)
            os.replace(tmp, path)
        except OSError:
            return

    def restore_files(self, key: str, out_dir: Path) -> list[Path] | None:
        """Copy the files ``keep_files`` stored under ``key`` into ``out_dir`` (each through a
        rename, as ``xbn report`` writes them), or None when there are none."""
        src = self.root / "reports" / key
        names = sorted(p.name for p in src.glob("*")) if src.is_dir() else []
        if not names:
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in names:
            fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
            os.close(fd)
            shutil.copyfile(src / name, tmp)
            os.replace(tmp, out_dir / name)
            written.append(out_dir / name)
        return written

    def keep_files(self, key: str, paths: list[Path]) -> None:
        """Store a written report's files under ``key`` (a folder renamed into place whole)."""
        dest, tmp = self.root / "reports" / key, None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent))
            for path in paths:
                shutil.copyfile(path, tmp / Path(path).name)
            os.replace(tmp, dest)
        except OSError:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def seconds(self, framework: str) -> float | None:
        """Seconds per scenario of ``framework``'s last worker (to schedule longest first)."""
        value = (self.get_json("timings", "framework-seconds") or {}).get(framework)
        return value if isinstance(value, (int, float)) else None

    def note_seconds(self, framework: str, seconds: float) -> None:
        kept = self.get_json("timings", "framework-seconds") or {}
        self.put_json("timings", "framework-seconds", {**kept, framework: round(seconds, 3)})

    def compile_env(self) -> dict[str, str]:
        """The environment that points a JAX worker at JAX's persistent compilation cache in
        this cache directory, every executable kept (minimum compile time 0 s): the JAX
        adapters run op by op, and each small primitive they compile for a new shape is worth
        keeping for the next run that misses the result cache (an edit of xbn re-runs
        everything). JAX keys each executable by its program, the compile options, the XLA
        flags and jax/jaxlib's versions, and a kept executable gives the bits a fresh compile
        gives (``tests/test_worker_groups.py``). Emptied by ``clear``; never used by a run
        without this cache (``--no-cache``, ``xbn check``)."""
        return {"JAX_COMPILATION_CACHE_DIR": str(self.root / "jax"),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}

    def entries(self) -> list[Path]:
        return sorted((self.root / "results").glob("*/*.json"))

    def clear(self) -> int:
        """Remove every entry and derived result; returns how many entries there were."""
        count = len(self.entries())
        for kind in KINDS:
            shutil.rmtree(self.root / kind, ignore_errors=True)
        return count
