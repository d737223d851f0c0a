"""``xbn verify --per-layer``: the first diverging BatchNorm and the rule that moved it.

Quick tier: a three-BN MLP written in torch and in Keras with the same weights (copied by
hand here, no xbn code), each planted mistake at the *middle* BN (so "first" means something):
the expectation is where it was planted and which switch a user must fix. Full tier: the
ResNet-18 pair of ``examples/porting`` through the command line, timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.frameworks import require_framework

ROOT = Path(__file__).resolve().parents[1]
FEATURES = 6


def torch_mlp():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, FEATURES), nn.BatchNorm1d(FEATURES), nn.ReLU(),
                          nn.Linear(FEATURES, FEATURES), nn.BatchNorm1d(FEATURES), nn.ReLU(),
                          nn.Linear(FEATURES, FEATURES), nn.BatchNorm1d(FEATURES))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1.0, 1.0)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def keras_mlp(torch_model, *, at=1, momentum=0.9, epsilon=1e-5, frozen=False, swap=False):
    """The port, by hand; the mistake (if any) planted at BN number ``at``."""
    import keras

    inputs = keras.Input((5,))
    x = inputs
    bns = [m for m in torch_model if type(m).__name__ == "BatchNorm1d"]
    linears = [m for m in torch_model if type(m).__name__ == "Linear"]
    for i in range(3):
        x = keras.layers.Dense(FEATURES, name=f"dense{i}")(x)
        bn = keras.layers.BatchNormalization(momentum=momentum if i == at else 0.9,
                                             epsilon=epsilon if i == at else 1e-5,
                                             name=f"bn{i}")
        if frozen and i == at:
            bn.trainable = False
        x = bn(x)
        if i < 2:
            x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, x)
    for i in range(3):
        lin, bn = linears[i], bns[i]
        model.get_layer(f"dense{i}").set_weights([lin.weight.detach().numpy().T,
                                                  lin.bias.detach().numpy()])
        gamma, beta = bn.weight.detach().numpy(), bn.bias.detach().numpy()
        if swap and i == at:
            gamma, beta = beta, gamma
        model.get_layer(f"bn{i}").set_weights([gamma, beta, bn.running_mean.numpy(),
                                               bn.running_var.numpy()])
    return model


def inputs():
    return np.random.default_rng(3).normal(0.5, 2.0, (16, 5)).astype("float32")


@pytest.fixture(scope="module")
def tm():
    require_framework("torch")
    require_framework("keras")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    model = torch_mlp()
    keras_mlp(model)(inputs(), training=False)  # Keras' import and first call, paid once here
    return model


def _cap(name, c=4):
    from xbn.adapters.captures import Capture

    return Capture(name, 1, np.zeros((2, c)), np.zeros((2, c)))


def test_match_by_order_name_and_map():
    """Pairing needs no framework: execution order, same names in another order, --map."""
    from xbn.adapters.port_errors import PortError
    from xbn.port.per_layer import match

    a, b = [_cap("x"), _cap("y")], [_cap("p"), _cap("q")]
    assert [(p.name, q.name) for p, q in match(a, b)] == [("x", "p"), ("y", "q")]
    b2 = [_cap("y"), _cap("x")]
    assert [(p.name, q.name) for p, q in match(a, b2)] == [("x", "x"), ("y", "y")]
    assert [(p.name, q.name) for p, q in match(a, b, {"x": "q"})] == [("x", "q"), ("y", "p")]
    with pytest.raises(PortError, match="unmatched in A: y"):
        match(a, b[:1])
    with pytest.raises(PortError, match="do not have: z"):
        match(a, b, {"z": "p"})
    with pytest.raises(PortError, match="channel counts: y .4. / q .5."):
        match(a, [_cap("p"), _cap("q", 5)])


def verify(a, b, **kw):
    from xbn.port.per_layer import verify_per_layer

    return verify_per_layer(a, b, inputs(), **kw)


def test_capture_matches_torch_driven_by_hand(tm):
    """The captured input/output of the middle BN is what torch gives when run by hand."""
    import torch

    from xbn.adapters.captures import capture

    fid, caps = capture(tm, inputs(), False)
    assert fid == "torch" and [c.name for c in caps] == ["1", "4", "7"]
    with torch.no_grad():
        h = tm[3](tm[2](tm[1](tm[0](torch.from_numpy(inputs())))))
        np.testing.assert_array_equal(caps[1].input, h.numpy())
        np.testing.assert_array_equal(caps[1].output, tm[4](h).numpy())
    assert tm[4].running_mean.numpy().tolist() == caps[1].before["moving_mean"].tolist()


def test_correct_port_is_same_everywhere(tm):
    report = verify(tm, keras_mlp(tm))
    assert report.ok and report.first is None
    assert all(p.verdict in ("same", "expected") for p in report.layers)


def test_momentum_copied_verbatim(tm):
    report = verify(tm, keras_mlp(tm, momentum=0.1))
    first = report.layers[report.first]
    assert (first.a, first.b) == ("4", "bn1")
    assert report.cause["switches"]["momentum_convention"]["b"] == "torch"
    assert first.check("train", "running_mean").verdict == "differs"
    assert first.check("eval", "output").verdict == "same"


def test_epsilon_left_at_default(tm):
    report = verify(tm, keras_mlp(tm, epsilon=1e-3))
    first = report.layers[report.first]
    assert (first.a, first.b) == ("4", "bn1")
    assert [c["key"] for c in report.cause["config"]] == ["epsilon"]
    assert report.cause["scenario"]["configuration"][0]["key"] == "epsilon"


def test_trainable_false_is_not_requires_grad(tm):
    import copy

    frozen = copy.deepcopy(tm)
    frozen[4].requires_grad_(False)
    report = verify(frozen, keras_mlp(tm, frozen=True))
    first = report.layers[report.first]
    assert (first.a, first.b) == ("4", "bn1")
    assert first.check("train", "output").verdict == "differs"
    assert report.cause["switches"]["frozen_means_inference"]["a"] == "false"


def test_swapped_gamma_beta_shows_in_state_only(tm):
    report = verify(tm, keras_mlp(tm, swap=True))
    first = report.layers[report.first]
    assert (first.a, first.b) == ("4", "bn1")
    assert report.cause["state"]["swapped"] == ["gamma/beta"]
    assert report.cause["config"] == [] and report.cause["switches"] == {}


def test_command_exit_codes_and_formats(tm, tmp_path):
    from click.testing import CliRunner

    from xbn.cli.app import cli

    np.save(tmp_path / "x.npy", inputs())
    mod = "py:tests.test_per_layer"
    base = ["verify", "--per-layer", "--inputs", str(tmp_path / "x.npy")]
    runner = CliRunner()
    ok = runner.invoke(cli, [*base, f"{mod}:torch_mlp", f"{mod}:good_port"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(cli, [*base, f"{mod}:torch_mlp", f"{mod}:swapped_port", "--format",
                              "json"])
    assert bad.exit_code == 1 and json.loads(bad.output)["first_b"] == "bn1"
    html = runner.invoke(cli, [*base, f"{mod}:torch_mlp", f"{mod}:swapped_port", "--format",
                               "html"])
    assert html.exit_code == 1 and "data:image/png;base64," in html.output
    two = runner.invoke(cli, [*base, f"{mod}:torch_mlp", f"{mod}:two_bn_port"])
    assert two.exit_code == 2 and "unmatched in A: 7" in two.output


def test_across_versions_snapshot(tm, tmp_path):
    """A snapshot of A's captures compared with a fresh run of A: every BN the same."""
    from xbn.port.capture_files import load

    verify(tm, keras_mlp(tm), save_a=str(tmp_path / "old.npz"))
    stored = load(tmp_path / "old.npz")
    assert stored["framework"] == "torch" and len(stored["train"]) == 3
    report = verify(None, tm, captures_a=stored)
    assert report.ok


def good_port():
    return keras_mlp(torch_mlp())


def swapped_port():
    return keras_mlp(torch_mlp(), swap=True)


def two_bn_port():
    import torch

    return torch.nn.Sequential(*list(torch_mlp())[:6])


RESNET = "py:examples.porting.resnet:"
CASES = [("torch_model", "keras_momentum", "bn1", "momentum_convention"),
         ("torch_model", "keras_epsilon", "bn1", "epsilon"),
         ("torch_frozen", "keras_frozen", "layer1_0_bn1", "frozen_means_inference"),
         ("torch_model", "keras_swapped", "layer2_0_bn2", "gamma/beta swapped")]


@pytest.mark.slow
@pytest.mark.parametrize(("a", "b", "first_b", "word"), CASES)
def test_resnet18_mistakes(a, b, first_b, word, tmp_path):
    require_framework("torch")
    require_framework("keras")
    x = tmp_path / "x.npy"
    subprocess.run([sys.executable, "examples/porting/resnet.py", str(x)], cwd=ROOT, check=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "xbn", "verify", RESNET + a, RESNET + b,
                           "--per-layer", "--inputs", str(x), "--layout-a", "NCHW",
                           "--layout-b", "NHWC", "--format", "json"], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["first_b"] == first_b and out["first"] == first_b.replace("_", ".")
    assert word in json.dumps(out["cause"]) or word in out["cause"]["summary"]
    print(f"{b}: {seconds:.1f} s")


def _flax_weights(tm):
    bns = [m for m in tm if type(m).__name__ == "BatchNorm1d"]
    lins = [m for m in tm if type(m).__name__ == "Linear"]
    params, stats = {}, {}
    for i in range(3):
        params[f"dense{i}"] = {"kernel": lins[i].weight.detach().numpy().T,
                               "bias": lins[i].bias.detach().numpy()}
        params[f"bn{i}"] = {"scale": bns[i].weight.detach().numpy(),
                            "bias": bns[i].bias.detach().numpy()}
        stats[f"bn{i}"] = {"mean": bns[i].running_mean.numpy(), "var": bns[i].running_var.numpy()}
    return params, stats


@pytest.mark.slow
def test_flax_linen_epsilon_and_nnx_momentum(tm):
    """Flax linen (an epsilon left at 1e-3 at bn1) and NNX (torch's momentum 0.1 at b/1)."""
    require_framework("flax")
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax import nnx

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            for i in range(3):
                x = nn.Dense(FEATURES, name=f"dense{i}")(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                 epsilon=1e-3 if i == 1 else 1e-5, name=f"bn{i}")(x)
                x = nn.relu(x) if i < 2 else x
            return x

    params, stats = _flax_weights(tm)
    report = verify(tm, (MLP(), {"params": params, "batch_stats": stats}))
    assert report.layers[report.first].b == "bn1"
    assert report.cause["scenario"]["configuration"][0]["key"] == "epsilon"

    class NM(nnx.Module):
        def __init__(self, rngs):
            self.d = nnx.List([nnx.Linear(5 if i == 0 else FEATURES, FEATURES, rngs=rngs)
                               for i in range(3)])
            self.b = nnx.List([nnx.BatchNorm(FEATURES, momentum=0.1 if i == 1 else 0.9,
                                             epsilon=1e-5, rngs=rngs) for i in range(3)])

        def __call__(self, x):
            for i in range(3):
                x = self.b[i](self.d[i](x))
                x = jax.nn.relu(x) if i < 2 else x
            return x

    m = NM(nnx.Rngs(0))
    for i in range(3):
        m.d[i].kernel.value = jnp.asarray(params[f"dense{i}"]["kernel"])
        m.d[i].bias.value = jnp.asarray(params[f"dense{i}"]["bias"])
        m.b[i].scale.value = jnp.asarray(params[f"bn{i}"]["scale"])
        m.b[i].bias.value = jnp.asarray(params[f"bn{i}"]["bias"])
        m.b[i].mean.value = jnp.asarray(stats[f"bn{i}"]["mean"])
        m.b[i].var.value = jnp.asarray(stats[f"bn{i}"]["var"])
    report = verify(tm, m)
    assert report.layers[report.first].b == "b/1"
    assert report.cause["switches"]["momentum_convention"]["b"] == "torch"
