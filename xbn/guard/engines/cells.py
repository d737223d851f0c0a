"""One matrix cell, wherever it runs: its environment (a virtualenv in the cache, built once per
requirement set and reused), then ``xbn snapshot`` of its scenarios in that environment.

The environment is a venv of the running interpreter's Python whose ``site-packages`` holds only
the cell's pins (and whatever they need that the base lacks), with a ``.pth`` line that appends
the running environment's own ``site-packages`` after them. A cell therefore *inherits* every
other package of the environment xbn runs in (TensorFlow, JAX, torch, xbn itself) and shadows
only what it pins: building ``keras==3.0.2`` takes seconds and megabytes, not the minutes and
gigabytes of a fresh TensorFlow. The limit: a cell can vary only what installs over the base
(a pin whose dependencies clash with the base's, e.g. a TensorFlow that needs another numpy,
gets that numpy shadowed too, and the base's other packages may not import with it); a matrix
over Python versions or a framework's compiled core needs environments built from nothing
(``--engine ray --ray-env pip`` on a cluster, or the GitHub matrix).

The scenario files travel as text with the cell, so a cell runs the same on a Ray node that
has no copy of the user's checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

READY = ".xbn-ready"
TAIL_LINES = 15


def env_key(requirements: list[str]) -> str:
    """The cache key of a requirement set over this base environment and Python."""
    text = json.dumps([sorted(requirements), sys.version, sys.prefix])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _installer(python: Path, requirements: list[str]) -> list[str]:
    """uv when it is on PATH (much faster to resolve), else the base environment's pip, which
    the cell's interpreter reaches through the base ``site-packages``."""
    uv = shutil.which("uv")
    if uv:
        return [uv, "pip", "install", "--python", str(python), *requirements]
    return [str(python), "-m", "pip", "install", "--no-input", *requirements]


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build_env(requirements: list[str], root: Path, log) -> tuple[Path, float, bool]:
    """(the cell's python, seconds spent, whether it was built now) for ``requirements``;
    concurrent builders of the same set (two jobs, two Ray tasks on a node) wait for one."""
    import fcntl

    key = env_key(requirements)
    folder = root / key
    python = folder / "bin" / "python"
    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / READY).is_file():
            return python, time.monotonic() - start, False
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True,
                       stdout=log, stderr=subprocess.STDOUT)
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                  "get_paths()['purelib'])"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        base = [p for p in site.getsitepackages() if os.path.isdir(p)]
        Path(purelib, "_xbn_base.pth").write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in base))
        log.write(f"$ install {' '.join(requirements)} over {', '.join(base)}\n")
        log.flush()
        subprocess.run(_installer(python, requirements), check=True, stdout=log,
                       stderr=subprocess.STDOUT)
        (folder / READY).write_text(json.dumps({"requirements": requirements}))
        return python, time.monotonic() - start, True


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


def scenario_payload(cell: dict) -> list[tuple[str, str | None]]:
    """(name, text) per scenario of ``cell``: a file's text read here, a built-in name as is."""
    return [(s, Path(s).read_text(encoding="utf-8")) if s.endswith(".toml") else (s, None)
            for s in cell["scenarios"]]


def run_cell(cell: dict, payload: list, workdir: Path, env_root: Path | None,
             python: str | None = None) -> dict:
    """Run ``cell`` in ``workdir`` (its log ``ID.log`` and, while it runs, ``ID.pid``).

    ``env_root``: build the cell's environment there (``build_env``); None: ``python`` already
    has the pins (Ray's ``runtime_env`` made it). Returns a plain dict (it crosses Ray):
    id, ok, snapshot (the JSON text or None), build_s, run_s, built, log_tail.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cid = cell["id"]
    log_path, pid_path = workdir / f"{cid}.log", workdir / f"{cid}.pid"
    out = workdir / f"{cid}.json"
    out.unlink(missing_ok=True)
    result = {"id": cid, "ok": False, "snapshot": None, "build_s": 0.0, "run_s": 0.0,
              "built": False, "log_tail": []}
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            if env_root is not None:
                env_python, result["build_s"], result["built"] = build_env(
                    cell["requirements"], env_root, log)
            else:
                env_python = Path(python or sys.executable)
        except (subprocess.CalledProcessError, OSError) as exc:
            log.write(f"environment not built: {exc}\n")
            log.flush()
            result["log_tail"] = tail(log_path)
            return result
        args = []
        for i, (name, text) in enumerate(payload):
            if text is None:
                args.append(name)
                continue
            path = workdir / "scenarios" / cid / str(i) / Path(name).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            args.append(str(path))
        cmd = [str(env_python), "-m", "xbn", "snapshot", *args, "--frameworks",
               ",".join(cell["frameworks"]), "--output", str(out)]
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        pid_path.write_text(str(proc.pid))
        code = proc.wait()
        pid_path.unlink(missing_ok=True)
        result["run_s"] = time.monotonic() - start
        if code == 0 and out.is_file():
            result["ok"], result["snapshot"] = True, out.read_text(encoding="utf-8")
            out.unlink()
        else:
            log.write(f"xbn snapshot exited with status {code}\n")
    if not result["ok"]:
        result["log_tail"] = tail(log_path)
    return result
