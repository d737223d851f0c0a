"""Inside a worker: is the device of an ``ID@DEVICE`` there, and the settings that make it
deterministic. This module imports the framework's engine (torch, jax, tensorflow), so only
workers and ``python -m xbn.execution.device_probe ENGINE...`` (``xbn frameworks``) import it.

Each probe returns ``(reason, detail)``: ``reason`` None when the device is present (``detail``
names it: the GPU's model), else one line a user can act on ("torch 2.13.0+cpu is a CPU
build"). ``activate`` applies the engine's determinism settings for that device and returns
them as notes, which the worker adds to the adapter's notes (the report's framework notes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from ..frameworks.devices import ACCELERATOR, CPU, ENGINE_REQUIRES, ENGINES, split
from ..frameworks.registry import installed
from .environment import device_env


def _visible() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f" (CUDA_VISIBLE_DEVICES={value!r})" if value is not None else ""


def _torch() -> tuple[str | None, str]:
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"torch {torch.__version__} is a CPU build", ""
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device"
                f"{_visible()}"), ""
    return None, torch.cuda.get_device_name(0)


def _jax_plugins() -> list[str]:
    """Installed distributions that give jaxlib a GPU backend (jax-cuda12-plugin, ...)."""
    from importlib import metadata

    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    return sorted(n for n in names if n.startswith(("jax-cuda", "jax_cuda", "jax-rocm")))


def _jax() -> tuple[str | None, str]:
    import jax

    try:
        gpus = jax.devices("gpu")
    except RuntimeError as exc:
        plugins = _jax_plugins()
        if not plugins:
            return (f"jax {jax.__version__} has no GPU backend installed (no jax-cuda plugin; "
                    "pip install \"jax[cuda13]\")"), ""
        return f"jax {jax.__version__} finds no GPU ({', '.join(plugins)}): {exc}", ""
    return None, gpus[0].device_kind


def _tensorflow() -> tuple[str | None, str]:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        build = "" if tf.test.is_built_with_cuda() else " (a build without CUDA)"
        return f"TensorFlow {tf.__version__} sees no GPU{build}{_visible()}", ""
    details = tf.config.experimental.get_device_details(gpus[0])
    return None, str(details.get("device_name", gpus[0].name))


PROBES = {"torch": _torch, "jax": _jax, "tensorflow": _tensorflow}
TF32_OFF = "NVIDIA_TF32_OVERRIDE=0"


def _activate_torch(fid: str, name: str) -> list[str]:
    """cuDNN on (the default; ``[layer.native.torch] cudnn = false`` turns it off per layer),
    deterministic kernels, no autotuning, no TF32. torch >= 2.9 spells TF32 with
    ``fp32_precision``; reading the legacy ``allow_tf32`` after that raises (measured on
    2.13: "a mix of the legacy and new APIs"), so only one spelling is used."""
    import torch

    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)
    if hasattr(torch.backends, "fp32_precision"):
        torch.backends.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.fp32_precision = "ieee"
        tf32 = "fp32_precision='ieee'"
    else:  # pragma: no cover - torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        tf32 = "allow_tf32=False"
    return [f"{fid}: cuda:0 = {name} (CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}); cuDNN on unless [layer.native.torch] cudnn = "
            "false; torch.use_deterministic_algorithms(True), cudnn.deterministic=True, "
            f"cudnn.benchmark=False; TF32 off ({tf32}, {TF32_OFF}); "
            f"CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')}"]


def _activate_jax(fid: str, name: str) -> list[str]:
    import jax

    gpu = jax.devices("gpu")[0]
    jax.config.update("jax_default_device", gpu)
    jax.config.update("jax_default_matmul_precision", "highest")
    return [f"{fid}: {gpu} = {name} as JAX's default device (arrays and jitted computations "
            "placed there); XLA_FLAGS --xla_gpu_deterministic_ops=true, "
            f"jax_default_matmul_precision=highest, {TF32_OFF}"]


def _activate_tensorflow(fid: str, name: str) -> list[str]:
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    return [f"{fid}: /GPU:0 = {name} (TensorFlow places every op with a GPU kernel there); "
            "tf.config.experimental.enable_op_determinism(), "
            f"enable_tensor_float_32_execution(False), {TF32_OFF}, "
            "XLA_FLAGS --xla_gpu_deterministic_ops=true"]


ACTIVATE = {"torch": _activate_torch, "jax": _activate_jax, "tensorflow": _activate_tensorflow}


def prepare(fid: str) -> tuple[str | None, list[str]]:
    """For the worker of ``fid``, before its adapter is made: (reason the device is absent,
    None when present; the determinism notes of the device). A CPU id imports nothing."""
    base, device = split(fid)
    if device == CPU:
        return None, []
    engine = ENGINES[base]
    reason, name = PROBES[engine]()
    if reason is not None:
        return reason, []
    return None, ACTIVATE[engine](fid, name)


def found(engine: str) -> dict:
    """What ``xbn frameworks`` shows for an engine: devices found, and why one is absent."""
    device = ACCELERATOR[engine]
    reason, name = PROBES[engine]()
    if reason is not None:
        return {"devices": [CPU], "absent": {device: reason}}
    return {"devices": [CPU, device], "absent": {}, "names": {device: name}}


def main(argv: list[str]) -> int:
    """``python -m xbn.execution.device_probe ENGINE...``: one JSON line {engine: found(engine)} on
    stdout; everything the frameworks print goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    out = {engine: found(engine) for engine in argv if engine in PROBES}
    proto.write(json.dumps(out) + "\n")
    proto.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# ---------------------------------------------------------------------------------------
# asked from the command line's process: one probe process per engine

def probe_engines(engines: list[str], timeout: float = 300.0) -> dict[str, dict]:
    """Ask each engine in its own process (``python -m xbn.execution.device_probe ENGINE``, all at once)
    which devices it finds: engine -> {"version", "devices", "absent": {device: reason}}; an
    engine whose probe fails has "error"."""

    def one(engine: str) -> tuple[str, dict]:
        if not any(installed(d) for d in ENGINE_REQUIRES[engine].split("|")):
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
