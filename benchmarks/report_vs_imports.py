"""Wall time of `xbn report` next to each framework's bare import time, in one run.

Workers run in parallel, so the report's floor is the slowest import plus that framework's
own steps; this script prints both, and each worker's own wall time (kept in memory on the
run's result, never in the report's files), so a regression in either shows. The report is
made in this process by the same functions `xbn report` calls. Usage:

    python benchmarks/report_vs_imports.py [--frameworks numpy,torch,keras]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORTS = {
    "torch": "import torch",
    "keras": "import keras",
    "keras-jax": "import keras",
    "keras-torch": "import keras",
    "tf-keras": "import tf_keras",
    "flax": "import flax.linen, optax",
    "flax-nnx": "from flax import nnx; import optax",
    "haiku": "import haiku, optax",
    "equinox": "import equinox, optax",
}
BACKEND = {"keras": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frameworks", default=",".join(IMPORTS))
    parser.add_argument("--output-dir", help="keep the report here (default: a temporary folder)")
    args = parser.parse_args()
    ids = [f for f in args.frameworks.split(",") if f in IMPORTS]
    for fid in ids:
        env = dict(os.environ, KERAS_BACKEND=BACKEND.get(fid, "tensorflow"), JAX_PLATFORMS="cpu")
        print(f"import {fid:12s} {timed([sys.executable, '-c', IMPORTS[fid]], env):7.2f} s", flush=True)
    from xbn.analysis import analyze
    from xbn.profiles import profile_matrix
    from xbn.report.files import write_report
    from xbn.runner import run
    from xbn.scenario import builtin_paths, load

    scenarios = [load(p) for p in builtin_paths()]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = run(scenarios, ["numpy", *ids])
        write_report(analyze(result), Path(args.output_dir or tmp), profile_matrix())
        seconds = time.perf_counter() - start
    for fid, worker in result.seconds.items():
        print(f"worker {fid:12s} {worker:7.2f} s")
    print(f"xbn report (all built-in scenarios, {len(ids) + 1} frameworks) {seconds:7.2f} s")


if __name__ == "__main__":
    main()
