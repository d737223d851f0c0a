"""The result cache: one framework's observations of one scenario, kept between runs.

Most of a run is the frameworks' own work (a thousand Keras calls, JAX compiling every
primitive for every new shape), and an unchanged scenario through an unchanged framework gives
the same bits every time (the workers are deterministic, ``tests/test_determinism.py``). So
``xbn run`` and ``xbn report`` keep each scenario x framework result here and a re-run reads
it instead of starting a worker; a changed scenario re-runs only itself.

An entry is keyed by everything that can change its bits, so a stale entry is never read:

- the scenario's content (``Scenario.digest``: layer, inputs, steps; not its path);
- the framework id, its adapter module and the installed versions of every distribution its
  worker loads code from (``_versions``), read from package metadata without importing anything;
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

Which distributions a framework's bits come from is asked of its worker, not kept by hand:
the registry names what installs a framework (``flax``, ``optax``; ``tf-keras``), while
jaxlib, ml_dtypes, TensorFlow under tf-keras or protobuf change bits too. Each worker reports
the distributions it loaded code from (``worker.loaded_distributions``), and the cache keeps
that set per framework id and Python environment (``imports/``, ``record_distributions``).
A key counts the versions of the declared distributions and of the recorded ones; an entry
is stored under the key that also counts every distribution its own worker reported, so a
change of any of them changes the key of its next lookup, whatever the record says by then
(the first run has no record: its lookups count only the declared ones, under which nothing
is ever stored). A record taken under other versions of the declared distributions is
dropped: the framework's own upgrade may load other things.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from .._version import __version__

ENTRY_SCHEMA = 2  # 2: an entry's notes are its scenario's own (1 had those run before it)
# the folders under the cache directory ("jax": JAX's own compilation cache, ``compile_env``;
# "imports": the distributions each framework's worker loaded, ``record_distributions``)
KINDS = ("results", "explanations", "reports", "timings", "jax", "imports")
UNRECORDED = "unrecorded-"  # starts a report key made before its workers' records (report_key)


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


def _declared(framework: str) -> set[str]:
    """The distributions the registry names for ``framework``, and numpy, normalized."""
    from ..frameworks.devices import base_id
    from ..frameworks.registry import FRAMEWORKS, requires

    info = FRAMEWORKS[base_id(framework)]
    return {_normalized(d) for spec in ("numpy", *info.distributions, *requires(framework))
            for d in spec.split("|")}


def _normalized(name: str) -> str:
    """A distribution's name as PEP 503 compares them (``tf_keras`` is ``tf-keras``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _path_state() -> tuple:
    """``sys.path`` and each folder's modification time: an install or upgrade adds and
    removes ``*.dist-info`` folders, which changes its folder's time, so versions read under
    another state are read again (a long-lived process sees a ``pip install`` made meanwhile)."""
    state = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            state.append((entry, None))
    return tuple(state)


@lru_cache(maxsize=4096)
def _version(name: str, state: tuple) -> str | None:
    """The installed version of distribution ``name`` under ``_path_state`` ``state``: package
    metadata only, read once per name and state (a run makes a key per scenario x framework)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _declared_versions(framework: str, state: tuple | None = None) -> dict[str, str | None]:
    state = _path_state() if state is None else state
    return {name: _version(name, state) for name in sorted(_declared(framework))}


def _record_path(root: Path, framework: str) -> Path:
    """Where ``framework``'s recorded distributions live for this Python environment: one
    cache directory may serve several virtual environments, each with its own installs."""
    where = hashlib.sha256(f"{sys.prefix}\0{sys.executable}\0{framework}".encode()).hexdigest()
    return root / "imports" / f"{where[:32]}.json"


def recorded_distributions(framework: str, root: Path | None = None,
                           state: tuple | None = None) -> set[str]:
    """The distributions ``framework``'s workers reported loading, in this environment; empty
    before its first run and when the record was taken under other versions of its declared
    distributions (an upgrade of the framework itself)."""
    path = _record_path(Path(root) if root is not None else cache_dir(), framework)
    try:
        stat = path.stat()
        declared, names = _read_record(str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return set(names) if declared == _declared_versions(framework, state) else set()


@lru_cache(maxsize=256)
def _read_record(path: str, inode: int, mtime_ns: int, size: int) -> tuple[dict, frozenset[str]]:
    """A record's declared versions and distributions, read once per version of the file
    (each write renames a new file into place; a run makes a key per scenario x framework)."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    return dict(record["declared"]), frozenset(str(d) for d in record["distributions"])


def _versions(framework: str, root: Path | None = None,
              loaded: frozenset[str] = frozenset()) -> dict[str, str | None]:
    """Installed versions of the declared distributions, the recorded ones and ``loaded``
    (those a worker just reported: the key its results are stored under)."""
    state = _path_state()
    names = _declared(framework) | recorded_distributions(framework, root, state) | \
        {_normalized(d) for d in loaded}
    return {name: _version(name, state) for name in sorted(names)}


def key_fields(scenario, framework: str, root: Path | None = None,
               loaded: frozenset[str] = frozenset()) -> dict:
    """Everything an entry depends on (see the module docstring), as plain data. ``root``:
    the cache directory whose record of ``framework``'s distributions counts (default
    ``cache_dir()``); ``loaded``: distributions to count besides."""
    from ..frameworks.devices import CPU, accelerator, device_of
    from ..frameworks.registry import module_path
    from .environment import NUMERIC_ENV, xbn_env

    fields = {
        "entry_schema": ENTRY_SCHEMA,
        "scenario": scenario.digest,
        "framework": framework,
        "adapter": module_path(framework),
        "versions": _versions(framework, root, loaded),
        "xbn": __version__,
        "xbn_source": source_digest(),
        "device": device(),
        "determinism": xbn_env(framework),
        "environment": {k: os.environ[k] for k in NUMERIC_ENV if k in os.environ},
    }
    if device_of(framework) != CPU:  # ID@DEVICE: which accelerator (a CPU id's key is unchanged)
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


def entry_key(scenario, framework: str, root: Path | None = None,
              loaded: frozenset[str] = frozenset()) -> str:
    """sha256 of ``key_fields`` (the same arguments)."""
    text = json.dumps(key_fields(scenario, framework, root, loaded), sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def report_key(scenarios, frameworks: list[str] | None, reference: str,
               root: Path | None = None, only: dict[str, set[str]] | None = None) -> str:
    """The key of a whole written report (``xbn report``): the result entries' keys of every
    scenario x framework it shows, what is installed (an unavailable framework is a column),
    and the reference; ``derived_key`` adds xbn's source, which makes the report from them.
    ``root``: the cache directory whose records of distributions count (``entry_key``);
    ``only``: the frameworks that ran a selection of the scenarios (``runner.run``).

    Before every shown framework's worker has reported what it loads, the entries' keys count
    only the declared distributions, and a report kept under them would be found again after
    an upgrade of another (a second virtual environment's first run): such a key starts with
    ``UNRECORDED``, and ``keep_files`` keeps nothing under it."""
    from ..frameworks.registry import availability, missing

    avail = availability()
    ids = list(frameworks) if frameworks else [f for f, a in avail.items() if a["available"]]
    shown = [fid for fid in ids if not missing(fid)]
    keys = [[fid, fid in shown] + ([entry_key(s, fid, root) for s in scenarios]
                                   if fid in shown else []) for fid in ids]
    selection = [sorted((f, sorted(names)) for f, names in only.items())] if only else []
    key = derived_key("report", reference, [s.name for s in scenarios], keys, *selection)
    recorded = all(recorded_distributions(fid, root) for fid in shown)
    return key if recorded else UNRECORDED + key


class ResultCache:
    """Entries under ``root/results``, one file per scenario x framework key."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir()
        self.hits = self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / "results" / key[:2] / f"{key}.json"

    def get(self, scenario, framework: str) -> dict | None:
        """The entry ({"observations", "versions", "notes"}) or None (a miss)."""
        path = self._path(entry_key(scenario, framework, self.root))
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
            notes: list[str], loaded: list[str] | None = None) -> None:
        """Store one result with its scenario's own notes, under the key that also counts
        ``loaded`` (the distributions its worker reported, ``WorkerResult.distributions``);
        a failure to write (read-only home, full disk) only costs the next run its speed,
        so it is ignored."""
        key = entry_key(scenario, framework, self.root, frozenset(loaded or ()))
        # NaN/Infinity as JSON extensions and floats by repr: read back bit for bit
        self.put_json("results", key, {
            "entry_schema": ENTRY_SCHEMA, "scenario": scenario.name, "framework": framework,
            "observations": observations, "versions": versions, "notes": notes})

    def record_distributions(self, framework: str, loaded: list[str]) -> None:
        """Keep the distributions a worker of ``framework`` reported loading, so that later
        keys count their versions: added to the record while the declared distributions have
        the versions it was taken under, else replacing it."""
        if not loaded:
            return
        names = recorded_distributions(framework, self.root) | {_normalized(d) for d in loaded}
        self._write(_record_path(self.root, framework),
                    {"framework": framework, "python": sys.executable,
                     "declared": _declared_versions(framework), "distributions": sorted(names)})

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
        self._write(self.root / kind / key[:2] / f"{key}.json", value)

    @staticmethod
    def _write(path: Path, value) -> None:
        """``value`` as JSON at ``path``, through a rename; a failure to write is ignored."""
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
        """Store a written report's files under ``key`` (a folder renamed into place whole);
        nothing under an ``UNRECORDED`` key."""
        if key.startswith(UNRECORDED):
            return
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
