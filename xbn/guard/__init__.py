"""The upgrade guard: snapshots of observations (``snapshot``), re-running and classifying
what changed after an upgrade (``check``), and several version sets side by side
(``matrix``). ``xbn.guard.check.check`` runs a check: it is not re-exported here, where its
name would hide the module of the same name.
"""

from __future__ import annotations

from .check import Change, CheckError, CheckResult, classify
from .matrix import merge
from .snapshot import Snapshot, SnapshotError, load_snapshot

__all__ = ["Change", "CheckError", "CheckResult", "Snapshot", "SnapshotError", "classify",
           "load_snapshot", "merge"]
