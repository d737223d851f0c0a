"""Issue 16's targets, measured side by side in one run (ratios, so a loaded machine moves
both sides alike; timings are never asserted in tests):

1. cold ``xbn report`` (empty cache directory: no result and no JAX compilation cache) / the
   sum of the frameworks' bare imports; with ``--baseline DIR`` (a folder holding another
   ``xbn`` package, e.g. a ``git worktree`` of an older commit) the same cold report of that
   code too, alternating with this one, so that a before/after is one run;
2. an unchanged re-run of ``xbn report`` (the cache filled by 1), in seconds; and a re-run
   with the results removed but JAX's compilation cache kept (what an edit of xbn costs);
3. ``xbn run seed-keras --frameworks keras`` / a plain Keras script making the same calls
   (``benchmarks/plain_seed_keras.py``), the best of ``--repeat`` alternating tries each;
4. peak memory of the cold report: the largest resident set of any one of its processes
   (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper whose only child is the report).

Every command runs as a user runs it, in a subprocess with its own empty cache directory, so
nothing here shares imports with what it measures, and from a copy of the xbn package taken at
the start (on ``PYTHONPATH``): the cache is keyed by xbn's source, so an edit made in the tree
while the cold report runs would otherwise turn the re-run into a second cold run. Usage:

    python benchmarks/report_vs_imports.py [--frameworks numpy,torch,keras] [--repeat 3]
                                           [--skip-report] [--baseline /tmp/base]
"""

from __future__ import annotations

import argparse
import os
import shutil
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
HERE = Path(__file__).parent
# runs cmd (argv after the script) and prints its wall time and its largest process' RSS
PEAK = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " rc)")


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=env.get("XBN_BENCH_CWD") if env else None)
    return time.perf_counter() - start


def measured(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of the largest process ``cmd`` starts, itself included."""
    out = subprocess.run([sys.executable, "-c", PEAK, *cmd], env=env, check=True, text=True,
                         stdout=subprocess.PIPE, cwd=env["XBN_BENCH_CWD"]).stdout.split()
    if out[2] != "0":
        raise SystemExit(f"{' '.join(cmd)} exited {out[2]}")
    return float(out[0]), int(out[1]) / 1024  # ru_maxrss is in KiB on Linux


def copy_of(package_root: Path, dest: Path, cache: Path) -> dict:
    """The environment that runs ``package_root/xbn`` copied to ``dest`` with an empty cache
    directory ``cache``; every variable that would bypass or share a cache is dropped."""
    shutil.copytree(package_root / "xbn", dest / "xbn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))
           and k != "XBN_SEPARATE_WORKERS"}
    # run from the copy's folder: `python -m` puts the working directory first on sys.path
    return dict(env, XBN_CACHE_DIR=str(cache), XBN_BENCH_CWD=str(dest),
                PYTHONPATH=os.pathsep.join([str(dest), os.environ.get("PYTHONPATH", "")]))


def load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frameworks", default=",".join(IMPORTS))
    parser.add_argument("--repeat", type=int, default=3, help="tries of the run-vs-script pair")
    parser.add_argument("--skip-report", action="store_true", help="only the run-vs-script pair")
    parser.add_argument("--baseline", type=Path, help="a folder holding the xbn to compare with")
    args = parser.parse_args()
    ids = [f for f in args.frameworks.split(",") if f in IMPORTS]
    xbn = [sys.executable, "-m", "xbn"]
    print(f"# {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = copy_of(HERE.parent, Path(tmp) / "src", Path(tmp) / "cache")
        lines = []
        if not args.skip_report:
            imports = 0.0
            for fid in ids:
                ienv = dict(env, KERAS_BACKEND=BACKEND.get(fid, "tensorflow"),
                            JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
                seconds = timed([sys.executable, "-c", IMPORTS[fid]], ienv)
                imports += seconds
                print(f"import {fid:12s} {seconds:7.2f} s", flush=True)
            report = [*xbn, "report", "-q", "-f", ",".join(["numpy", *ids]),
                      "--output-dir", str(Path(tmp) / "report")]
            if args.baseline:  # right before this code's cold run: one run, the same load
                benv = copy_of(args.baseline, Path(tmp) / "base", Path(tmp) / "base-cache")
                before, before_peak = measured(report, benv)
                print(f"cold xbn report, baseline {before:7.2f} s", flush=True)
            cold, peak = measured(report, env)
            print(f"cold xbn report        {cold:7.2f} s", flush=True)
            warm, _ = measured(report, env)
            print(f"unchanged re-run       {warm:7.2f} s", flush=True)
            shutil.rmtree(Path(tmp) / "cache" / "results")  # as an edit of xbn invalidates them
            shutil.rmtree(Path(tmp) / "cache" / "reports", ignore_errors=True)
            shutil.rmtree(Path(tmp) / "cache" / "explanations", ignore_errors=True)
            compiled, _ = measured(report, env)
            print(f"re-run, results gone   {compiled:7.2f} s", flush=True)
            lines += [f"cold report / sum of bare imports: {cold:.1f} / {imports:.1f} s = "
                      f"{cold / imports:.2f}x  (target <= 3x)",
                      f"unchanged re-run: {warm:.2f} s  (target <= 2 s)",
                      f"re-run with the results removed, JAX's compilation cache kept: "
                      f"{compiled:.1f} s = {compiled / cold:.2f}x the cold report",
                      f"peak memory of the cold report (largest process): {peak:.0f} MB"]
            if args.baseline:
                lines += [f"baseline ({args.baseline}): cold report / sum of bare imports: "
                          f"{before:.1f} / {imports:.1f} s = {before / imports:.2f}x, peak "
                          f"memory {before_peak:.0f} MB; this code / baseline: "
                          f"{cold / before:.2f}x"]
        plain, run = [], []
        for _ in range(args.repeat):
            plain.append(timed([sys.executable, str(HERE / "plain_seed_keras.py")], env))
            run.append(timed([*xbn, "run", "seed-keras", "-f", "keras", "-q", "--no-cache"],
                             env))
            print(f"plain script {plain[-1]:6.2f} s   xbn run {run[-1]:6.2f} s", flush=True)
        if args.repeat:
            lines.append(f"xbn run seed-keras -f keras / plain Keras script: {min(run):.2f} / "
                         f"{min(plain):.2f} s = {min(run) / min(plain):.2f}x  (target <= 1.1x;"
                         f" best of {args.repeat})")
    print(f"# {load()}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
