"""Registry of framework adapters.

Like einops' backends, each adapter is a small module found by name and imported only
inside the worker process that runs it. Everything here is plain data, so listing
frameworks, reading their versions and validating scenarios never imports a framework.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import metadata


@dataclass(frozen=True)
class FrameworkInfo:
    id: str
    module: str  # xbn.adapters.<module>
    extra: str  # pip extra that installs it: pip install "xbn[<extra>]"
    distributions: tuple[str, ...]  # first installed one gives the version
    requires: tuple[str, ...] = ()  # every one of these must be installed
    env: dict[str, str] = field(default_factory=dict)  # set in its worker before import
    description: str = ""


FRAMEWORKS: dict[str, FrameworkInfo] = {
    info.id: info
    for info in [
        FrameworkInfo("numpy", "numpy_ref", "(core)", ("numpy",), ("numpy",),
                      description="xbn's float64 reference (the executable specification)"),
        FrameworkInfo("torch", "torch", "torch", ("torch",), ("torch",),
                      description="torch.nn.BatchNorm1d/2d/3d"),
        FrameworkInfo("keras", "keras", "tensorflow", ("keras",), ("keras", "tensorflow|tensorflow-cpu"),
                      {"KERAS_BACKEND": "tensorflow"}, "Keras 3 BatchNormalization, TensorFlow backend"),
        FrameworkInfo("keras-jax", "keras", "tensorflow,jax", ("keras",), ("keras", "jax"),
                      {"KERAS_BACKEND": "jax"}, "Keras 3 BatchNormalization, JAX backend"),
        FrameworkInfo("keras-torch", "keras", "tensorflow,torch", ("keras",), ("keras", "torch"),
                      {"KERAS_BACKEND": "torch"}, "Keras 3 BatchNormalization, PyTorch backend"),
        FrameworkInfo("tf-keras", "tf_keras", "tensorflow", ("tf-keras",), ("tf-keras",),
                      {"TF_USE_LEGACY_KERAS": "1"}, "legacy Keras 2 (tf_keras) BatchNormalization"),
        FrameworkInfo("flax", "flax_linen", "jax", ("flax",), ("flax", "optax"),
                      description="flax.linen.BatchNorm"),
        FrameworkInfo("flax-nnx", "flax_nnx", "jax", ("flax",), ("flax", "optax"),
                      description="flax.nnx.BatchNorm"),
        FrameworkInfo("haiku", "haiku", "jax", ("dm-haiku",), ("dm-haiku", "optax"),
                      description="haiku.BatchNorm"),
        FrameworkInfo("equinox", "equinox", "jax", ("equinox",), ("equinox", "optax"),
                      description="equinox.nn.BatchNorm"),
    ]
}

FRAMEWORK_IDS: tuple[str, ...] = tuple(FRAMEWORKS)


def _installed(dist_spec: str) -> str | None:
    for dist in dist_spec.split("|"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def version(framework_id: str) -> str | None:
    """Version of the framework's main distribution, or None when not installed."""
    info = FRAMEWORKS[framework_id]
    for dist in info.distributions:
        found = _installed(dist)
        if found:
            return found
    return None


def missing(framework_id: str) -> list[str]:
    """Distributions this framework needs that are not installed (empty: available)."""
    return [d for d in FRAMEWORKS[framework_id].requires if _installed(d) is None]


def available(framework_id: str) -> bool:
    return not missing(framework_id)


def availability() -> dict[str, dict]:
    """Per framework: available, version, extra, missing distributions."""
    out = {}
    for fid, info in FRAMEWORKS.items():
        miss = missing(fid)
        out[fid] = {
            "available": not miss,
            "version": version(fid),
            "extra": info.extra,
            "missing": miss,
        }
    return out


def module_path(framework_id: str) -> str:
    """Importable module of an adapter; a dotted ``module`` names one outside xbn (plugins)."""
    module = FRAMEWORKS[framework_id].module
    return module if "." in module else f"xbn.adapters.{module}"


def load_adapter(framework_id: str, module: str | None = None):
    """Import the adapter module (and so the framework). Call only inside a worker."""
    mod = importlib.import_module(module or module_path(framework_id))
    return mod.make_adapter(framework_id)
