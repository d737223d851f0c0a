"""Run a test file as a child process under one Keras 3 backend.

Keras 3 fixes its backend when it is first imported, so each backend's checks run in a fresh
interpreter with the worker's determinism settings and that backend's environment; the child
(the test file run as a script with the framework id) prints ``OK <id>`` when every check held.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_in_backend(test_file: str, framework_id: str, timeout: float = 600) -> None:
    """Run ``test_file`` as ``python test_file framework_id``; fail with its output unless it
    exits 0 and prints ``OK framework_id``."""
    from xbn.execution.environment import DETERMINISM_ENV
    from xbn.frameworks.registry import FRAMEWORKS

    env = {**os.environ, **DETERMINISM_ENV, **FRAMEWORKS[framework_id].env,
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, test_file, framework_id], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert f"OK {framework_id}" in proc.stdout
