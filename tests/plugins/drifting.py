"""Adapters built from xbn's own reference with other switches: real workers with float32
drift, a semantic difference and an error, without importing any framework (fast report and
browser tests)."""

from __future__ import annotations

from xbn.adapters.numpy.adapter import NumpyAdapter
from xbn.reference.batchnorm import Semantics

SEMANTICS = {
    "f32": Semantics(precision="native"),  # float32 rounding only: drift that grows
    "bessel": Semantics(precision="native", variance_update="unbiased"),  # torch's variance
    "strict": Semantics(precision="native", batch_of_one="error"),  # torch's batch-of-one error
}


def make_adapter(framework_id: str):
    return NumpyAdapter(framework_id, SEMANTICS[framework_id])


IDS = tuple(SEMANTICS)


def register(monkeypatch) -> list[str]:
    """Make the plugin ids known to the registry and the command line (undone with
    ``monkeypatch``)."""
    from xbn.frameworks import registry

    for fid in IDS:
        monkeypatch.setitem(registry.FRAMEWORKS, fid, registry.FrameworkInfo(
            fid, "tests.plugins.drifting", "(test)", ("numpy",), ("numpy",)))
    monkeypatch.setattr(registry, "FRAMEWORK_IDS", (*registry.FRAMEWORK_IDS, *IDS))
    return list(IDS)


def small_report(monkeypatch, scenarios=("seed-keras", "batch-of-one", "variance-update-n5")):
    """A real run of built-in scenarios through numpy and the plugins, analyzed."""
    from xbn.analysis.pipeline import run_and_analyze
    from xbn.scenario.loader import load, resolve

    register(monkeypatch)
    return run_and_analyze([load(resolve(s)) for s in scenarios], ["numpy", *IDS], "numpy",
                           timeout=120)
