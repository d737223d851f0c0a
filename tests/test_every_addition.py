"""Issue 11's bar: scenarios using every addition of the contract at once run through every
installed framework with no ``error`` row raised by xbn's own code.

``tests/additions/``: ``every-addition`` (all layer and step additions together: most
frameworks are n/a for renorm with ghost batches), ``every-addition-common`` (what most
frameworks express together: mask, chained steps, trace, mid-run set, reset, an empty batch,
mixed precision) and ``every-addition-replicas`` (replicas with the additions they accept).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from xbn.execution.runner import run
from xbn.frameworks.registry import availability
from xbn.scenario.loader import load

pytestmark = pytest.mark.slow  # every addition through every framework

SCENARIOS = sorted((Path(__file__).parent / "additions").glob("*.toml"))


@pytest.fixture(scope="module")
def result():
    return run([load(p) for p in SCENARIOS])


def test_no_error_row_comes_from_xbn(result):
    ours = [(o["scenario"], o["framework"], o["step"], o["quantity"], o["message"])
            for o in result.observations
            if o["status"] == "error" and o.get("origin") in ("xbn", "unknown", None)]
    assert not ours, ours


# Frameworks that cannot build the common scenario's layer at all, and the declared reason
# their every row carries (the scenario is float16 with float32 parameters).
UNBUILDABLE = {"paddle": "CPU batch_norm kernel is registered for float32 and float64 only"}


def test_every_framework_runs_the_common_additions(result):
    """Not a run of n/a rows only: every installed framework expresses most of them, except
    where its layer cannot be built, which every row then says."""
    installed = [f for f, a in availability().items() if a["available"]]
    for fid in installed:
        rows = [o for o in result.observations if o["framework"] == fid
                and o["scenario"] == "every-addition-common"]
        if fid in UNBUILDABLE:
            assert rows and all(o["status"] == "n/a" and UNBUILDABLE[fid] in o["message"]
                                for o in rows), (fid, rows[:2])
            continue
        ok = [o for o in rows if o["status"] == "ok"]
        assert len(ok) > 30, (fid, len(ok))


def test_traced_rows_carry_their_repetition(result):
    reps = {o.get("rep") for o in result.observations
            if o["framework"] == "numpy" and o["scenario"] == "every-addition-common"
            and o["step"] == 1}
    assert reps == {0, 1, 2}
