"""The standalone scripts' ``fit`` and ``grad`` steps (``xbn repro``, the fuzzer's reports): run
outside xbn (``python -I`` in a clean folder), a family's script drives the framework's own
optimizer step and autograd the way xbn's adapter does, so every value it observes equals the
adapter's row bit for bit, and an ordinary batch shows no departure from the exact values."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.frameworks import require_framework
from xbn.scenario.loader import parse

DUMP = """
import json as _json
print("OBSERVED " + _json.dumps({k: np.asarray(v, np.float64).tolist()
                                 for k, v in OBSERVED.items()}))
"""


def _doc(layout: str, shape: list[int]) -> dict:
    adam = {"name": "adam", "lr": 0.1}
    return {"schema": 1, "name": "train", "layer": {"features": 2, "layout": layout,
                                                    "momentum": 0.9, "epsilon": 1e-3},
            "inputs": {"x": {"normal": {"mean": 1.0, "std": 2.0}, "shape": shape, "seed": 0},
                       "t": {"normal": {"mean": 0.5, "std": 1.0}, "shape": shape, "seed": 1},
                       "w": {"normal": {"mean": 0.0, "std": 1.0}, "shape": shape, "seed": 2}},
            "steps": [{"op": "fit", "input": "x", "target": "t", "optimizer": adam,
                       "epochs": 2, "batch_size": 2},
                      {"op": "fit", "input": "x", "target": "t", "optimizer": adam},
                      {"op": "grad", "input": "x", "training": True, "weights": "w"},
                      {"op": "grad", "input": "x", "training": False, "weights": "w"}]}


def _script_values(tmp_path, scenario, fid: str) -> tuple[dict, str]:
    from xbn.fuzz.repro import script

    code = script(scenario, fid)
    assert "import xbn" not in code and "from xbn" not in code
    path = tmp_path / "repro.py"
    path.write_text(code + DUMP, encoding="utf-8")
    out = subprocess.run([sys.executable, "-I", str(path)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1].removeprefix("OBSERVED ")), lines[-2]


@pytest.mark.slow  # a subprocess importing torch, then the adapter: 7-15 s on the shared machine
@pytest.mark.parametrize("fid,layout,shape", [("torch", "NC", [4, 2]),
                                              ("torch", "NHWC", [4, 2, 2, 2])])
def test_fit_and_grad_scripts_equal_the_adapter(tmp_path, fid, layout, shape):
    from xbn.adapters.base import run_scenario
    from xbn.frameworks.registry import load_adapter

    require_framework(fid)
    scenario = parse(_doc(layout, shape), "<t>")
    observed, last = _script_values(tmp_path, scenario, fid)
    rows = {f"{o['step']}|{o['quantity']}": o for o in run_scenario(load_adapter(fid), scenario)}
    assert {k.split("|")[1] for k in observed} >= {"loss", "output", "grad_input",
                                                    "grad_gamma", "grad_beta", "moving_mean"}
    for key, value in observed.items():
        row = rows[key]
        assert row["status"] == "ok", (key, row)
        np.testing.assert_array_equal(np.asarray(value), np.asarray(row["value"], np.float64),
                                      err_msg=key)
    assert "no discrepancy" in last, last
