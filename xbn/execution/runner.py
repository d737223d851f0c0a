"""Spawn worker processes, in parallel, and gather their observations.

Each framework runs in its own process so that TensorFlow and PyTorch never share one, and a
crash or a hang costs only that framework's rows; the JAX family shares one worker, which runs
its frameworks one after the other (``worker_groups``, ``xbn.execution.spawn``). Workers run one per CPU
core at a time, the float64 reference first (explanations wait for its rows) and then the
slowest framework first: they are CPU-bound, so more at once only shares the cores and holds
every framework in memory together. ``on_framework`` hears of each framework as soon as its
rows are complete, so that its analysis can begin while the others run. With a result cache (``xbn.execution.cache``) a worker runs only the
scenarios the cache does not hold, and none starts for a framework it holds entirely.

Progress is reported as ``Progress`` events (a framework started, is on a step, finished a
scenario, finished or failed, is unavailable; the run finished) so that the command line can
draw a live display on a terminal and print plain lines in a CI log from the same events.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .._version import __version__
from ..frameworks.devices import CPU, base_id, device_of
from ..frameworks.registry import FRAMEWORKS, availability, moded_availability, requires
from ..scenario.loader import Scenario, quantity_dtype
from ..scenario.observation import NOT_APPLICABLE, OK, primary_quantities
from .cache import ResultCache
from .spawn import Progress, ProgressCallback, WorkerResult, group_env, run_group, run_worker

FrameworkCallback = Callable[[str, list[dict]], None]

__all__ = ["Progress", "ProgressCallback", "RunResult", "WorkerResult", "run", "run_group",
           "run_worker"]

DEFAULT_TIMEOUT = 1800.0
TF_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu", "tf-keras"}
# a framework that requires one of these runs on JAX (flax, haiku, equinox name only themselves
# and optax, which are built on it)
JAX_DISTRIBUTIONS = {"jax", "optax", "flax", "dm-haiku", "equinox"}
EXPLAINED_REFERENCE = "numpy"
"""Explanations re-run xbn's float64 reference with other switches (``explain_diffs``), so
they exist only when the reference is that model."""


@dataclass
class RunResult:
    """What a run produced. ``frameworks`` is each framework's metadata as reports record it;
    ``seconds`` (each worker's wall time) is kept apart from it so that no written file
    carries a timing, which would differ on every run."""

    observations: list[dict]
    frameworks: dict[str, dict]
    scenarios: list[Scenario]
    seconds: dict[str, float] = field(default_factory=dict)

    def meta(self) -> dict:
        return {"xbn_version": __version__, "frameworks": self.frameworks}


def expected_rows(scenario: Scenario) -> list[dict]:
    """Published values carried by the scenario, as the pseudo-framework ``expected``."""
    rows = []
    for step in scenario.steps:
        if not step.expect:
            continue
        for q, value in step.expect.items():
            if q == "source":
                continue
            rows.append({"scenario": scenario.name, "step": step.index, "op": step.op,
                         "framework": "expected", "quantity": q, "status": OK,
                         "value": value,  # rounded by the loader to where q lives
                         "dtype": quantity_dtype(scenario.layer, q),
                         "message": step.expect["source"]})
            if step.trace:  # published values are those after the last repetition
                rows[-1]["rep"] = step.repeat - 1
    return rows


def run(scenarios: list[Scenario], frameworks: list[str] | None = None, *,
        timeout: float = DEFAULT_TIMEOUT, jobs: int | None = None,
        progress: ProgressCallback | None = None, cache: ResultCache | None = None,
        on_framework: FrameworkCallback | None = None,
        only: dict[str, set[str]] | None = None) -> RunResult:
    """Run scenarios through frameworks (default: every installed one), in parallel workers.

    ``progress`` receives ``Progress`` events from the workers' reader threads, serialised by
    a lock, and a last "finished" event once every worker has ended. With a ``cache``
    (``xbn.execution.cache``), a scenario x framework found there is not run, a framework with every
    scenario found starts no worker, and what a worker finishes without a worker error is
    stored; without one (the default, and always for ``xbn check``) everything runs.
    ``on_framework(id, observations)`` hears of each framework whose rows are complete and
    clean while the other workers still run (``xbn.analysis.pipeline`` explains them meanwhile); the
    observations are the ones the result will hold for it, in the same order.
    ``only`` (framework id -> scenario names): that framework runs only those scenarios; the
    others are n/a rows saying so (the report's selection of mode columns, ``xbn report``)."""
    avail = availability()
    wanted = list(frameworks) if frameworks else [f for f, a in avail.items() if a["available"]]
    meta: dict[str, dict] = {}
    runnable = []
    for fid in wanted:
        info = moded_availability(fid, avail[base_id(fid)])
        meta[fid] = {"available": info["available"], "version": info["version"]}
        if info["available"]:
            runnable.append(fid)
        else:
            meta[fid]["extra"] = info["extra"]
            meta[fid]["missing"] = info["missing"]
            if progress:
                progress(Progress("unavailable", fid, count=len(scenarios),
                                  message=f"pip install \"xbn[{info['extra']}]\""))
    lock = threading.Lock()

    def notify(event: Progress) -> None:
        if progress:
            with lock:
                progress(event)

    hits = {fid: _cached(cache, scenarios, fid) for fid in runnable}
    for fid, names in (only or {}).items():  # not selected: n/a rows, as if from the cache
        if fid in hits:
            hits[fid].update({s.name: {"observations": unselected_rows(s, fid), "notes": []}
                              for s in scenarios if s.name not in names})
    todo = {fid: [s for s in scenarios if s.name not in hits[fid]] for fid in runnable}
    observations: list[dict] = []
    seconds: dict[str, float] = {}
    for fid in runnable:
        notify(Progress("queued", fid, count=len(todo[fid])))
    # longest first, so that the slowest worker is not the one that starts last; but the
    # float64 reference (a second's work) before all: explanations wait for its rows
    plan = sorted(worker_groups([f for f in runnable if todo[f]]),
                  key=lambda g: (g != [EXPLAINED_REFERENCE],
                                 -sum(_estimate(cache, f, len(todo[f])) for f in g)))
    failures: list[BaseException] = []

    def done(res: WorkerResult) -> None:
        """From a reader thread, which must go on reading: a failure is raised after the run."""
        if on_framework is not None:
            try:
                on_framework(res.framework,
                             _ordered(res.observations, scenarios, hits[res.framework]))
            except Exception as exc:  # xbn's bug: raised once the workers have ended
                failures.append(exc)

    for fid in runnable:
        if not todo[fid] and on_framework is not None:  # every scenario from the cache
            on_framework(fid, _ordered([], scenarios, hits[fid]))
    with ThreadPoolExecutor(max_workers=jobs or default_jobs(len(plan))) as pool:
        futures: dict[str, Future] = {}
        for group in plan:
            # JAX workers keep their compiled executables next to the results
            env = cache.compile_env() if cache is not None and _is_jax(group[0]) else None
            if len(group) == 1:
                futures[group[0]] = pool.submit(run_worker, group[0], todo[group[0]], timeout,
                                                notify, env=env, on_done=done)
            else:
                shared = pool.submit(run_group, {f: todo[f] for f in group}, timeout, notify,
                                     env=env, on_done=done)
                futures.update(dict.fromkeys(group, shared))
        for fid in runnable:
            res = _result(futures[fid], fid) if fid in futures else WorkerResult(fid)
            if fid not in futures:
                notify(Progress("done", fid, count=len(scenarios), done=len(scenarios),
                                message="from the cache"))
            if res.unavailable is not None:  # ID@DEVICE without its device: as if missing
                meta[fid].update({"available": False, "reason": res.unavailable})
                continue
            observations.extend(_merge(res, scenarios, hits[fid], cache))
            meta[fid].update({"versions": res.versions, "notes": res.notes})
            seconds[fid] = round(res.seconds, 2)
            if cache is not None and res.completed and not res.error:
                cache.note_seconds(fid, res.seconds / len(res.completed))
            if res.error:
                meta[fid]["error"] = res.error
    notify(Progress("finished", count=len(scenarios)))
    if failures:
        raise failures[0]
    for s in scenarios:
        observations.extend(expected_rows(s))
    return RunResult(observations, meta, scenarios, seconds)


def unselected_rows(scenario: Scenario, fid: str) -> list[dict]:
    """n/a rows for a scenario ``fid`` was not asked to run (what each step records, as for a
    layer that could not be built), naming the selection and how to run everything."""
    why = (f"{fid} runs only on the scenarios selected for it (xbn.frameworks.modes "
           "REPORT_MODES); xbn report --all-modes, or xbn run -f " + fid + ", runs it here")
    return [{"scenario": scenario.name, "step": step.index, "op": step.op, "framework": fid,
             "quantity": q, "status": NOT_APPLICABLE, "value": None, "dtype": None,
             "message": why, **({"rep": rep} if step.trace else {})}
            for step in scenario.steps for rep in range(step.repeat if step.trace else 1)
            for q in primary_quantities(step.op)]


SEPARATE_ENV = "XBN_SEPARATE_WORKERS"  # "1": every framework in a worker of its own


def worker_groups(frameworks: list[str]) -> list[list[str]]:
    """The workers to start: one per framework, except that the CPU ids of the JAX family
    (every id that requires a ``JAX_DISTRIBUTIONS`` one: flax, flax-nnx, haiku, equinox) share
    one, so that JAX is imported once for all of them and each compiles into the persistent
    compilation cache the next reads (``xbn.execution.spawn``). Keras on JAX keeps a worker of its own:
    it is the largest (1.3 GB over the built-in suite, where the other four together reach
    1.1 GB; in the group it took the group to 1.63 GB, the report's peak: 1.29 GB apart),
    for no time we could tell apart (cold report 119.6 s with it in the group, 124.2 s apart,
    one run each on a loaded machine).
    A JAX id whose worker environment differs from the group's (``KERAS_BACKEND`` set by the
    caller) keeps its own, as does every ``ID@DEVICE``; ``XBN_SEPARATE_WORKERS=1`` gives every
    framework its own worker."""
    jax_ids = [f for f in frameworks if device_of(f) == CPU and _is_jax(f)
               and FRAMEWORKS[base_id(f)].family != "keras"]
    group: list[str] = []
    if os.environ.get(SEPARATE_ENV) != "1":
        for fid in jax_ids:
            if group_env([*group, fid]) is not None:
                group.append(fid)
    if len(group) < 2:
        group = []
    return [group] * bool(group) + [[f] for f in frameworks if f not in group]


def _is_jax(fid: str) -> bool:
    return bool(_needs(fid) & JAX_DISTRIBUTIONS)


def _needs(fid: str) -> set[str]:
    return {d for spec in requires(fid) for d in spec.split("|")}


def _result(future: Future, fid: str) -> WorkerResult:
    result = future.result()
    return result[fid] if isinstance(result, dict) else result


def default_jobs(workers: int) -> int:
    """Workers at once: one per CPU core. The work is CPU-bound (one thread per worker), so
    more at once only shares the cores and holds every framework in memory at the same time."""
    return max(1, min(workers, os.cpu_count() or 1))


def _estimate(cache: ResultCache | None, fid: str, count: int) -> float:
    """Expected seconds of ``count`` scenarios through ``fid``: the last run's per-scenario
    time where the cache kept one, else a prior from the built-in suite on a 2-core machine
    (the JAX family pays ~2 s per small scenario compiling primitives; TensorFlow-based
    Keras ~1.5 s; the rest less)."""
    known = cache.seconds(fid) if cache is not None else None
    if known is None:
        needs = _needs(fid)
        known = 2.0 if _is_jax(fid) else 1.5 if needs & TF_DISTRIBUTIONS else 1.0
    return known * count


def _cached(cache: ResultCache | None, scenarios: list[Scenario], fid: str) -> dict[str, dict]:
    """Scenario name -> cache entry, for the scenarios the cache holds for ``fid``."""
    if cache is None:
        return {}
    found = {s.name: cache.get(s, fid) for s in scenarios}
    return {name: entry for name, entry in found.items() if entry is not None}


def _merge(res: WorkerResult, scenarios: list[Scenario], hits: dict[str, dict],
           cache: ResultCache | None) -> list[dict]:
    """One framework's observations in scenario order, from the cache or the worker (as if
    one worker had run them all: the same order, versions and notes); stores what the worker
    finished cleanly, each scenario with its own notes, under a key that counts the
    distributions the worker loaded (recorded first, so later lookups count them too). A
    worker that crashed or timed out stores nothing: its rows may be incomplete, and its
    error must not outlive this run."""
    if cache is not None and not res.error:
        cache.record_distributions(res.framework, res.distributions)
        by_scenario = _by_scenario(res.observations)
        for s in scenarios:
            if s.name in res.completed:
                cache.put(s, res.framework, by_scenario.get(s.name, []), res.versions,
                          res.scenario_notes.get(s.name, []), res.distributions)
    notes: list[str] = []  # in scenario order, each scenario's from where its rows come
    for s in scenarios:
        entry = hits.get(s.name)
        if entry is not None:
            res.versions = res.versions or entry.get("versions", {})
            notes.extend(entry.get("notes", []))
        else:
            notes.extend(res.scenario_notes.get(s.name, []))
    res.notes = list(dict.fromkeys(notes + res.notes))  # and the worker's hello
    return _ordered(res.observations, scenarios, hits)


def _by_scenario(observations: list[dict]) -> dict[str, list[dict]]:
    by_scenario: dict[str, list[dict]] = {}
    for o in observations:
        by_scenario.setdefault(o["scenario"], []).append(o)
    return by_scenario


def _ordered(observations: list[dict], scenarios: list[Scenario],
             hits: dict[str, dict]) -> list[dict]:
    """A worker's observations and the cache's, in scenario order (as if one worker had run
    them all); rows of a scenario the run was not asked for come last."""
    by_scenario = _by_scenario(observations)
    out = []
    for s in scenarios:
        entry = hits.get(s.name)
        out.extend(by_scenario.pop(s.name, []) if entry is None else entry["observations"])
    for rest in by_scenario.values():
        out.extend(rest)
    return out
