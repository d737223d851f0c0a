"""Environments: tests, lint, the reference report, and a version matrix for the upgrade guard.

    nox -s tests        the test suite at the pinned versions (constraints.txt)
    nox -s lint         ruff
    nox -s report       regenerate reports/ at the pinned versions
"""

from __future__ import annotations

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
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    install_pinned(session)
    session.run("xbn", "report", "--output-dir", "reports")
