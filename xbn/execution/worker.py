"""Worker process: runs every scenario through one adapter (or through each adapter of a group,
one after the other) and streams observations.

Protocol: one JSON document on stdin ({"framework", "module", "scenarios"}, or {"group": [such
documents]}: ``xbn.execution.spawn`` groups the JAX family); JSON lines on stdout, each naming its
"framework": {"type": "hello", "versions", "notes"}, {"type": "obs", ...} per observation,
{"type": "scenario_done", "scenario", "notes"} (that scenario's notes, ``run_one``),
{"type": "framework_done", "distributions"} per framework (``loaded_distributions``), and a
last {"type": "done"}; for an ``ID@DEVICE`` whose device is absent {"type": "unavailable",
"reason"} instead of its hello and rows (``xbn.execution.device_probe``). The framework's own
prints are sent to stderr so that they can never corrupt the protocol. ``--serve`` keeps one
worker up for many batches (see :func:`serve`).
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
from functools import cache

from ..scenario.model import REPLICAS_ENV


def prepare_replicas(scenarios: list[dict]) -> None:
    """Before the framework is imported: offer as many host devices as the request's
    scenarios have replicas (JAX reads ``--xla_force_host_platform_device_count`` once, at
    start; TensorFlow's logical CPU devices are configured by the keras engine from
    ``XBN_REPLICAS`` before its first op). A request without replicas changes nothing."""
    count = max((len(s["layer"].get("replicas") or ()) for s in scenarios), default=0)
    if count < 2:
        return
    os.environ[REPLICAS_ENV] = str(count)
    flags = os.environ.get("XLA_FLAGS", "")
    # first: XLA stops reading XLA_FLAGS at a token it does not know (see environment.DETERMINISM_ENV)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count} {flags}".strip()


def _protocol_stream():
    """Keep the real stdout for the protocol; point fd 1 at stderr for everything else."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def serve(proto) -> int:
    """``--serve``: one worker for a whole fuzzing campaign (``xbn.execution.session``), so the
    framework is imported once. Reads JSON lines until EOF: the first {"framework", "module"},
    then one {"scenarios": [...]} per batch, answered like a one-shot run's scenarios and
    closed by {"type": "batch_done"}."""
    from ..adapters.base import run_scenario
    from ..frameworks.registry import load_adapter
    from ..scenario.loader import Scenario

    request = json.loads(sys.stdin.readline())
    random.seed(0)
    adapter = load_adapter(request["framework"], request.get("module"))
    proto.write(json.dumps({"type": "hello", "versions": adapter.versions(),
                            "notes": adapter.notes}) + "\n")
    for line in sys.stdin:
        for data in json.loads(line)["scenarios"]:
            scenario = Scenario.from_dict(data)
            for obs in run_scenario(adapter, scenario):  # rows carry the id with its mode
                proto.write(json.dumps({"type": "obs", **obs, "framework": request["framework"]},
                                       allow_nan=True) + "\n")
            proto.write(json.dumps({"type": "scenario_done", "scenario": scenario.name}) + "\n")
        proto.write(json.dumps({"type": "batch_done"}) + "\n")
    return 0


def main() -> int:
    proto = _protocol_stream()
    if "--serve" in sys.argv[1:]:
        return serve(proto)
    request = json.loads(sys.stdin.read())
    members = request.get("group") or [request]
    prepare_replicas([s for m in members for s in m["scenarios"]])  # once, before any import
    config = _GlobalConfig()
    for member in members:
        random.seed(0)
        run_one(proto, member, config)
        config.restore()
    proto.write(json.dumps({"type": "done"}) + "\n")
    proto.flush()
    return 0


def run_one(proto, request: dict, config: _GlobalConfig) -> None:
    """One framework's scenarios ({"framework", "module", "scenarios"}), closed by
    {"type": "framework_done"}; every message names the framework."""
    from ..adapters.base import run_scenario
    from ..frameworks.devices import run_id
    from ..frameworks.registry import load_adapter
    from ..scenario.loader import Scenario
    from .device_probe import prepare

    framework = request["framework"]
    tag = {"framework": framework}
    absent, device_notes = prepare(framework)  # ID@DEVICE: is the device there? (CPU: no-op)
    if absent is not None:  # every row of this id is unavailable, with the reason
        proto.write(json.dumps({"type": "unavailable", "reason": absent, **tag}) + "\n")
        proto.write(json.dumps({"type": "framework_done", **tag}) + "\n")
        proto.flush()
        return
    adapter = load_adapter(run_id(framework), request.get("module"))
    adapter.notes.extend(device_notes)
    config.capture()
    proto.write(json.dumps({"type": "hello", "versions": adapter.versions(),
                            "notes": adapter.notes, **tag}) + "\n")
    own = list(adapter.notes)  # the adapter's notes before any scenario (version, device)
    for data in request["scenarios"]:
        scenario = Scenario.from_dict(data)
        # Each scenario's notes are its own: adapters add a note once ("if not in notes"), so
        # a list kept across scenarios would give a scenario the notes of those before it,
        # and the result cache stores them per scenario. Emptied in place: a replicated
        # engine shares the base adapter's list.
        adapter.notes[:] = own
        for obs in run_scenario(adapter, scenario):  # rows carry the id with its device
            proto.write(json.dumps({"type": "obs", **obs, **tag}, allow_nan=True) + "\n")
        proto.write(json.dumps({"type": "scenario_done", "scenario": scenario.name,
                                "notes": adapter.notes, **tag}) + "\n")
        config.bound_memory()
    adapter.close()
    proto.write(json.dumps({"type": "framework_done", "distributions": loaded_distributions(),
                            **tag}) + "\n")
    proto.flush()


def loaded_distributions() -> list[str]:
    """The installed distributions this process has loaded code from (named as their
    ``*.dist-info`` folders spell them; the cache normalizes): the owners of every imported module's top-level package and of every shared library
    mapped from a ``sys.path`` directory (``numpy.libs``, ``nvidia``: loaded without an import).

    Why: the result cache keys a framework's results by the versions of these
    (``xbn.execution.cache``). The registry names only what a framework is installed by
    (``flax``, ``optax``), while its bits also come from jaxlib, ml_dtypes, numpy, TensorFlow
    under tf-keras, protobuf...; asked of the process that ran it, no list is kept by hand.
    Over-inclusive by design (a group worker's later frameworks see its earlier ones' modules):
    an extra name costs a re-run after its upgrade, a missing one a stale result."""
    tops = {name.partition(".")[0] for name in list(sys.modules)} | _mapped_tops()
    owners = _owners()
    return sorted({dist for top in tops for dist in owners.get(top, ())})  # as spelled there


def _mapped_tops() -> set[str]:
    """The first path component, below its ``sys.path`` directory, of every file mapped into
    this process (Linux ``/proc/self/maps``; elsewhere none)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            files = {line.split(None, 5)[5].strip() for line in f if line.count(" ") >= 5}
    except (OSError, IndexError):
        return set()
    roots = {os.path.join(os.path.realpath(p), "") for p in sys.path if p and os.path.isdir(p)}
    roots |= {os.path.join(os.path.abspath(p), "") for p in sys.path if p and os.path.isdir(p)}
    tops = set()
    for path in files:
        for root in roots:
            if path.startswith(root):
                tops.add(path[len(root):].split(os.sep, 1)[0])
    return tops


@cache  # the installed files do not change while a worker runs (a group asks once each)
def _owners() -> dict[str, set[str]]:
    """Top-level name (a package, a module, a ``*.libs`` folder) -> the distributions whose
    files hold it, read from each ``*.dist-info``'s RECORD (``top_level.txt`` without one).
    ``importlib.metadata.packages_distributions`` answers the same question but parses every
    distribution's METADATA and makes a Path per file: 0.68 s in xbn's full environment
    (105 distributions), where this takes 0.21 s, once per worker."""
    owners: dict[str, set[str]] = {}
    for entry in sys.path:
        try:
            found = [d for d in os.scandir(entry or ".")
                     if d.name.endswith((".dist-info", ".egg-info")) and d.is_dir()]
        except OSError:
            continue
        for dist in found:
            # {name}-{version}.dist-info, {name}-{version}-py3.11.egg-info, {name}.egg-info
            name = dist.name.rpartition(".")[0].partition("-")[0]
            for top in _tops_of(dist.path):
                owners.setdefault(top, set()).add(name)
    return owners


def _tops_of(folder: str) -> set[str]:
    """The first path component of each file a distribution installed (a file's without its
    suffixes: ``six.py`` is ``six``, ``_cffi_backend.cpython-311-x86_64-linux-gnu.so`` is
    ``_cffi_backend``): RECORD lists them all, ``*.libs`` folders too."""
    tops = set()
    try:
        with open(os.path.join(folder, "RECORD"), encoding="utf-8", errors="replace") as f:
            for line in f:
                path = line.partition(",")[0].strip().strip('"')
                head, sep, _ = path.partition("/")
                if head and not head.startswith(".."):  # ../../bin: scripts
                    tops.add(head if sep else head.partition(".")[0])
        return tops
    except OSError:
        pass
    try:
        with open(os.path.join(folder, "top_level.txt"), encoding="utf-8") as f:
            return {line.strip() for line in f if line.strip()}
    except OSError:
        return tops


GROWTH_ENV = "XBN_WORKER_GROWTH_MB"
GROWTH_MB = 150.0  # see _GlobalConfig.bound_memory


def _resident_mb() -> float | None:
    """This process' resident memory now (Linux); None where /proc is not there."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class _GlobalConfig:
    """JAX's global configuration as a fresh process has it, put back after each framework
    of a group worker, so that no framework's switch (``jax_enable_x64``, flipped per
    scenario by the adapters) reaches the next one. ``capture`` takes it once JAX is
    imported, right after an adapter's import and before any of its scenarios (no adapter
    changes the configuration at import). ``restore`` also empties JAX's in-memory caches
    of compiled executables: kept, they grew the five-framework worker of the built-in suite
    to 2.6 GB resident (1.7 GB emptied; 1.6 GB the largest separate worker), for no
    measurable time (113.8 s kept, 112.4 s emptied, one run each on a loaded machine)."""

    def __init__(self):
        self.saved: dict | None = None
        self.mark: float | None = None  # resident MB when JAX's caches were last emptied

    def capture(self) -> None:
        jax = sys.modules.get("jax")
        if self.saved is None and jax is not None:
            self.saved = dict(jax.config.values)

    def restore(self) -> None:
        jax = sys.modules.get("jax")
        for name, value in (self.saved or {}).items():
            if jax.config.values.get(name) != value:
                jax.config.update(name, value)
        if jax is not None:  # the next framework compiles what it needs, as alone it would
            self._empty(jax)

    def bound_memory(self) -> None:
        """After a scenario: empty JAX's in-memory caches of compiled executables once the
        process has grown ``XBN_WORKER_GROWTH_MB`` (150) since they were last emptied. Every
        new shape compiles executables that JAX keeps for the process' life: Keras on JAX
        grew from 0.8 to 1.64 GB over the built-in suite (60 MB per layout scenario), the
        largest of the report's processes. Emptied after every scenario it stays at 0.89 GB
        but takes twice the time (every primitive recompiled: 45 CPU-s instead of 24);
        emptied on 150 MB of growth its peak is 1.30 GB (300 MB: 1.41 GB) for no time we
        could measure (33.9 s and 33.1 s, one cold ``xbn report -f keras-jax`` each). A
        recompiled executable is the same program, so no row changes (results.json
        identical, byte for byte)."""
        jax = sys.modules.get("jax")
        resident = _resident_mb()
        if jax is None or resident is None:
            return
        if self.mark is None:
            self.mark = resident
        elif resident - self.mark > float(os.environ.get(GROWTH_ENV, GROWTH_MB)):
            self._empty(jax)

    def _empty(self, jax) -> None:
        gc.collect()
        jax.clear_caches()
        self.mark = _resident_mb()


if __name__ == "__main__":
    sys.exit(main())
