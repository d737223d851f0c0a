"""``xbn fuzz --models``: drawn model specs build alike in every family, a planted porting
mistake is localised to the BatchNorm it was planted in, a difference planted before any BN is
reported as outside BatchNorm, and a short seeded campaign finishes with a readable summary.

The expected layers come from where each mistake is planted (the BN whose momentum or epsilon
was set by hand, the dense layer whose weight was changed and the BN it feeds), and the
expected values of a correct port from torch run by hand: nothing here is read from xbn's
verdicts.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings

from tests.frameworks import require_framework
from xbn.fuzz import models

# three dense blocks (NC): b0 -> b1 (frozen, residual) -> b2, a second BN in block 0
SPEC = {"schema": 1, "layout": "NC", "batch": 4, "features": 3, "spatial": 2,
        "input": {"normal": {"mean": 1.0, "std": 1.0}, "seed": 0}, "seed": 1,
        "blocks": [{"op": "dense", "bn": {"momentum": 0.1, "eps": 1e-5}, "act": "relu",
                    "bn2": {"momentum": 0.1, "eps": 1e-5}, "residual": False, "frozen": False},
                   {"op": "dense", "bn": {"momentum": 0.1, "eps": 1e-5}, "act": "none",
                    "bn2": None, "residual": True, "frozen": True},
                   {"op": "dense", "bn": {"momentum": 0.1, "eps": 1e-5}, "act": "relu",
                    "bn2": None, "residual": False, "frozen": False}]}


def _drawn(n: int) -> list[dict]:
    found: list[dict] = []

    @settings(max_examples=n, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @seed(28)
    @given(models.model_spec())
    def collect(spec):
        found.append(spec)

    collect()
    return found


def _torch_output(spec: dict) -> np.ndarray:
    """torch's inference output, the model built by hand from the same weights."""
    import torch

    w, x = models.make_weights(spec), torch.from_numpy(models.make_input(spec))
    with torch.no_grad():
        for i, block in enumerate(spec["blocks"]):
            kernel, bias = torch.from_numpy(w[f"b{i}.kernel"]), torch.from_numpy(w[f"b{i}.bias"])
            if block["op"] == "dense":
                h = x @ kernel.T + bias
            else:
                h = torch.nn.functional.conv2d(x, kernel, bias, padding=kernel.shape[-1] // 2)
            names = [(f"b{i}_bn1", block["bn"])] + ([(f"b{i}_bn2", block["bn2"])]
                                                    if block.get("bn2") else [])
            for j, (name, conf) in enumerate(names):
                shape = (1, -1) + (1,) * (h.dim() - 2)
                mean = torch.from_numpy(w[f"{name}.mean"]).reshape(shape)
                var = torch.from_numpy(w[f"{name}.var"]).reshape(shape)
                h = (h - mean) / torch.sqrt(var + conf["eps"]) * \
                    torch.from_numpy(w[f"{name}.gamma"]).reshape(shape) + \
                    torch.from_numpy(w[f"{name}.beta"]).reshape(shape)
                if j == 0 and block["act"] == "relu":
                    h = torch.relu(h)
            x = h + x if block.get("residual") else h
    return x.numpy()


def _check_family(framework: str, specs: list[dict]) -> None:
    """Each drawn spec (its input made well-conditioned) builds in torch and ``framework``
    with BNs named alike, and both give the inference output of torch driven by hand."""
    for spec in specs:
        spec = {**spec, "input": {"normal": {"mean": 0.0, "std": 1.0}, "seed": 0}}
        want = _torch_output(spec)
        w, x = models.make_weights(spec), models.make_input(spec)
        a = models.builder("torch").build(spec, w, "torch")
        np.testing.assert_allclose(models.builder("torch").forward(a, x), want, rtol=1e-4,
                                   atol=1e-4)
        b = models.builder(framework)
        perm = models.transpose_b(spec)
        got = b.forward(b.build(spec, w, framework), x if perm is None else x.transpose(perm))
        if perm is not None:
            got = got.transpose(np.argsort(perm))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_drawn_specs_are_plain_data_with_fixed_shapes():
    for spec in _drawn(30):
        assert (spec["batch"], spec["features"], spec["spatial"]) in models.SHAPES
        assert 2 <= len(spec["blocks"]) <= 5
        assert not spec["blocks"][0]["frozen"] and not spec["blocks"][-1]["frozen"]
        assert all((b["op"] == "dense") == (spec["layout"] == "NC") for b in spec["blocks"])
        assert models.make_input(spec).shape == tuple(models.input_shape(spec))


@pytest.mark.slow
def test_specs_build_in_torch_and_flax():
    require_framework("torch")
    require_framework("flax")
    _check_family("flax", _drawn(4))


@pytest.mark.slow
def test_specs_build_in_keras():
    require_framework("torch")
    require_framework("keras")
    _check_family("keras", _drawn(4))


@pytest.mark.slow  # the first torch and JAX imports: up to 10 s
def test_flax_epsilon_left_at_default_is_localised():
    """B (Flax) built with block 2's epsilon at Keras' default 1e-3 instead of torch's 1e-5:
    blocks 0 and 1 agree, so the first differing BN is b2_bn1, in the inference pass."""
    require_framework("torch")
    require_framework("flax")
    from xbn.fuzz.model_verdict import ModelPair

    pair = ModelPair(SPEC)
    assert pair.judge("flax").kind == "agree"
    wrong = copy.deepcopy(SPEC)
    wrong["blocks"][2]["bn"]["eps"] = 1e-3
    v = pair.judge("flax", models.builder("flax").build(wrong, pair.weights, "flax"))
    assert (v.kind, v.layer, v.mode, v.quantity) == ("port", "b2_bn1", "eval", "output")
    assert v.cause == "port-epsilon"


def test_dense_weight_changed_is_outside_batchnorm():
    """A Flax port whose block 1 dense kernel differs by 0.5 in one entry: b1_bn1 is the first
    BN whose results differ, and its input (that dense layer's output) differs already."""
    require_framework("torch")
    require_framework("flax")
    from xbn.fuzz.model_verdict import ModelPair

    pair = ModelPair(SPEC)
    module, variables = models.builder("flax").build(SPEC, pair.weights, "flax")
    kernel = np.array(variables["params"]["b1_op"]["kernel"])
    kernel[0, 0] += 0.5
    params = {**variables["params"], "b1_op": {**variables["params"]["b1_op"],
                                               "kernel": kernel}}
    v = pair.judge("flax", (module, {**variables, "params": params}))
    assert (v.kind, v.layer, v.cause) == ("outside", "b1_bn1", "outside-batchnorm")
    assert "between b0_bn2 and b1_bn1" in v.text


@pytest.mark.slow
def test_keras_momentum_copied_verbatim_is_localised():
    """torch's momentum 0.1 copied into Keras' b2_bn1 (Keras wants 1 - 0.1 = 0.9): inference
    is untouched, the training pass moves its running statistics 0.9 of the way to the batch
    instead of 0.1, so b2_bn1's running mean is the first thing that differs."""
    require_framework("torch")
    require_framework("keras")
    from xbn.fuzz.model_verdict import ModelPair

    pair = ModelPair(SPEC)
    b = pair.build("keras")
    b.get_layer("b2_bn1").momentum = 0.1
    v = pair.judge("keras", b)
    assert (v.kind, v.layer, v.mode, v.quantity) == ("port", "b2_bn1", "train",
                                                     "running_mean")
    assert v.cause == "port-momentum"
    b = pair.build("keras")
    b.get_layer("b0_bn2").epsilon = 1e-3  # Keras' default left in place
    v = pair.judge("keras", b)
    assert (v.kind, v.layer, v.quantity, v.cause) == ("port", "b0_bn2", "output",
                                                      "port-epsilon")


@pytest.mark.slow
def test_cli_models_campaign(tmp_path):
    out = tmp_path / "found"
    proc = subprocess.run([sys.executable, "-m", "xbn", "fuzz", "--models", "--budget", "20",
                           "--seed", "0", "-f", "torch,flax", "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert "models in" in proc.stderr and "BatchNorm finding(s)" in proc.stderr
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert (proc.returncode == 1) <= bool(written)
    for name in written:
        if name.endswith(".md"):
            text = (out / name).read_text()
            assert "first differing BatchNorm" in text and "python -m xbn.fuzz" in text


def test_cli_models_refuses_bad_frameworks(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xbn", "fuzz", "--models", "-f", "torch",
                           "--out", str(tmp_path / "x"), "--budget", "5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "at least one besides torch" in proc.stderr


def test_cli_models_refuses_options_that_do_not_apply(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xbn", "fuzz", "--models", "--engine", "ray",
                           "--out", str(tmp_path / "x"), "--budget", "5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--models" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
