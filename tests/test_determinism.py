"""Determinism, as the README claims it: the same scenarios run twice through every installed
framework (fresh worker processes each time) give identical JSON, bit for bit.

The scenarios are a subset of the built-ins chosen to cover every op (call, predict, fit with
SGD and Adam and mini-batches, grad, set, set_weights), 16-bit inputs (float16, bfloat16) and a
channels-first 5-D layout, while staying near a minute on two cores. A missing framework is
test_installed.py's failure, not this test's.
"""

from __future__ import annotations

import pytest

from xbn.analysis.pipeline import analyze
from xbn.common.jsonio import strict_loads
from xbn.execution.runner import run
from xbn.frameworks.registry import FRAMEWORK_IDS, availability
from xbn.report import render
from xbn.scenario.loader import load, resolve

pytestmark = pytest.mark.slow  # every framework over the built-in suite, twice

SCENARIOS = (
    "gradients",       # grad in training and inference mode, set_weights
    "fit-sgd-adam",    # fit: SGD then Adam, mini-batches of 4
    "fit-frozen",      # set trainable=false, fit on a frozen layer
    "layout-ncdhw",    # call, grad, predict on a channels-first 5-D input
    "dtype-float16",
    "dtype-bfloat16",
)


def _key(o: dict) -> tuple:
    return (o["framework"], o["scenario"], o["step"], o["quantity"])


def test_the_same_run_twice_gives_identical_json():
    scenarios = [load(resolve(name)) for name in SCENARIOS]
    ops = {step.op for s in scenarios for step in s.steps}
    assert ops == {"call", "predict", "fit", "grad", "set", "set_weights"}, ops
    ids = [fid for fid, info in availability().items() if info["available"]]
    assert set(ids) <= set(FRAMEWORK_IDS) and len(ids) > 1
    texts = []
    for _ in range(2):
        result = run(scenarios, ids, timeout=600)
        failed = {fid: meta["error"] for fid, meta in result.frameworks.items()
                  if meta.get("error")}
        assert not failed, failed
        texts.append(render(analyze(result), "json"))
    if texts[0] != texts[1]:
        first, second = (strict_loads(t) for t in texts)
        again = {_key(o): o for o in second["observations"]}
        moved = [f"{_key(o)}: {o['value']!r} then {again.get(_key(o), {}).get('value')!r}"
                 for o in first["observations"] if again.get(_key(o)) != o]
        assert not moved, "not deterministic:\n" + "\n".join(moved[:20])
        assert texts[0] == texts[1], "the observations agree but the JSON documents differ"
