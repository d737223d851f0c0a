"""The Ray engine: every cell one Ray task (``max_retries=0``: a failed cell is reported, not
hidden by a retry), on the cluster at ``address`` or on a local Ray started for the run and
stopped after it (bound to 127.0.0.1, no dashboard).

Where a cell's environment comes from (``ray_env``):

- ``"xbn"`` (default): the task builds it on the node it lands on, as the local engine does
  (``cells.build_env``: a venv in that node's xbn cache over the node's own environment,
  reused by every later task with the same pins).
- ``"pip"``: Ray's own ``runtime_env={"pip": [...]}``, which Ray builds and caches per
  requirement set on each node. When the Ray workers themselves run in a virtualenv, Ray
  *copies* that whole virtualenv first (its ``clonevirtualenv``; 5.2 GB for xbn's development
  environment with every framework), so this suits nodes whose Python is a system or conda
  one, where Ray makes a ``--system-site-packages`` virtualenv instead.

The scenario files go with each task as text and the snapshot comes back as text, so nodes
need xbn and the base frameworks installed but no copy of the user's files.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .cells import run_cell, scenario_payload

EXTRA = "pip install 'xbn[ray]'"


class RayMissing(RuntimeError):
    """Ray is not installed: the message names the extra that installs it."""


class RayStartFailed(RuntimeError):
    """The local Ray did not start, or the cluster at ``address`` did not answer."""


def ray_module():
    """``ray``, or ``RayMissing`` naming the extra (Ray is optional: ``xbn[ray]``)."""
    try:
        import ray
    except ImportError:
        raise RayMissing(f"--engine ray needs Ray, which is not installed: {EXTRA}") from None
    return ray


def start(address: str | None, cpus: int | None):
    """Connect to ``address``, or start a local Ray on 127.0.0.1 (``cpus``: its CPUs).
    Returns (ray, started_here)."""
    import os

    ray = ray_module()
    # Ray gives a local raylet 10 s to register, too little on a loaded machine
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
            return ray, False
        ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception on a failed start
        ray.shutdown()
        where = address or "a local Ray on 127.0.0.1"
        raise RayStartFailed(f"Ray did not start ({where}): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return ray, True


def cell_task(cell: dict, payload: list, ray_env: str) -> dict:
    """A cell on a Ray worker: its own work folder, removed after (the log tail comes back)."""
    import sys

    work = Path(tempfile.mkdtemp(prefix=f"xbn-cell-{cell['id']}-"))
    try:
        if ray_env == "pip":  # Ray made this interpreter's environment with the pins
            return run_cell(cell, payload, work, None, python=sys.executable)
        from .local import env_root

        return run_cell(cell, payload, work, env_root())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_ray(cells: list[dict], out: Path, finished: Callable[[dict], None],
            log: Callable[[str], None], address: str | None = None, cpus: int | None = None,
            cpus_per_cell: float = 1.0, ray_env: str = "xbn", **_ignored) -> None:
    """Submit every cell, then report each as it ends (``finished``), failures included."""
    ray, started = start(address, cpus)
    try:
        log(f"ray: {'local cluster started' if started else 'connected to ' + address}, "
            f"{ray.cluster_resources().get('CPU', 0):g} CPUs; {cpus_per_cell:g} per cell")
        task = ray.remote(cell_task)
        pending = {}
        for cell in cells:
            options = {"num_cpus": cpus_per_cell, "max_retries": 0}
            if ray_env == "pip":
                options["runtime_env"] = {"pip": list(cell["requirements"])}
            ref = task.options(**options).remote(cell, scenario_payload(cell), ray_env)
            pending[ref] = cell["id"]
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            cid = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died, or its env failed
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                result = {"id": cid, "ok": False, "snapshot": None, "build_s": 0.0,
                          "run_s": 0.0, "built": False, "log_tail": lines[-15:]}
            finished(result)
    finally:
        if started:
            ray.shutdown()
