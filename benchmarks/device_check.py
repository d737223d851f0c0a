"""The device check: everything xbn's ``ID@DEVICE`` ids need a GPU for, in one call.

Run on a machine with an NVIDIA GPU and a CUDA build of torch (JAX's CUDA plugin optional),
from the repository root, with the machine's own python (nothing is installed):

    PYTHONUNBUFFERED=1 python3 benchmarks/device_check.py --out "$OUT"

It fails loudly (exit 3, before anything else runs) when there is no GPU. Otherwise it runs the
GPU-marked tests (tests/test_devices.py, ``-m gpu``), ``xbn frameworks`` and ``xbn run`` on
the built-in device scenarios (large-mean CPU vs CUDA with ``--reference torch``, large-mean
through every device id with the float64 reference, the float16 scenarios, the replicas
scenarios on torch@cuda), and writes one JSON, ``device-check-<date>.json``, under ``--out``
and under reports/devices/: the GPU, driver, CUDA/cuDNN, torch/jax versions, every run's
framework metadata and device rows, and the figures the issue asks to compare:

* large-mean: torch's running variance on CPU and on CUDA, relative to the exact unbiased
  variance of the scenario's input (momentum 0: the running variance is the batch's);
* float16: whether torch@cuda's outputs equal torch's CPU ones bit for bit (max ULP).

Exit status: 0 when every part ran (look at the JSON for the numbers), 1 when a part failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JAX_GPU = ["flax@gpu", "flax-nnx@gpu", "haiku@gpu", "equinox@gpu", "keras-jax@gpu"]
TF_GPU = ["keras@gpu", "tf-keras@gpu"]
REPLICAS = ["replicas-equal", "replicas-unequal", "replicas-unsynchronized"]
# TODO(replicas on CUDA): xbn/adapters/torch/replicas.py runs gloo ranks whose TorchAdapter
# follows XBN_DEVICE, so torch@cuda replicas may already run SyncBatchNorm on the GPU over
# gloo; nothing selects NCCL (one GPU per rank) yet. This check records what happens.
# in order of importance: a part that would start too late for the budget is skipped
RUNS = {
    "large-mean-cpu-vs-cuda": ["run", "large-mean", "-f", "torch,torch@cuda", "-r", "torch"],
    "float16-cpu-vs-cuda": ["run", "dtype-float16", "mixed-float16",
                            "mixed-float16-large-variance", "-f", "torch,torch@cuda",
                            "-r", "torch"],
    "large-mean-devices": ["run", "large-mean", "-f",
                           ",".join(["numpy", "torch", "torch@cuda", "flax", *JAX_GPU,
                                     "keras", *TF_GPU])],
    "replicas-cuda": ["run", *REPLICAS, "-f", "numpy,torch,torch@cuda"],
}
PART_SECONDS = 150  # the most one part may take
START = time.monotonic()


def fail(message: str) -> None:
    print(f"device_check: FAILED: {message}", file=sys.stderr)
    sys.exit(3)


def gpus() -> list[dict]:
    """nvidia-smi's view of the GPUs; no GPU is a loud failure."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        fail("no nvidia-smi on PATH: this machine has no NVIDIA GPU; run this check on a "
             "GPU machine")
    out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap",
                          "--format=csv,noheader"], capture_output=True, text=True)
    rows = [r for r in out.stdout.splitlines() if r.strip()]
    if out.returncode != 0 or not rows:
        fail(f"nvidia-smi found no GPU: {(out.stderr or out.stdout).strip()[:300]}")
    keys = ("name", "driver", "memory", "compute_capability")
    return [dict(zip(keys, (c.strip() for c in r.split(",")), strict=False)) for r in rows]


def versions() -> dict:
    """torch (CUDA, cuDNN) and JAX as this python has them; torch must see the GPU."""
    from importlib import metadata

    try:
        import torch
    except ImportError:
        fail("torch is not installed in this python")
    if not torch.cuda.is_available():
        fail(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
    found = {"python": sys.version.split()[0], "torch": torch.__version__,
             "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
             "torch_device": torch.cuda.get_device_name(0)}
    for dist in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax",
                 "dm-haiku", "equinox", "optax", "tensorflow", "keras", "tf-keras", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


BUDGET = [540.0]  # seconds for the whole check (--budget)


def time_left() -> float:
    """Seconds one more part may take: PART_SECONDS, less near the end of the budget."""
    return min(PART_SECONDS, BUDGET[0] - (time.monotonic() - START) - 15)


def xbn(args: list[str], env: dict) -> dict:
    """``python -m xbn ARGS --format json``: exit status, the parsed document, stderr's tail."""
    timeout = time_left()
    if timeout < 30:
        return {"rc": None, "error": "skipped: the check's time budget is spent"}
    cmd = [sys.executable, "-m", "xbn", *args, "--format", "json"]
    if args[0] == "run":
        cmd += ["--no-cache", "-q", "--timeout", str(int(timeout - 10))]
    print("device_check: $", " ".join(cmd[1:]), file=sys.stderr)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                             cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"rc": None, "error": f"timed out after {timeout} s"}
    doc = None
    with contextlib.suppress(ValueError):
        doc = json.loads(out.stdout)
    return {"rc": out.returncode, "doc": doc, "stderr": out.stderr[-3000:]}


def device_rows(doc: dict) -> list[dict]:
    """The diffs of every device id and of torch (without the arrays)."""
    return [{k: d.get(k) for k in ("scenario", "step", "quantity", "framework", "reference",
                                   "max_abs", "max_rel", "max_ulp", "verdict", "explanation",
                                   "message")}
            for d in doc.get("diffs", []) if "@" in d["framework"] or d["framework"] == "torch"]


def large_mean_figures(doc: dict) -> dict:
    """Running variance and mean of torch and torch@cuda against the exact values of the
    scenario's input: momentum 0, so the running statistics are the batch's own (torch keeps
    the unbiased variance, torch/nn/modules/batchnorm.py)."""
    import numpy as np

    from xbn.scenario.loader import load, resolve

    x = np.asarray(load(resolve("large-mean")).inputs["x"], np.float64)
    exact = {"moving_variance": x.var(axis=0, ddof=1), "moving_mean": x.mean(axis=0)}
    out: dict = {"exact_unbiased_variance": exact["moving_variance"].tolist()}
    for o in doc.get("observations", []):
        if o["framework"] in ("torch", "torch@cuda") and o["quantity"] in exact \
                and o["status"] == "ok":
            value = np.asarray(o["value"], np.float64)
            rel = np.abs(value - exact[o["quantity"]]) / np.abs(exact[o["quantity"]])
            out[f"{o['framework']} {o['quantity']}"] = value.tolist()
            out[f"{o['framework']} {o['quantity']} relative error"] = rel.tolist()
    return out


def float16_figures(doc: dict) -> dict:
    """torch@cuda against torch on CPU, per scenario and quantity: max ULP (0: the same bits)."""
    out: dict = {}
    for d in doc.get("diffs", []):
        if d["framework"] == "torch@cuda":
            out[f"{d['scenario']} step {d['step']} {d['quantity']}"] = {
                "max_ulp": d.get("max_ulp"), "max_abs": d.get("max_abs"),
                "verdict": d.get("verdict")}
    return out


def pytest_gpu(env: dict) -> dict:
    timeout = time_left()
    if timeout < 30:
        return {"rc": None, "tail": "skipped: the check's time budget is spent"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
           "tests/test_devices.py"]
    print("device_check: $", " ".join(cmd[1:]), file=sys.stderr)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": None, "tail": f"timed out after {timeout:.0f} s"}
    return {"rc": out.returncode, "tail": (out.stdout + out.stderr)[-4000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or ".",
                        help="folder for the JSON (default: $OUT, else here)")
    parser.add_argument("--budget", type=float, default=BUDGET[0],
                        help="seconds for the whole check (parts that would not fit are "
                             "skipped and say so)")
    args = parser.parse_args()
    BUDGET[0] = args.budget
    report: dict = {"gpus": gpus()}  # exits 3 without a GPU, before anything else
    report["versions"] = versions()
    report["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cache = tempfile.mkdtemp(prefix="xbn-cache-")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])), "XBN_CACHE_DIR": cache,
           "PYTHONUNBUFFERED": "1"}
    report["runs"], failed = {}, []
    for name, argv in RUNS.items():
        if name == "large-mean-devices":  # the most important runs first, then the tests
            report["tests"] = pytest_gpu(env)
            listing = xbn(["frameworks"], env)
            report["frameworks"] = listing.get("doc") or listing
        res = xbn(argv, env)
        doc = res.get("doc") or {}
        report["runs"][name] = {"args": argv, "rc": res.get("rc"),
                                "frameworks": doc.get("frameworks"),
                                "rows": device_rows(doc),
                                "stderr": res.get("stderr", res.get("error", ""))[-1500:]}
        if res.get("rc") != 0:
            failed.append(name)
        if name == "large-mean-cpu-vs-cuda":
            report["figures_large_mean"] = large_mean_figures(doc)
        if name == "float16-cpu-vs-cuda":
            report["figures_float16"] = float16_figures(doc)
    report["todo"] = ["replicas on CUDA: torch ranks run over gloo (two ranks share the GPU); "
                      "NCCL with one GPU per rank is not wired up"]
    if report["tests"].get("rc") != 0:
        failed.append("tests")
    report["failed"] = failed
    text = json.dumps(report, indent=1, default=str)
    name = f"device-check-{report['date'][:10]}.json"
    for folder in (Path(args.out), ROOT / "reports" / "devices"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text + "\n", encoding="utf-8")
        print(f"device_check: wrote {folder / name}", file=sys.stderr)
    print(json.dumps({"failed": failed, "large_mean": report.get("figures_large_mean"),
                      "float16": report.get("figures_float16")}, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
