"""Worker process: runs every scenario through one adapter and streams observations.

Protocol: one JSON document on stdin ({"framework", "scenarios"}); JSON lines on stdout:
{"type": "hello", "versions", "notes"}, {"type": "obs", ...} per observation,
{"type": "scenario_done", "scenario"}, {"type": "done"}. The framework's own prints are sent
to stderr so that they can never corrupt the protocol. ``--serve`` keeps one worker up for
many batches (see :func:`serve`).
"""

from __future__ import annotations

import json
import os
import random
import sys

DETERMINISM_ENV = {
    "PYTHONHASHSEED": "0",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_DETERMINISTIC_OPS": "1",
    "JAX_PLATFORMS": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "KERAS_HOME": os.path.join(os.path.expanduser("~"), ".keras"),
}


REPLICAS_ENV = "XBN_REPLICAS"  # how many host devices the worker's engine should offer


def prepare_replicas(scenarios: list[dict]) -> None:
    """Before the framework is imported: offer as many host devices as the request's
    scenarios have replicas (JAX reads ``--xla_force_host_platform_device_count`` once, at
    start; TensorFlow's logical CPU devices are configured by the keras engine from
    ``XBN_REPLICAS`` before its first op). A request without replicas changes nothing."""
    count = max((len(s["layer"].get("replicas") or ()) for s in scenarios), default=0)
    if count < 2:
        return
    os.environ[REPLICAS_ENV] = str(count)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _protocol_stream():
    """Keep the real stdout for the protocol; point fd 1 at stderr for everything else."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def serve(proto) -> int:
    """``--serve``: one worker for a whole fuzzing campaign (``xbn.fuzz.session``), so the
    framework is imported once. Reads JSON lines until EOF: the first {"framework", "module"},
    then one {"scenarios": [...]} per batch, answered like a one-shot run's scenarios and
    closed by {"type": "batch_done"}."""
    from .adapters.base import run_scenario
    from .registry import load_adapter
    from .scenario import Scenario

    request = json.loads(sys.stdin.readline())
    random.seed(0)
    adapter = load_adapter(request["framework"], request.get("module"))
    proto.write(json.dumps({"type": "hello", "versions": adapter.versions(),
                            "notes": adapter.notes}) + "\n")
    for line in sys.stdin:
        for data in json.loads(line)["scenarios"]:
            scenario = Scenario.from_dict(data)
            for obs in run_scenario(adapter, scenario):
                proto.write(json.dumps({"type": "obs", **obs}, allow_nan=True) + "\n")
            proto.write(json.dumps({"type": "scenario_done", "scenario": scenario.name}) + "\n")
        proto.write(json.dumps({"type": "batch_done"}) + "\n")
    return 0


def main() -> int:
    proto = _protocol_stream()
    if "--serve" in sys.argv[1:]:
        return serve(proto)
    request = json.loads(sys.stdin.read())
    framework = request["framework"]
    random.seed(0)
    prepare_replicas(request["scenarios"])

    from .adapters.base import run_scenario
    from .registry import load_adapter
    from .scenario import Scenario

    adapter = load_adapter(framework, request.get("module"))
    proto.write(json.dumps({"type": "hello", "versions": adapter.versions(),
                            "notes": adapter.notes}) + "\n")
    for data in request["scenarios"]:
        scenario = Scenario.from_dict(data)
        for obs in run_scenario(adapter, scenario):
            proto.write(json.dumps({"type": "obs", **obs}, allow_nan=True) + "\n")
        proto.write(json.dumps({"type": "scenario_done", "scenario": scenario.name,
                                "notes": adapter.notes}) + "\n")
    adapter.close()
    proto.write(json.dumps({"type": "done"}) + "\n")
    proto.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
