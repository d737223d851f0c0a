"""Every worker's environment, built in one place: the runner's workers, the fuzz session's
long-lived workers and the result cache's key all read it from here.

A worker runs one framework deterministically on one device: ``DETERMINISM_ENV`` (one thread,
no accelerator, fixed hash seed, XLA without its multi-threaded Eigen), the framework's own
variables from the registry (``KERAS_BACKEND``), and for an ``ID@DEVICE`` id the device's
(``device_env``). The caller's environment is inherited underneath; ``NUMERIC_ENV`` names the
inherited variables that can change a result, which the cache therefore keys on.
"""

from __future__ import annotations

import os

from ..frameworks.devices import CPU, DEVICE_ENV, ENGINES, base_id, split
from ..frameworks.registry import FRAMEWORKS

DETERMINISM_ENV = {
    "PYTHONHASHSEED": "0",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_DETERMINISTIC_OPS": "1",
    "JAX_PLATFORMS": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    # XLA stops reading XLA_FLAGS at a token it does not know: until wave 2 this carried a bare
    # "intra_op_parallelism_threads=1" (not an XLA flag), which ended the parsing there
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    "KERAS_HOME": os.path.join(os.path.expanduser("~"), ".keras"),
}

# Inherited by the workers (not overwritten by DETERMINISM_ENV) and able to change results.
NUMERIC_ENV = ("TF_ENABLE_ONEDNN_OPTS", "JAX_ENABLE_X64", "JAX_DEFAULT_MATMUL_PRECISION",
               "JAX_DEFAULT_DTYPE_BITS", "ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES",
               "KERAS_BACKEND", "TF_XLA_FLAGS")


def xbn_env(framework: str) -> dict[str, str]:
    """The variables xbn sets for ``framework``'s worker (without the caller's environment)."""
    return device_env(framework, {**DETERMINISM_ENV, **FRAMEWORKS[base_id(framework)].env})


def worker_env(framework: str) -> dict[str, str]:
    """The whole environment of ``framework``'s worker: the caller's, then xbn's settings."""
    env = dict(os.environ)
    env.update(DETERMINISM_ENV)
    env.update(FRAMEWORKS[base_id(framework)].env)
    return device_env(framework, env)  # ID@DEVICE: the device visible, its determinism


def group_env(frameworks: list[str]) -> dict[str, str] | None:
    """The one environment the frameworks' workers would each get, or None when two of them
    need different values of a variable (``KERAS_BACKEND`` from the caller's environment)."""
    env: dict[str, str] = {}
    for fid in frameworks:
        for key, value in worker_env(fid).items():
            if env.setdefault(key, value) != value:
                return None
    return env


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
