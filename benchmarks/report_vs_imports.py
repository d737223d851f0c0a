"""Wall time of `xbn report` next to each framework's bare import time, in one run.

Workers run in parallel, so the report's floor is the slowest import plus that framework's
own steps; this script prints both so a regression in either shows. Usage:

    python benchmarks/report_vs_imports.py [--frameworks numpy,torch,keras]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

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
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or tmp
        seconds = timed([sys.executable, "-m", "xbn", "report", "--output-dir", out,
                         "--frameworks", ",".join(["numpy", *ids])])
    print(f"xbn report (all built-in scenarios, {len(ids) + 1} frameworks) {seconds:7.2f} s")


if __name__ == "__main__":
    main()
