"""Environments: tests, lint, the reference report, and a version matrix for the upgrade guard.

    nox -s tests        the quick tier at the pinned versions (constraints.txt)
    nox -s tests_full   the long suites (pytest -m slow)
    nox -s lint         ruff
    nox -s report       regenerate reports/ at the pinned versions
    nox -s matrix       one environment per released Keras version (see MATRIX_KERAS): a
                        snapshot of that version set, and `xbn check` of the pinned baseline
    nox -s matrix_report   `xbn matrix` over those snapshots: reports/matrix/keras.md, the
                        behaviour across versions (run after `nox -s matrix`)
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
PYTHON = "3.11"


def install_pinned(session: nox.Session) -> None:
    # The CPU build of torch first: a plain "torch" would pull a CUDA build of several GB.
    session.install("-c", "constraints.txt", "torch==2.13.0")
    session.install("-c", "constraints.txt", "-e", ".[all,dev]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    install_pinned(session)
    session.run("pytest", "-q", *session.posargs)


@nox.session(python=PYTHON)
def tests_full(session: nox.Session) -> None:
    install_pinned(session)
    session.run("pytest", "-q", "-m", "slow", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    install_pinned(session)
    session.run("xbn", "report", "--output-dir", "reports")


# Released Keras 3 versions (all served by PyPI here) around the two BatchNorm changes that
# examples/matrix/keras-moments.toml exposes:
#   3.0.2 -> 3.0.3  TF and JAX backends: moments() from max(E[x^2] - E[sg(mean)]^2, 0) to
#                   tf.nn.moments / jnp.var (two-pass variance, gradient through the mean)
#   3.0.4 -> 3.0.5  torch backend: batch_normalization() stops detaching mean and variance
#                   (input gradients in training now flow through the batch statistics)
# 3.15.1 is the pinned version the baseline is made with, so its check must be unchanged.
# Before 3.0.5 keras.config has no set_dtype_policy (keras.mixed_precision.set_dtype_policy is
# the same function), which xbn/adapters/keras.py calls when it builds a layer: until the
# adapter falls back to it, 3.0.2 and 3.0.4 report "layer not built" instead of the change.
MATRIX_KERAS = ["3.0.2", "3.0.3", "3.0.4", "3.0.5", "3.15.1"]
MATRIX_FRAMEWORKS = "numpy,keras,keras-jax,keras-torch"
MATRIX_DIR = Path("reports/matrix")
MATRIX_BASELINE = MATRIX_DIR / "baseline-keras-pinned.json"
MATRIX_SCENARIOS = ["examples/matrix/keras-moments.toml", "seed-keras"]


@nox.session(python=PYTHON)
@nox.parametrize("keras", MATRIX_KERAS)
def matrix(session: nox.Session, keras: str) -> None:
    """One environment per Keras release: check the pinned baseline, keep the Markdown.

    The baseline is made once, at the pinned versions (constraints.txt), by whichever matrix
    environment runs first; delete it to remake it. Each environment then installs one Keras
    release over the pins (pip resolves the release's own dependencies, e.g. dm-tree for
    3.0.x) and runs `xbn check`; exit 1 (changed) is the expected outcome, not a failure.
    """
    install_pinned(session)
    MATRIX_DIR.mkdir(parents=True, exist_ok=True)
    if not MATRIX_BASELINE.exists():
        session.run("xbn", "snapshot", *MATRIX_SCENARIOS, "--frameworks", MATRIX_FRAMEWORKS,
                    "--output", str(MATRIX_BASELINE))
    session.install(f"keras=={keras}")
    session.run("xbn", "frameworks")
    # this version set's own snapshot, for `xbn matrix` (what each CI matrix job uploads)
    session.run("xbn", "snapshot", *MATRIX_SCENARIOS, "--frameworks", MATRIX_FRAMEWORKS,
                "--output", str(MATRIX_DIR / f"snapshot-keras-{keras}.json"))
    session.run("xbn", "check", str(MATRIX_BASELINE), "--frameworks", MATRIX_FRAMEWORKS,
                "--format", "markdown", "--output", str(MATRIX_DIR / f"keras-{keras}.md"),
                "--junit", str(MATRIX_DIR / f"keras-{keras}.xml"), success_codes=[0, 1])


@nox.session(python=PYTHON)
def matrix_report(session: nox.Session) -> None:
    """Merge the matrix' snapshots into one behaviour-across-versions report (the command each
    CI matrix's final job runs, examples/ci/xbn-matrix.yml)."""
    session.install("-c", "constraints.txt", "-e", ".")
    snapshots = sorted(str(p) for p in MATRIX_DIR.glob("snapshot-keras-*.json"))
    if not snapshots:
        session.error("no snapshots: run `nox -s matrix` first")
    session.run("xbn", "matrix", *snapshots, "--output", str(MATRIX_DIR / "keras.md"))
