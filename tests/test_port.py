"""The porting aid against the real frameworks: translate, convert, audit, verify.

Translations are checked by building the printed constructor in the target framework and
reading its attributes back; conversions by loading the written files into real models;
verification by real models that agree, and by ports with a known mistake that must fail.
Keras is imported once, in this module (TensorFlow backend).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from xbn.cli import cli  # noqa: E402
from xbn.frameworks.registry import (  # noqa: E402
    CONVENTIONS,
    PORT_IDS,
    decay_from_native,
    native_momentum,
)
from xbn.port import PortError, audit, audit_file, convert_file, translate  # noqa: E402
from xbn.port.formats import read  # noqa: E402
from xbn.profiles.facts import PROFILES  # noqa: E402
from xbn.testing import assert_bn_equivalent, compare_bn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


@pytest.fixture(scope="module")
def torch():
    import torch

    return torch


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory, keras):
    """A trained-looking Keras model: conv, 3 BN (one center=False, one frozen), dense."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.BatchNormalization(center=False, momentum=0.9, name="bn_b")(x)
    frozen = keras.layers.BatchNormalization(epsilon=1e-5, name="bn_c")
    x = frozen(x)
    frozen.trainable = False
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))
    for layer in model.layers:  # non-trivial values everywhere
        layer.set_weights([RNG.uniform(0.5, 1.5, w.shape).astype("float32")
                           for w in layer.get_weights()])
    d = tmp_path_factory.mktemp("keras")
    model.save(d / "m.keras")
    model.save_weights(d / "m.weights.h5")
    return d / "m.keras"


def arrays(path):
    return [(layer.name, {r: v.copy() for r, v in layer.values.items()}) for layer in read(path).layers]


# translate ------------------------------------------------------------------------------------

def test_keras_to_torch_maps_momentum_and_epsilon():
    t = translate("keras", "torch", momentum=0.99, epsilon=1e-3, features=64, rank=4)
    assert t.call == "torch.nn.BatchNorm2d"
    assert t.kwargs == {"num_features": 64, "momentum": 0.01, "eps": 0.001}
    topics = {n.topic for n in t.notes}
    assert {"momentum", "epsilon", "freeze", "variance", "mode"} <= topics
    text = t.to_text()
    assert "model.train()" in text and "requires_grad_(False)" in text and "n/(n-1)" in text


def test_defaults_are_the_source_frameworks_from_profiles():
    t = translate("torch", "keras")
    assert t.kwargs["momentum"] == PROFILES["torch"]["default_momentum"].value
    assert t.kwargs["epsilon"] == PROFILES["torch"]["default_epsilon"].value
    assert t.kwargs["axis"] == 1  # torch's (N, C, ...) data
    t = translate("keras", "flax")
    assert t.kwargs["epsilon"] == PROFILES["keras"]["default_epsilon"].value
    assert "mutable=['batch_stats']" in t.to_text()


@pytest.mark.parametrize("source", PORT_IDS)
@pytest.mark.parametrize("target", PORT_IDS)
def test_every_pair_preserves_the_decay(source, target):
    momentum = native_momentum(source, 0.863)  # 0.137 in torch's (and MLX's) direction
    t = translate(source, target, momentum=momentum, epsilon=2.5e-4, features=7, rank=4, axis=None)
    kw = CONVENTIONS[target].momentum_kw
    assert decay_from_native(target, t.kwargs[kw]) == pytest.approx(0.863, abs=1e-12)
    eps_kw = CONVENTIONS[target].epsilon_kw
    assert t.kwargs[eps_kw] == 2.5e-4


def _build(t, keras):
    """Execute the printed constructor and return the layer object."""
    code = t.code.replace("=C", "=5").replace("rngs=rngs", "rngs=nnx.Rngs(0)")
    scope: dict = {"train": True}  # flax's constructor reads the module's `train` argument
    exec(code, scope)  # the code a user would paste
    return scope["bn"]


@pytest.mark.parametrize("source,target,args", [
    ("keras", "torch", dict(momentum=0.95, epsilon=1e-4, features=5, rank=2)),
    ("torch", "keras", dict(momentum=0.2, epsilon=1e-2, affine=False)),
    ("flax", "torch", dict(momentum=0.8, epsilon=1e-3, center=False, scale=False, rank=5)),
    ("keras", "torch", dict(momentum=0.9, center=False, features=5, rank=2)),
    ("torch", "flax-nnx", dict(momentum=0.3, features=5)),
    ("torch", "flax", dict(momentum=0.05, epsilon=3e-3, axis="1")),
    ("keras", "equinox", dict(momentum=0.7, features=5)),
])
def test_printed_code_builds_the_equivalent_layer(source, target, args, keras):
    t = translate(source, target, **args)
    bn = _build(t, keras)
    decay = 1 - args["momentum"] if source == "torch" else args["momentum"]
    if target == "torch":
        assert bn.momentum == pytest.approx(1 - decay) and bn.num_features == 5
        assert (bn.weight is not None) == args.get("scale", True)
        assert (bn.bias is not None) == args.get("center", True)
        assert type(bn).__name__ == {2: "BatchNorm1d", 5: "BatchNorm3d"}[args["rank"]]
    elif target in ("keras", "tf-keras"):
        assert bn.momentum == pytest.approx(decay)
        assert bn.center == args.get("affine", True)
    else:
        assert bn.momentum == pytest.approx(decay)
    if "axis" in args:
        assert bn.axis == int(args["axis"])
    eps = getattr(bn, "epsilon", getattr(bn, "eps", None))
    assert eps == args.get("epsilon", PROFILES[source]["default_epsilon"].value)


@pytest.mark.parametrize("source,target,args,words", [
    ("keras", "torch", dict(scale=False), "cannot split"),
    ("torch", "keras", dict(momentum="none"), "cumulative"),
    ("torch", "flax", dict(center=True, scale=False), "cannot split"),
    ("haiku", "torch", {}, "no default"),
    ("torch", "keras", dict(axis="-1"), "no axis"),
    ("flax", "keras", dict(axis="1,2"), "single int"),
    ("keras", "torch", dict(track_running_stats=False), "only torch"),
    ("keras", "torch", dict(momentum=1.5), "outside"),
])
def test_invalid_combinations(source, target, args, words):
    with pytest.raises(PortError, match=words):
        translate(source, target, **args)


def test_port_cli_text_json_and_exit_2():
    r = invoke("port", "--from", "torch", "--to", "keras", "--momentum", "0.1")
    assert r.exit_code == 0 and "keras.layers.BatchNormalization(" in r.output
    assert "momentum=0.9" in r.output
    r = invoke("port", "--from", "keras", "--to", "flax-nnx", "--features", "8", "--format", "json")
    data = json.loads(r.output)
    assert data["target"]["kwargs"]["num_features"] == 8 and data["target"]["kwargs"]["epsilon"] == 1e-3
    r = invoke("port", "--from", "keras", "--to", "torch", "--no-scale")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "xbn: error:" in r.output


def test_scale_without_center_follows_the_installed_torch(monkeypatch, torch):
    """torch >= 2.12 builds a weight without a bias (bias=False); port says so, and refuses
    it for an older torch, naming the release that brought it."""
    r = invoke("port", "--from", "keras", "--to", "torch", "--no-center", "--features", "3",
               "--rank", "2")
    assert r.exit_code == 0, r.output
    code = next(line for line in r.output.splitlines() if line.startswith("bn = "))
    assert "bias=False" in code and "affine" not in code
    bn = eval(code[len("bn = "):], {"torch": torch})  # the line a user would paste
    assert bn.weight is not None and bn.bias is None
    assert f"torch >= 2.12; installed: torch {torch.__version__}" in r.output
    for where in ("xbn.frameworks.kinds.installed", "xbn.frameworks.registry.installed"):
        monkeypatch.setattr(where, lambda dist: "2.11.0" if dist == "torch" else None)
    with pytest.raises(PortError, match=r"cannot split .*torch >= 2\.12; installed: torch 2\.11"):
        translate("keras", "torch", center=False)


def test_help_imports_no_framework():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom xbn.cli import cli\n"
            "for a in (['--help'], ['port', '--help'], ['convert', '--help'], ['audit', '--help']):\n"
            "    assert CliRunner().invoke(cli, a).exit_code == 0\n"
            "r = CliRunner().invoke(cli, ['port', '--from', 'keras', '--to', 'torch'])\n"
            "assert r.exit_code == 0, r.output\n"
            "heavy = ('torch', 'tensorflow', 'keras', 'tf_keras', 'jax', 'flax', 'h5py', 'pandas')\n"
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# convert --------------------------------------------------------------------------------------

def test_keras_torch_keras_round_trip_is_identical(keras_file, tmp_path, torch):
    pt = tmp_path / "bn.pt"
    result = convert_file(keras_file, pt)
    sd = torch.load(pt, weights_only=True)
    assert list(sd)[:5] == ["bn_a.weight", "bn_a.bias", "bn_a.running_mean", "bn_a.running_var",
                            "bn_a.num_batches_tracked"]
    assert torch.equal(sd["bn_b.bias"], torch.zeros(4))  # center=False: zeros, with a note
    assert any("no beta" in n for n in result.all_notes())
    assert "conv" in " ".join(result.not_converted)
    # back into the original archive: every array (BN and others) identical
    back = tmp_path / "back.keras"
    convert_file(pt, back, template=keras_file)
    for (na, a), (nb, b) in zip(arrays(keras_file), arrays(back), strict=True):
        assert na == nb and a.keys() == b.keys()
        for role in a:
            assert a[role].dtype == b[role].dtype and np.array_equal(a[role], b[role])
    with zipfile.ZipFile(keras_file) as za, zipfile.ZipFile(back) as zb:
        assert za.read("config.json") == zb.read("config.json")
    # without a template: a Keras 3 .weights.h5 that Keras itself can load
    h5 = tmp_path / "back.weights.h5"
    convert_file(pt, h5)
    assert [n for n, _ in arrays(h5)] == ["bn_a", "bn_b", "bn_c"]


def test_fresh_weights_file_loads_into_keras(tmp_path, keras, torch):
    bns = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3))
    for m in bns:
        m.running_mean.uniform_(); m.running_var.uniform_(1, 2); m.weight.data.uniform_()  # noqa: E702
    torch.save(bns.state_dict(), tmp_path / "s.pt")
    convert_file(tmp_path / "s.pt", tmp_path / "k.weights.h5")
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(),
                              keras.layers.BatchNormalization()])
    model.load_weights(tmp_path / "k.weights.h5")
    got = model.layers[1].get_weights()
    assert np.array_equal(got[0], bns[1].weight.detach().numpy())
    assert np.array_equal(got[3], bns[1].running_var.numpy())


def test_into_torch_template_and_flax(keras_file, tmp_path, torch):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4))
    torch.save(net.state_dict(), tmp_path / "init.pt")
    r = convert_file(keras_file, tmp_path / "net.pt", template=tmp_path / "init.pt",
                     num_batches_tracked=7)
    assert r.pairs == [("bn_a", "1"), ("bn_b", "2"), ("bn_c", "3")] and r.passed_through == 2
    net.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True), strict=True)
    assert int(net[1].num_batches_tracked) == 7
    src = dict(arrays(keras_file))
    assert np.array_equal(net[3].running_var.numpy(), src["bn_c"]["var"])
    for ext in ("msgpack", "npz"):  # flax, then back: same arrays
        convert_file(tmp_path / "net.pt", tmp_path / f"v.{ext}")
        convert_file(tmp_path / f"v.{ext}", tmp_path / f"n.{ext}.safetensors",
                     template=None, order="model")
        again = dict(arrays(tmp_path / f"n.{ext}.safetensors"))
        assert np.array_equal(again["3"]["mean"], src["bn_c"]["mean"])


def test_map_and_order(keras_file, tmp_path):
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"bn_a": "first", "bn_b": None, "bn_c": "third"}))
    r = convert_file(keras_file, tmp_path / "m.npz", name_map=mapping)
    assert r.pairs == [("bn_a", "first"), ("bn_c", "third")]
    mapping.write_text(json.dumps({"nope": "x"}))
    with pytest.raises(PortError, match="nope"):
        convert_file(keras_file, tmp_path / "m.npz", name_map=mapping)


def test_nnx_state_converts(tmp_path):
    from flax import nnx, serialization

    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    state = nnx.to_pure_dict(nnx.state(bn)) if hasattr(nnx, "to_pure_dict") else \
        nnx.state(bn).to_pure_dict()
    (tmp_path / "s.msgpack").write_bytes(serialization.msgpack_serialize({"bn": state}))
    r = convert_file(tmp_path / "s.msgpack", tmp_path / "s.pt")
    assert r.pairs == [("bn", "bn")]


def _cli_error(*args) -> str:
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("xbn: error:"), r.output
    return lines[0]


def test_bad_files_give_one_line_and_exit_2(keras_file, tmp_path, torch):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    assert "weights-only" in _cli_error("convert", tmp_path / "evil.pt", tmp_path / "o.npz")
    torch.save(torch.nn.BatchNorm1d(2), tmp_path / "module.pt")
    assert "BatchNorm1d" in _cli_error("convert", tmp_path / "module.pt", tmp_path / "o.npz")
    (tmp_path / "cut.keras").write_bytes(keras_file.read_bytes()[:300])
    assert "archive" in _cli_error("convert", tmp_path / "cut.keras", tmp_path / "o.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:100])
    _cli_error("audit", tmp_path / "cut.pt")
    (tmp_path / "bad.msgpack").write_bytes(b"\x93garbage")
    _cli_error("convert", tmp_path / "bad.msgpack", tmp_path / "o.pt")
    two = torch.nn.Sequential(torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4))
    torch.save(two.state_dict(), tmp_path / "two.pt")
    assert "3 BN layer(s)" in _cli_error("convert", keras_file, tmp_path / "o.pt",
                                         "--template", tmp_path / "two.pt")
    wide = torch.nn.Sequential(*[torch.nn.BatchNorm2d(c) for c in (4, 9, 4)])
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    msg = _cli_error("convert", keras_file, tmp_path / "o.pt", "--template", tmp_path / "wide.pt")
    assert "bn_b" in msg and "[9]" in msg
    assert "3 weights" in _cli_error("audit", keras_file.with_name("m.weights.h5"))


# audit ----------------------------------------------------------------------------------------

def test_audit_keras_file_flags_pitfalls_without_running_code(keras_file):
    a = audit_file(keras_file, target="torch")
    by = {x.name: x for x in a.layers}
    assert by["bn_c"].trainable is False and by["bn_b"].center is False
    assert not any(f.level == "error" for f in by["bn_b"].flags)  # torch >= 2.12: bias=False
    assert by["bn_b"].target_code.endswith("bias=False)")
    assert any("requires_grad_(False)" in f.text for f in by["bn_c"].flags)
    assert any(f.topic == "epsilon" for f in by["bn_a"].flags)
    assert not any(f.topic == "epsilon" for f in by["bn_c"].flags)  # 1e-5 is torch's default
    assert by["bn_a"].target_code == "torch.nn.BatchNorm2d(num_features=4, momentum=0.01, eps=0.001)"
    code = ("import sys\nfrom xbn.port import audit_file\n"
            f"audit_file({str(keras_file)!r}, target='flax')\n"
            "print([m for m in ('keras', 'tensorflow', 'torch', 'jax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_audit_live_torch_and_state_dict(tmp_path, torch):
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(3, momentum=None),
                              torch.nn.BatchNorm1d(3, track_running_stats=False),
                              torch.nn.BatchNorm1d(3, affine=False),
                              torch.nn.BatchNorm1d(3, momentum=0.9))
    net[0].requires_grad_(False)
    a = audit(net, target="keras")
    flags = {x.name: " ".join(f.text for f in x.flags) for x in a.layers}
    assert "cumulative" in flags["0"] and "#86590" in flags["0"]
    assert "track_running_stats=False" in flags["1"] and "training=True" in flags["1"]
    assert "affine=False" in flags["2"]
    assert "intended" in flags["3"]  # torch momentum 0.9 looks like a Keras value
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    r = invoke("audit", tmp_path / "sd.pt", "--target", "flax", "--format", "json")
    data = json.loads(r.output)
    assert r.exit_code == 0 and [x["name"] for x in data["layers"]] == ["0", "2", "3"]
    assert data["layers"][0]["momentum"] is None
    assert any("not stored" in f["text"] for f in data["layers"][0]["flags"])


def test_audit_live_keras_and_flax(keras, keras_file):
    import flax.linen as nn
    import jax
    from flax import nnx

    model = keras.models.load_model(keras_file)
    assert [x.trainable for x in audit(model).layers] == [True, True, False]

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            return nn.BatchNorm(use_running_average=not train, momentum=0.5, name="bn")(x)

    x = np.ones((2, 3), np.float32)
    v = Net().init(jax.random.key(0), x, train=False)
    (info,) = audit((Net(), v), target="torch", inputs=x).layers
    assert info.name == "bn" and info.momentum == 0.5 and info.features == 3
    (info,) = audit(nnx.BatchNorm(3, epsilon=1e-3, rngs=nnx.Rngs(0)), target="keras").layers
    assert info.epsilon == 1e-3 and info.training is True


# verify ---------------------------------------------------------------------------------------

def test_keras_and_torch_layers_equivalent_with_expected_variance(keras, torch):
    kb = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    kb.build((None, 5, 5, 3))
    tb = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-3)
    x = [RNG.normal(2, 3, (4, 5, 5, 3)).astype("float32") for _ in range(2)]
    report = assert_bn_equivalent(kb, tb, x, steps=3, layout_a="NHWC", layout_b="NCHW")
    var = [r for r in report.rows if r["quantity"] == "running_var"]
    assert var[0]["verdict"] == "expected" and "n=100" in var[0]["explanation"]
    assert float(tb.running_var[0]) == 1.0  # the caller's module is untouched
    assert report.k == 16


def test_unmapped_momentum_fails_with_the_table(keras, torch):
    kb = keras.layers.BatchNormalization()  # momentum 0.99
    kb.build((None, 3))
    tb = torch.nn.BatchNorm1d(3, momentum=0.99, eps=1e-3)  # copied, not mapped
    x = RNG.normal(size=(8, 3)).astype("float32")
    with pytest.raises(AssertionError) as err:
        assert_bn_equivalent(kb, tb, x)
    msg = str(err.value)
    assert "momentum mismatch" in msg and "running_mean" in msg and "differs" in msg


def test_flax_linen_and_nnx_against_torch(torch):
    import flax.linen as nn
    import jax
    from flax import nnx

    x = RNG.normal(1, 2, (6, 4)).astype("float32")
    fb = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
    v = fb.init(jax.random.key(0), x, use_running_average=True)
    tb = torch.nn.BatchNorm1d(4, momentum=0.1)
    report = assert_bn_equivalent((fb, v), tb, x, steps=2)
    assert {r["verdict"] for r in report.rows} == {"same", "expected"}
    nb = nnx.BatchNorm(4, momentum=0.9, rngs=nnx.Rngs(0))
    assert compare_bn(nb, (fb, v), x, steps=1).ok


def test_verify_cli_keras_file_against_torchscript(keras, torch, tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(epsilon=1e-3)])
    model.layers[0].set_weights([np.array(w, np.float32) for w in
                                 ([2, 1, 1], [0, 1, 0], [1, 0, 2], [1, 4, 9])])
    model.save(tmp_path / "m.keras")
    tb = torch.nn.BatchNorm1d(3, momentum=0.01, eps=1e-3)
    convert_file(tmp_path / "m.keras", tmp_path / "bn.pt")
    tb.load_state_dict({k.split(".", 1)[1]: v for k, v in
                        torch.load(tmp_path / "bn.pt", weights_only=True).items()})
    torch.jit.script(tb).save(str(tmp_path / "ts.pt"))
    np.save(tmp_path / "x.npy", RNG.normal(size=(16, 3)).astype("float32"))
    r = invoke("verify", tmp_path / "m.keras", tmp_path / "ts.pt", "--inputs", tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    assert "expected" in r.output and "bound check" in r.output  # TorchScript: no hooks
    torch.jit.script(torch.nn.BatchNorm1d(3, eps=1e-3)).save(str(tmp_path / "fresh.pt"))
    r = invoke("verify", tmp_path / "m.keras", tmp_path / "fresh.pt", "--inputs",
               tmp_path / "x.npy", "--modes", "eval")
    assert r.exit_code == 1 and "differs" in r.output
    assert "architecture" in _cli_error("verify", tmp_path / "m.keras", tmp_path / "bn.pt",
                                        "--inputs", tmp_path / "x.npy")
