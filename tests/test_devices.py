"""The device dimension of framework ids (``ID@DEVICE``, the contract's "Additions").

Without an accelerator (this machine, CI) a device id is ``unavailable`` with the reason its
engine gives, and nothing else changes. The tests marked ``gpu`` need a CUDA device and are
skipped without one; ``benchmarks/device_check.py`` runs them on a GPU machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xbn.cli import cli
from xbn.execution.cache import entry_key, key_fields
from xbn.execution.environment import device_env
from xbn.execution.environment import worker_env as _worker_env
from xbn.execution.runner import run
from xbn.frameworks.devices import DeviceError, parse, split
from xbn.scenario.loader import load

from .conftest import MINIMAL
from .frameworks import require_framework


def _cuda() -> bool:
    """A CUDA device torch can use (the NVIDIA driver first: no torch import without one)."""
    if not Path("/proc/driver/nvidia/version").exists():
        return False
    torch = require_framework("torch", module="torch")
    return torch.cuda.is_available()


gpu = pytest.mark.gpu


def needs_cuda():
    if not _cuda():
        pytest.skip("no CUDA device")


# -- ids ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, fid", [
    ("torch@cuda", "torch@cuda"), ("flax@gpu", "flax@gpu"), ("flax-nnx@gpu", "flax-nnx@gpu"),
    ("haiku@gpu", "haiku@gpu"), ("equinox@gpu", "equinox@gpu"), ("keras-jax@gpu", "keras-jax@gpu"),
    ("keras@gpu", "keras@gpu"), ("tf-keras@gpu", "tf-keras@gpu"), ("torch@cpu", "torch"),
    ("keras@CPU", "keras"), ("torch", "torch"), (" torch @cuda", "torch@cuda"),
])
def test_ids_with_a_device_parse(text, fid):
    assert parse(text) == fid


@pytest.mark.parametrize("text, words", [
    ("torch@gpu", "torch has no device 'gpu'; it runs on cpu, cuda (write torch or torch@cuda)"),
    ("flax@cuda", "flax has no device 'cuda'; it runs on cpu, gpu (write flax or flax@gpu)"),
    ("numpy@gpu", "numpy has no device 'gpu': it runs on CPU only (write numpy)"),
    ("torch@", "nothing after '@'"),
])
def test_a_device_the_framework_has_not_is_refused(text, words):
    with pytest.raises(DeviceError, match="^.*" + words.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


def test_run_refuses_an_unknown_device_with_exit_2(write_scenario):
    path = str(write_scenario(MINIMAL))
    r = CliRunner().invoke(cli, ["run", path, "-f", "numpy,torch@tpu"])
    assert r.exit_code == 2
    assert "torch has no device 'tpu'" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["run", path, "-f", "numpy,torhc@cuda"])
    assert r.exit_code == 2 and "did you mean 'torch'?" in r.stderr
    r = CliRunner().invoke(cli, ["run", path, "-r", "torch@cpu"])
    assert r.exit_code == 2 and "write 'torch'" in r.stderr


def test_commands_without_devices_refuse_a_device_id(write_scenario, tmp_path):
    """``xbn plot`` runs on CPU only: a device id is a usage error there, not a crash."""
    r = CliRunner().invoke(cli, ["plot", str(write_scenario(MINIMAL)), "-f", "torch@cuda",
                                 "-o", str(tmp_path / "p.png")])
    assert r.exit_code == 2 and "runs frameworks on CPU only" in r.stderr


# -- the worker's environment and the cache key -----------------------------------------------

def test_device_env_shows_the_device_only_to_device_ids(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cpu, cuda, gpu_jax = _worker_env("torch"), _worker_env("torch@cuda"), _worker_env("flax@gpu")
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and "XBN_DEVICE" not in cpu
    assert "CUDA_VISIBLE_DEVICES" not in cuda and cuda["XBN_DEVICE"] == "cuda"
    assert cuda["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and cuda["NVIDIA_TF32_OVERRIDE"] == "0"
    assert _worker_env("flax")["JAX_PLATFORMS"] == "cpu" and gpu_jax["JAX_PLATFORMS"] == ""
    assert gpu_jax["XLA_FLAGS"].endswith("--xla_gpu_deterministic_ops=true")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert _worker_env("torch@cuda")["CUDA_VISIBLE_DEVICES"] == "1"
    assert _worker_env("torch")["CUDA_VISIBLE_DEVICES"] == ""
    assert device_env("torch", {"a": "b"}) == {"a": "b"}


def test_cache_key_differs_by_device(write_scenario):
    scenario = load(write_scenario(MINIMAL))
    keys = {fid: entry_key(scenario, fid) for fid in ("torch", "torch@cuda", "flax", "flax@gpu")}
    assert len(set(keys.values())) == 4
    plain, cuda = key_fields(scenario, "torch"), key_fields(scenario, "torch@cuda")
    assert "accelerator" not in plain and cuda["accelerator"]["device"] == "cuda"
    assert plain["adapter"] == cuda["adapter"] and plain["versions"] == cuda["versions"]
    assert cuda["framework"] == "torch@cuda" and split(cuda["framework"]) == ("torch", "cuda")


# -- without the device: unavailable, with the engine's own reason ------------------------------

def _torch_reason() -> str:
    """What torch itself says about CUDA here, as the probe words it."""
    torch = require_framework("torch", module="torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the unavailable path cannot be seen here")
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device"


@pytest.mark.slow  # a device probe per engine
def test_device_absent_is_unavailable_and_others_unaffected(write_scenario, tmp_path):
    from xbn.execution.cache import ResultCache

    reason = _torch_reason()
    scenario = load(write_scenario(MINIMAL))
    events = []
    cache = ResultCache(tmp_path / "cache")
    result = run([scenario], ["numpy", "torch@cuda", "torch"], progress=events.append,
                 cache=cache)
    meta = result.frameworks["torch@cuda"]
    assert meta["available"] is False and meta["reason"].startswith(reason)
    assert {o["framework"] for o in result.observations} == {"numpy", "torch"}
    assert [e.message for e in events if e.kind == "unavailable"] == [meta["reason"]]
    assert result.frameworks["torch"]["available"] is True and "error" not in meta
    # torch's rows are torch's own: its BatchNorm1d driven by hand on the same batch
    import torch

    x = np.array([[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]])
    bn = torch.nn.BatchNorm1d(2, eps=1e-3, momentum=0.01)  # MINIMAL: epsilon 1e-3, Keras 0.99
    expected = bn(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    out = next(o for o in result.observations
               if o["framework"] == "torch" and o["quantity"] == "output")
    assert out["status"] == "ok" and np.array_equal(np.asarray(out["value"]), expected)
    assert len(cache.entries()) == 2  # numpy and torch; nothing kept for the absent device


@pytest.mark.slow  # a device probe per engine
def test_frameworks_lists_devices_and_reasons_without_importing_a_framework():
    """The devices are asked of each engine in its own process: this one imports none."""
    reason = _torch_reason()
    heavy = ("torch", "tensorflow", "keras", "tf_keras", "jax", "flax", "haiku", "equinox")
    code = ("import sys, json\nfrom click.testing import CliRunner\nfrom xbn.cli import cli\n"
            "r = CliRunner().invoke(cli, ['frameworks', '--format', 'json'])\n"
            "assert r.exit_code == 0, r.output\n"
            f"print(json.dumps([json.loads(r.stdout), [m for m in {heavy!r} "
            "if m in sys.modules]]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    listing, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == []
    assert listing["torch"]["devices"] == ["cpu"]
    assert listing["torch"]["absent"] == {"cuda": reason}
    assert listing["numpy"]["devices"] == ["cpu"] and listing["numpy"]["absent"] == {}
    jax = require_framework("flax", module="jax")
    try:
        jax.devices("gpu")
    except RuntimeError:
        assert listing["flax"]["absent"]["gpu"].startswith(f"jax {jax.__version__} ")
        assert listing["haiku"]["absent"] == listing["flax"]["absent"]
    assert listing["keras-torch"]["devices"] == ["cpu"]  # no device declared for it
    table = CliRunner().invoke(cli, ["frameworks", "--no-devices"])
    assert table.exit_code == 0 and "devices:" not in table.stdout


@pytest.mark.slow  # a device probe per engine
def test_cudnn_native_option_changes_nothing_on_cpu(write_scenario):
    """``[layer.native.torch] cudnn = false`` is read by the torch adapter (not passed to the
    constructor): on CPU the same bits as without it; a non-boolean is n/a with the reason."""
    plain = load(write_scenario(MINIMAL))
    off = load(write_scenario(MINIMAL.replace('name = "t"', 'name = "off"').replace(
        "features = 2", "features = 2\n[layer.native.torch]\ncudnn = false"), "off.toml"))
    bad = load(write_scenario(MINIMAL.replace('name = "t"', 'name = "bad"').replace(
        "features = 2", "features = 2\n[layer.native.torch]\ncudnn = 0"), "bad.toml"))
    result = run([plain, off, bad], ["torch"])
    out = {o["scenario"]: o for o in result.observations if o["quantity"] == "output"}
    assert out["t"]["status"] == out["off"]["status"] == "ok"
    assert np.array_equal(np.asarray(out["t"]["value"]), np.asarray(out["off"]["value"]))
    assert out["bad"]["status"] == "n/a" and "cudnn must be true or false" in out["bad"]["message"]


# -- on a GPU (skipped without CUDA) ---------------------------------------------------------

@gpu
def test_torch_cuda_matches_torch_driven_by_hand_on_cuda(write_scenario):
    """torch@cuda's rows are torch's own CUDA BatchNorm (cuDNN on), bit for bit."""
    needs_cuda()
    import torch

    scenario = load(write_scenario(MINIMAL))
    result = run([scenario], ["torch@cuda"], timeout=600)
    rows = {o["quantity"]: o for o in result.observations}
    assert all(o["status"] == "ok" for o in rows.values()), rows
    torch.use_deterministic_algorithms(True)
    bn = torch.nn.BatchNorm1d(2, eps=1e-3, momentum=0.01).cuda()  # MINIMAL's layer
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]], dtype=torch.float32).cuda()
    with torch.no_grad():
        y = bn(x).cpu().numpy()
    assert np.array_equal(np.asarray(rows["output"]["value"]), y)
    assert np.array_equal(np.asarray(rows["moving_variance"]["value"]),
                          bn.running_var.cpu().numpy())
    notes = " ".join(result.frameworks["torch@cuda"]["notes"])
    assert "cuda:0" in notes and "use_deterministic_algorithms(True)" in notes


@gpu
def test_torch_adapter_places_module_and_inputs_on_cuda(monkeypatch):
    needs_cuda()
    import torch

    from xbn.adapters.torch.adapter import TorchAdapter
    from xbn.scenario.model import Layer

    monkeypatch.setenv("XBN_DEVICE", "cuda")
    adapter = TorchAdapter("torch")
    adapter.build(Layer(features=2))
    assert adapter.module.weight.device.type == "cuda"
    assert adapter._tensor(np.ones((3, 2))).device.type == "cuda"
    assert torch.backends.cudnn.enabled is True
    adapter.build(Layer(features=2, native={"torch": {"cudnn": False}}))
    assert torch.backends.cudnn.enabled is False
    adapter.build(Layer(features=2))
    assert torch.backends.cudnn.enabled is True


@gpu
def test_jax_gpu_ids_run_on_the_gpu(write_scenario):
    needs_cuda()
    from xbn.execution.device_probe import probe_engines

    found = probe_engines(["jax"])["jax"]  # in a process of its own: none of JAX's here
    if "gpu" not in found.get("devices", []):
        pytest.skip(f"jax has no GPU here: {found}")
    require_framework("flax")
    result = run([load(write_scenario(MINIMAL))], ["flax@gpu"], timeout=600)
    assert all(o["status"] == "ok" for o in result.observations)
    assert any("default device" in n for n in result.frameworks["flax@gpu"]["notes"])
