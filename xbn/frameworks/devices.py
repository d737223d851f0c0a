"""The device dimension of framework ids: ``ID@DEVICE`` (``torch@cuda``, ``flax@gpu``).

A framework id without a device runs on CPU exactly as before; ``ID@cpu`` is the same id.
Which accelerator an id may name depends on the engine under its framework (torch's CUDA, JAX's
and TensorFlow's GPU), declared once here in :data:`ENGINES`. Whether that device is really
present is asked inside a worker (``xbn.execution.device_probe``): the command line imports no framework,
so ``xbn frameworks`` starts a probe process per engine and a run's worker checks its device
before anything else, answering "unavailable" with the reason when it is absent.

This module is plain data and the standard library: the CLI, the runner and the cache use it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def split(fid: str) -> tuple[str, str]:
    """'torch@cuda' -> ('torch', 'cuda'); 'torch' -> ('torch', 'cpu')."""
    base, _, device = fid.partition("@")
    return base, device or CPU


def base_id(fid: str) -> str:
    """The registry's id under a device id ('torch@cuda' -> 'torch')."""
    return split(fid)[0]


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
    DeviceError for a device the framework has not; an unknown base id is the caller's check."""
    base, device = split(text.strip())
    base = base.strip()
    if "@" in text and not text.partition("@")[2].strip():
        raise DeviceError(f"{text!r}: nothing after '@' (write ID or ID@DEVICE)")
    device = device.strip().lower()
    if device == CPU:
        return base
    allowed = devices_of(base)
    if device not in allowed:
        if len(allowed) == 1:
            raise DeviceError(f"{base} has no device {device!r}: it runs on CPU only "
                              f"(write {base})")
        spelled = " or ".join(f"{base}@{d}" for d in allowed if d != CPU)
        raise DeviceError(f"{base} has no device {device!r}; it runs on {', '.join(allowed)} "
                          f"(write {base} or {spelled})")
    return f"{base}@{device}"


def device_env(fid: str, env: dict[str, str]) -> dict[str, str]:
    """The worker environment of ``fid`` from the CPU one (``env``, changed in place).

    The CPU determinism settings hide every accelerator (``CUDA_VISIBLE_DEVICES=""``,
    ``JAX_PLATFORMS=cpu``); a device id gives back the caller's visible devices, lets JAX pick
    its GPU backend, and adds the engines' own determinism switches: cuBLAS' fixed workspace
    (torch.use_deterministic_algorithms requires it for CUDA matmuls), TF32 off for every
    NVIDIA library (``NVIDIA_TF32_OVERRIDE=0``), XLA's deterministic GPU ops and full-precision
    JAX matmuls; and no engine takes the whole GPU's memory at start, since several workers
    share it. A CPU id is returned unchanged."""
    base, device = split(fid)
    if device == CPU:
        return env
    env[DEVICE_ENV] = device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        env["CUDA_VISIBLE_DEVICES"] = visible
    else:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    env["NVIDIA_TF32_OVERRIDE"] = "0"
    engine = ENGINES[base]
    if engine == "torch":
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    if engine in ("jax", "tensorflow"):
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()
    if engine == "jax":
        env["JAX_PLATFORMS"] = ""  # auto: the GPU plugin when installed, else CPU (probed)
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
        # workers share the GPU: JAX would take 75% of its memory at start, TensorFlow all
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if engine == "tensorflow":
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    return env


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


def probe_engines(engines: list[str], timeout: float = 300.0) -> dict[str, dict]:
    """Ask each engine in its own process (``python -m xbn.execution.device_probe ENGINE``, all at once)
    which devices it finds: engine -> {"version", "devices", "absent": {device: reason}}; an
    engine whose probe fails has "error"."""
    from .registry import _installed  # metadata only

    def one(engine: str) -> tuple[str, dict]:
        if not any(_installed(d) for d in ENGINE_REQUIRES[engine].split("|")):
            return engine, {"error": f"{engine} is not installed"}
        fid = next(f for f, e in ENGINES.items() if e == engine)
        env = device_env(f"{fid}@{ACCELERATOR[engine]}", {**os.environ,
                                                          "TF_CPP_MIN_LOG_LEVEL": "3"})
        try:
            out = subprocess.run([sys.executable, "-m", "xbn.execution.device_probe", engine],
                                 capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return engine, {"error": f"the {engine} probe exceeded {timeout:g} s"}
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
            return engine, {"error": f"the {engine} probe failed: {tail}"}
        return engine, json.loads(lines[-1])[engine]

    if not engines:
        return {}
    with ThreadPoolExecutor(max_workers=len(engines)) as pool:
        return dict(pool.map(one, engines))


def framework_devices(ids: list[str], probed: dict[str, dict]) -> dict[str, dict]:
    """Per framework id: {"devices": found, "absent": {device: reason}} from ``probe_engines``."""
    out = {}
    for fid in ids:
        engine = ENGINES.get(fid)
        if engine is None:
            out[fid] = {"devices": [CPU], "absent": {}}
            continue
        found = probed.get(engine, {})
        if "error" in found:
            out[fid] = {"devices": [CPU], "absent": {ACCELERATOR[engine]: found["error"]}}
        else:
            out[fid] = {"devices": list(found.get("devices", [CPU])),
                        "absent": dict(found.get("absent", {})),
                        "names": dict(found.get("names", {}))}
    return out
