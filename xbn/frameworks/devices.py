"""The grammar of framework ids, ``ID+MODE[@DEVICE]``, and their device dimension
(``torch@cuda``, ``flax@gpu``, ``torch+compile@cuda``; modes: ``xbn.frameworks.modes``).

A framework id without a device runs on CPU exactly as before; ``ID@cpu`` is the same id.
Which accelerator an id may name depends on the engine under its framework (torch's CUDA, JAX's
and TensorFlow's GPU), declared once here in :data:`ENGINES`. Whether that device is really
present is asked inside a worker (``xbn.execution.device_probe``): the command line imports no framework,
so ``xbn frameworks`` starts a probe process per engine and a run's worker checks its device
before anything else, answering "unavailable" with the reason when it is absent.

This module is plain data and the standard library: the CLI, the runner and the cache use it.
What a device id's worker is given lives in ``xbn.execution.environment``; asking the engines
which devices they find, in ``xbn.execution.device_probe``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .modes import ModeError, mode_named

CPU = "cpu"
DEVICE_ENV = "XBN_DEVICE"  # the worker's device, read by the adapters (``current``)
# framework id -> the engine whose devices it runs on (ids not listed run on CPU only)
ENGINES = {"torch": "torch", "flax": "jax", "flax-nnx": "jax", "haiku": "jax",
           "equinox": "jax", "keras-jax": "jax", "keras": "tensorflow", "tf-keras": "tensorflow"}
# engine -> the name its users give the accelerator (torch.device("cuda"), jax.devices("gpu"),
# tf.device("/GPU:0"))
ACCELERATOR = {"torch": "cuda", "jax": "gpu", "tensorflow": "gpu"}
# engine -> distributions that must be installed for a probe to mean anything
ENGINE_REQUIRES = {"torch": "torch", "jax": "jaxlib", "tensorflow": "tensorflow|tensorflow-cpu"}


class DeviceError(ValueError):
    """A device that the framework id cannot carry (a usage error)."""


IdError = (DeviceError, ModeError)  # every usage error of an id's spelling


def split(fid: str) -> tuple[str, str]:
    """'torch+compile@cuda' -> ('torch+compile', 'cuda'); 'torch' -> ('torch', 'cpu')."""
    base, _, device = fid.partition("@")
    return base, device or CPU


def run_id(fid: str) -> str:
    """The id without its device: what a worker runs ('torch+compile@cuda' -> 'torch+compile')."""
    return split(fid)[0]


def base_id(fid: str) -> str:
    """The registry's id under a moded or device id ('torch+compile@cuda' -> 'torch')."""
    return split(fid)[0].partition("+")[0]


def mode_of(fid: str) -> str | None:
    """The named mode of an id ('torch+compile' -> 'compile'), None for a plain id."""
    return split(fid)[0].partition("+")[2] or None


def device_of(fid: str) -> str:
    return split(fid)[1]


def devices_of(base: str) -> tuple[str, ...]:
    """Every device ``base`` may carry, CPU first."""
    engine = ENGINES.get(base)
    return (CPU, ACCELERATOR[engine]) if engine else (CPU,)


def engine_of(fid: str) -> str | None:
    return ENGINES.get(base_id(fid))


def parse(text: str) -> str:
    """A framework id as written on the command line, normalized: 'torch@cpu' is 'torch'.
    DeviceError for a device the framework has not, ModeError for a mode it has not; an
    unknown base id is the caller's check."""
    moded, device = split(text.strip())
    moded = moded.strip()
    if "@" in text and not text.partition("@")[2].strip():
        raise DeviceError(f"{text!r}: nothing after '@' (write ID, ID+MODE or ID@DEVICE)")
    base, plus, mode = moded.partition("+")
    base, mode = base.strip(), mode.strip().lower()
    if plus and not mode:
        raise ModeError(f"{text!r}: nothing after '+' (write ID or ID+MODE)")
    if mode:
        mode_named(base, mode)  # ModeError naming the modes this id has
    moded = f"{base}+{mode}" if mode else base
    device = device.strip().lower()
    if device == CPU:
        return moded
    allowed = devices_of(base)
    if device not in allowed:
        if len(allowed) == 1:
            raise DeviceError(f"{base} has no device {device!r}: it runs on CPU only "
                              f"(write {base})")
        spelled = " or ".join(f"{base}@{d}" for d in allowed if d != CPU)
        raise DeviceError(f"{base} has no device {device!r}; it runs on {', '.join(allowed)} "
                          f"(write {base} or {spelled})")
    if mode and mode_named(base, mode).export:
        raise DeviceError(f"{moded} runs in its export runtime on CPU (write {moded})")
    return f"{moded}@{device}"


def current() -> str:
    """The device of this worker (adapters place their layer and inputs on it)."""
    return os.environ.get(DEVICE_ENV) or CPU


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def accelerator(fid: str) -> dict:
    """What identifies the accelerator of a device id without importing anything (for the
    result cache's key): the NVIDIA driver's version and GPU models from /proc and the visible
    devices. Empty for a CPU id."""
    device = device_of(fid)
    if device == CPU:
        return {}
    gpus = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        model = [ln for ln in _read(str(info)).splitlines() if ln.startswith("Model:")]
        gpus.append(model[0].partition(":")[2].strip() if model else info.parent.name)
    driver = _read("/proc/driver/nvidia/version").splitlines()
    return {"device": device, "gpus": gpus, "driver": driver[0] if driver else "",
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
