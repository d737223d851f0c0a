"""Why a framework differs: the smallest change to the reference's switches that
reproduces all of its rows. ``candidates`` lists the settings to try, ``search`` explains a
diff table (``explain_diffs``), ``bounds`` the rounding-error intervals of the batch
statistics, ``changes`` what moved between two versions for the upgrade guard; ``rerun``
(``reruns``) is the one way all of them, the fuzzer and the version matrix run the reference
under a setting. Not to be confused with the command ``xbn explain``, which prints the
semantics matrix of ``xbn.profiles``.
"""

from __future__ import annotations

from .reruns import Setting, describe, rerun
from .search import explain_diffs

__all__ = ["Setting", "describe", "explain_diffs", "rerun"]
