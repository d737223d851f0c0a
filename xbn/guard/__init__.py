"""The upgrade guard: snapshots of observations (``snapshot``), re-running and classifying
what changed after an upgrade (``check``), and several version sets side by side
(``matrix``).
"""

from __future__ import annotations

from .check import CheckError, CheckResult, check, plan
from .matrix import merge
from .snapshot import Snapshot, SnapshotError, load_snapshot

__all__ = ["check", "CheckError", "CheckResult", "load_snapshot", "merge", "plan", "Snapshot",
           "SnapshotError"]
