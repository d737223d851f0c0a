"""The report's "Cross-replica BatchNorm" section, from a real run: the numpy reference and
torch (DistributedDataParallel over gloo, two processes) on the built-in
replicas-unsynchronized. The cells must say what the rows say; the facts they rest on are
checked against torch driven by hand here (no xbn code computes an expectation)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from xbn.analysis.pipeline import run_and_analyze
from xbn.comparison.diffs import QUANTITY_ORDER
from xbn.reference.semantics import REPLICA_SWITCHES
from xbn.report import render
from xbn.report.replicas import HEADERS, TITLE, outcome, replica_section
from xbn.scenario.loader import load
from xbn.scenario.model import QUANTITIES

from .frameworks import require_framework

torch = require_framework("torch", module="torch")

SCENARIO = "replicas-unsynchronized"
# the scenario's input (xbn/scenarios/replicas-unsynchronized.toml): arange(24)**1.5/10, 8x3
G = (np.arange(24, dtype=np.float64).reshape(8, 3) ** 1.5 / 10).astype(np.float32)


@pytest.fixture(scope="module")
def report():
    scenario = load(f"builtin:{SCENARIO}")
    return run_and_analyze([scenario], ["numpy", "torch"], "numpy", timeout=300)


@pytest.fixture(scope="module")
def cells(report):
    section = replica_section(report)
    assert section is not None
    return {row["framework"]: row for row in section.rows}


def _torch_running_var_after_one_call(rows: np.ndarray) -> np.ndarray:
    """torch's own BatchNorm1d (momentum 0.1 = Keras' 0.9), one training call."""
    bn = torch.nn.BatchNorm1d(3, eps=1e-3, momentum=0.1)
    bn.train()
    bn(torch.from_numpy(rows))
    return bn.running_var.detach().numpy().astype(np.float64)


@pytest.mark.slow  # every framework through the replica scenarios
def test_section_columns_and_rows(report, cells):
    section = replica_section(report)
    assert section.columns == ["framework", "engine", *(HEADERS[s] for s in REPLICA_SWITCHES),
                               SCENARIO]
    assert [r["framework"] for r in section.rows] == ["numpy", "torch"]
    assert cells["numpy"][SCENARIO] == "reference"


def test_engine_is_torch_ddp_from_the_adapters_notes(report, cells):
    """The engine cell is what torch's worker noted: torch.distributed over gloo and DDP."""
    notes = " ".join(report.frameworks["torch"]["notes"])
    assert "DistributedDataParallel" in notes  # the run really used DDP
    engine = cells["torch"]["engine"]
    assert "torch.distributed gloo" in engine and "DistributedDataParallel" in engine
    assert not engine.startswith("replicas:")  # the notes' prefix is not repeated


def test_readback_cell_names_ddp_broadcast(cells, tmp_path):
    """DDP broadcasts rank 0's buffers before each forward by default (torch's own DDP, built
    here on a one-rank gloo group: broadcast_buffers is True unless set), which the read-back
    cell says in words and code."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        ddp = DistributedDataParallel(torch.nn.BatchNorm1d(3))
        assert ddp.broadcast_buffers is True
    finally:
        dist.destroy_process_group()
    assert cells["torch"]["read-back"] == ("rank 0's buffers broadcast before each forward "
                                           "(`broadcast_from_first`)")
    assert cells["numpy"]["read-back"] == "replica 0's copy (`first_replica`)"


def test_bessel_cell_follows_the_running_variance(report, cells):
    """torch's running variance is Bessel-corrected (by hand below), so its cell names a count;
    the reference's is biased (its observed moving variance after step 0 is replica 0's copy:
    0.9 * 1 + 0.1 * var(rows 0..2, ddof=0)), so its cell says no count is used."""
    rows = G[:3]
    got = _torch_running_var_after_one_call(rows)
    unbiased = 0.9 + 0.1 * rows.astype(np.float64).var(axis=0, ddof=1)
    np.testing.assert_allclose(got, unbiased, rtol=1e-6)
    column = HEADERS["replica_variance_count"]
    assert cells["torch"][column] == "all replicas' rows (`global`)"

    o = report.obs
    ref = o[(o["framework"] == "numpy") & (o["step"] == 0) & (o["quantity"] == "moving_variance")]
    biased = 0.9 + 0.1 * rows.astype(np.float64).var(axis=0, ddof=0)
    np.testing.assert_allclose(np.asarray(ref["value"].iloc[0], dtype=np.float64), biased,
                               rtol=1e-12)
    assert cells["numpy"][column].startswith("none: the running variance is biased")


def test_outcome_cell_names_the_explaining_switches(report, cells):
    """torch's moving variance is unbiased where the reference's is biased (shown by hand in
    the test above), so torch's rows differ; the cell names each switch of their explanations
    in code font, once."""
    d = report.diffs
    mine = d[(d["scenario"] == SCENARIO) & (d["framework"] == "torch")]
    assert "differs" in set(mine.loc[mine["quantity"] == "moving_variance", "verdict"])
    cell = cells["torch"][SCENARIO]
    assert cell.startswith("explained by ")
    named = {p for e in mine["explanation"].dropna() for p in re.findall(r"\w+=\w+", e)}
    assert "variance_update=unbiased" in named
    for switch in named:
        assert cell.count(f"`{switch}`") == 1, (switch, cell)


def test_every_writer_shows_the_section(report, cells):
    md = render(report, "markdown")
    assert f"## {TITLE}" in md
    line = next(x for x in md.splitlines()
                if x.startswith("| torch |") and "DistributedDataParallel" in x)
    assert "`broadcast_from_first`" in line and cells["torch"][SCENARIO] in line
    assert md.index(f"## {TITLE}") < md.index(f"## {SCENARIO}")  # before the scenarios

    table = render(report, "table")
    assert f"== {TITLE}" in table
    assert "  read-back: rank 0's buffers broadcast before each forward" in table

    page = render(report, "html")
    assert "<section id='replicas'>" in page and "href='#replicas'" in page
    assert "<code>broadcast_from_first</code>" in page

    doc = json.loads(render(report, "json"))
    assert doc["replicas"]["rows"] == replica_section(report).rows


def test_no_section_without_replicas():
    """A report whose scenarios have no replicas has no such section in any writer."""
    rep = run_and_analyze([load("builtin:seed-keras")], ["numpy"], "numpy", timeout=120)
    assert replica_section(rep) is None
    assert TITLE not in render(rep, "markdown") and TITLE not in render(rep, "table")
    assert "id='replicas'" not in render(rep, "html")
    assert "replicas" not in json.loads(render(rep, "json"))


def test_outcome_words_for_given_rows():
    """Pure formatting of diff rows as the diff table holds them: worst first, each distinct
    explanation once, the 'layer not built' prefix dropped, n/a with its reason."""
    def rows(*items):
        return pd.DataFrame([dict(zip(("verdict", "explanation", "message"), it, strict=True))
                             for it in items])

    assert outcome(rows(("same", None, None))) == "same"
    assert outcome(rows()) == "—"
    assert outcome(rows(("n/a", None, "layer not built: needs equal shards"),
                        ("n/a", None, "layer not built: needs equal shards"))) == \
        "n/a: needs equal shards"
    assert outcome(rows(("differs", "replica_readback=mean_of_replicas", None),
                        ("error", "synchronized_statistics=error", "ValueError: refused"))) == \
        ("error as declared (`synchronized_statistics=error`): ValueError: refused; "
         "explained by `replica_readback=mean_of_replicas`")
    assert outcome(rows(("differs", "unexplained: no single switch", None))) == \
        "differs, unexplained"
    assert outcome(rows(("error", "known divergence: on CPU ...", "ValueError: GPU only"),
                        ("differs", "known divergence: on CPU ...", None))) == \
        "known divergence: ValueError: GPU only"


def test_every_quantity_has_a_place_in_the_order():
    """Findings are sorted by QUANTITY_ORDER: a quantity missing there (replica copies, renorm
    statistics, the batch counter) would sink to the end of every table."""
    assert set(QUANTITIES) <= set(QUANTITY_ORDER)
