"""Engines that run a matrix plan (``xbn matrix run PLAN --engine local|ray``): ``local`` runs
the cells here, ``ray_engine`` submits each as a Ray task. Both go through ``run_plan`` below, so
resume, progress, failure reports and the merged report are the same code for every engine: a
cell whose snapshot exists in the output folder is skipped; a failed cell is reported with its
log tail while the others finish; the merged report (``xbn matrix``) is written from every
snapshot the plan's cells have, in every format (``matrix.md``, ``matrix.json``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def snapshot_path(out: Path, cell_id: str) -> Path:
    return out / f"snapshot-{cell_id}.json"


def write_atomic(path: Path, text: str) -> None:
    """Never half a snapshot: a half-written file would make a resumed run skip its cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def report(plan: dict, out: Path, tolerance: float | None = None) -> dict[str, str]:
    """The merged report of the snapshots the plan's cells have in ``out`` (plan order, paths
    relative to ``out`` so that two runs' reports compare byte for byte): format -> text."""
    import json

    from ..matrix import merge, render_markdown, to_json
    from ..snapshot import load_snapshot

    here = Path.cwd()
    os.chdir(out)
    try:
        loaded = [load_snapshot(snapshot_path(Path("."), c["id"]).name) for c in plan["cells"]
                  if snapshot_path(Path("."), c["id"]).is_file()]
        merged = merge(loaded, tolerance)
    finally:
        os.chdir(here)
    return {"matrix.md": render_markdown(merged),
            "matrix.json": json.dumps(to_json(merged), indent=1) + "\n"}


def run_plan(plan: dict, engine: str, out: Path, log: Callable[[str], None],
             tolerance: float | None = None, **options) -> tuple[list[dict], list[str]]:
    """Run the plan's pending cells on ``engine``; (failed cells' results, skipped cell ids).
    The report files are written whatever failed."""
    out.mkdir(parents=True, exist_ok=True)
    cells = plan["cells"]
    skipped = [c["id"] for c in cells if snapshot_path(out, c["id"]).is_file()]
    pending = [c for c in cells if c["id"] not in skipped]
    total, done = len(cells), [len(skipped)]
    for cid in skipped:
        log(f"{cid}: skipped (its snapshot exists: {snapshot_path(out, cid)})")
    failed: list[dict] = []
    start = time.monotonic()

    def finished(result: dict) -> None:
        done[0] += 1
        head = f"[{done[0]}/{total}] {result['id']}:"
        if result["ok"]:
            write_atomic(snapshot_path(out, result["id"]), result["snapshot"])
            env = "environment built" if result["built"] else "environment reused"
            log(f"{head} done ({env} in {result['build_s']:.1f} s, snapshot in "
                f"{result['run_s']:.1f} s)")
        else:
            failed.append(result)
            lines = "\n".join(f"    {ln}" for ln in result["log_tail"]) or "    (no output)"
            log(f"{head} FAILED; the last lines of its log:\n{lines}")

    if pending:
        log(f"{len(pending)} cell(s) to run on {engine}, {len(skipped)} skipped")
        if engine == "ray":
            from .ray_engine import run_ray

            run_ray(pending, out, finished, log, **options)
        else:
            from .local import run_local

            run_local(pending, out, finished, **options)
    for name, text in report(plan, out, tolerance).items():
        write_atomic(out / name, text)
    log(f"{total - len(failed)}/{total} cells have a snapshot ({time.monotonic() - start:.0f} s);"
        f" report: {out / 'matrix.md'}, {out / 'matrix.json'}")
    return failed, skipped
