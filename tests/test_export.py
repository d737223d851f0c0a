"""The export paths: xbn audit/verify on .onnx files, and the export adapters' write-back.

Models are exported here with torch by hand; the expectations are torch's own outputs or
ONNX's formulas computed in numpy.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from tests.frameworks import require_framework


def _xbn(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xbn", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch = require_framework("torch", module="torch")
    require_framework("onnxruntime")
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    torch.jit.script(model).save(str(folder / "m.pt"))
    x = torch.randn(2, 2, 5, 5)
    np.save(folder / "x.npy", x.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(folder / "folded.onnx"), dynamo=False)
        model.train()
        torch.onnx.export(model, (x,), str(folder / "train.onnx"), dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING)
    (folder / "corrupt.onnx").write_bytes(b"not a protobuf \xff\x00")
    return folder


@pytest.mark.slow  # two verify runs load torch and ORT: ~20 s each on 2 cores
def test_verify_folded_export_is_same(exported):
    done = _xbn("verify", "m.pt", "folded.onnx", "--inputs", "x.npy", cwd=exported)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same" in done.stdout and "folded" in done.stdout


@pytest.mark.slow
def test_verify_training_mode_export_names_the_rule(exported):
    done = _xbn("verify", "m.pt", "train.onnx", "--inputs", "x.npy", cwd=exported)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "training_mode=1" in done.stdout


def test_audit_flags_training_mode(exported):
    done = _xbn("audit", "train.onnx", cwd=exported)
    assert done.returncode == 0, done.stderr
    assert "[error] training_mode=1" in done.stdout


@pytest.mark.parametrize("name, words", [("folded.onnx", "no BatchNormalization"),
                                         ("corrupt.onnx", "not an ONNX model"),
                                         ("missing.onnx", "no such file")])
def test_bad_onnx_is_one_line_exit_2(exported, name, words):
    done = _xbn("audit", name, cwd=exported)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr


def test_opset_ort_refuses_is_one_line_exit_2(exported):
    onnx = require_framework("onnx", module="onnx")
    h = onnx.helper
    node = h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    info = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2, 3] if n == "x" else [3])
            for n in "xsbmv"]
    model = h.make_model(h.make_graph([node], "g", info, [h.make_tensor_value_info(
        "y", onnx.TensorProto.FLOAT, [2, 3])]), opset_imports=[h.make_opsetid("", 99)])
    onnx.save(model, str(exported / "future.onnx"))
    np.save(exported / "x2.npy", np.ones((2, 3), np.float32))
    done = _xbn("verify", "future.onnx", "future.onnx", "--inputs", "x2.npy", cwd=exported)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.slow  # exports twice through torch and ORT: ~25 s on 2 cores
def test_script_export_training_call_writes_back_population_variance():
    """torch+onnx-script: a training call runs ONNX's training mode in ORT, whose running
    variance takes the population variance (torch's takes the Bessel-corrected one). The
    TorchScript exporter traces the train-mode module's forward first, which updates torch's
    buffers once (Bessel, torch's momentum) before they become the graph's initializers."""
    require_framework("torch", module="torch")
    require_framework("onnxruntime")
    from xbn.frameworks.registry import load_adapter
    from xbn.scenario.loader import Layer

    adapter = load_adapter("torch+onnx-script")
    adapter.build(Layer(features=2, layout="NC", momentum=0.9, epsilon=1e-3))
    x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 7.0]])
    adapter.call(x, True)
    state = adapter.state()
    momentum = np.float32(0.9)  # the attribute as exported: a float32
    traced = 0.9 * 1.0 + 0.1 * x.var(axis=0, ddof=1)  # the trace's torch update
    expected = momentum * traced + (1 - momentum) * x.var(axis=0)  # ORT's ONNX update
    np.testing.assert_allclose(state["moving_variance"], expected, rtol=1e-6)
    assert any("training_mode=1" in n for n in adapter.notes)


# -- the reference's exported_training switch (xbn.reference.semantics), derived by hand -------

_X = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 7.0]])


def _reference(rule: str, **switches):
    from xbn.reference.batchnorm import ReferenceBatchNorm, Semantics
    from xbn.scenario.loader import Layer

    layer = Layer(features=2, layout="NC", momentum=0.9, epsilon=1e-3)
    return ReferenceBatchNorm(layer, Semantics(exported_training=rule, **switches))


@pytest.mark.parametrize("rule", ["inference", "traced_inference"])
def test_exported_training_call_as_inference(rule):
    bn = _reference(rule, bare_call="module_mode")
    y = bn.call(_X, True)
    np.testing.assert_allclose(y, _X / np.sqrt(1 + 1e-3))  # fresh statistics: mean 0, var 1
    np.testing.assert_array_equal(bn.moving_mean, 0.0)
    np.testing.assert_array_equal(bn.moving_variance, 1.0)
    # OpenVINO's converter leaves the module in eval mode; torch.export does not touch it
    assert bn.module_training is (rule == "traced_inference")


def test_exported_training_batch_of_one_raises_only_where_traced():
    one = _X[:1]
    with pytest.raises(ValueError, match="more than 1 value"):
        _reference("traced_inference", batch_of_one="error").call(one, True)
    y = _reference("inference", batch_of_one="error").call(one, True)
    np.testing.assert_allclose(y, one / np.sqrt(1 + 1e-3))


def test_exported_training_traced_update_moves_statistics_twice():
    """torch's trace update (Bessel), then ONNX's (population), Keras' momentum direction."""
    bn = _reference("traced_update", variance_update="unbiased")
    y = bn.call(_X, True)
    mean, population, bessel = _X.mean(0), _X.var(0), _X.var(0, ddof=1)
    traced_mean, traced_var = 0.1 * mean, 0.9 + 0.1 * bessel
    np.testing.assert_allclose(bn.moving_mean, 0.9 * traced_mean + 0.1 * mean)
    np.testing.assert_allclose(bn.moving_variance, 0.9 * traced_var + 0.1 * population)
    np.testing.assert_allclose(y, (_X - mean) / np.sqrt(population + 1e-3))


@pytest.mark.parametrize("rule", ["none", "inference", "traced_inference"])
def test_a_masked_training_call_meets_the_same_rule(rule):
    """A mask changes which rows make the batch statistics, not whether the modelled runtime
    runs a training call: inference-only backends refuse it, converters run it as inference."""
    from xbn.reference import mask
    from xbn.reference.batchnorm import NoSuchOperation

    valid = np.array([1, 1, 0])
    bn = _reference(rule, bare_call="module_mode", mask="weighted")
    if rule == "none":
        with pytest.raises(NoSuchOperation):
            mask.call(bn, _X, True, valid)
    else:
        np.testing.assert_allclose(mask.call(bn, _X, True, valid), _X / np.sqrt(1 + 1e-3))
    np.testing.assert_array_equal(bn.moving_mean, 0.0)
    np.testing.assert_array_equal(bn.moving_variance, 1.0)
    framework = _reference("framework", mask="weighted")  # the rows' statistics move it
    mask.call(framework, _X, True, valid)
    np.testing.assert_allclose(framework.moving_mean, 0.1 * _X[:2].mean(0))


def test_export_ids_declare_their_training_rule():
    from xbn.profiles.facts import PROFILES

    rules = {fid: PROFILES[fid]["exported_training"].value for fid in
             ("torch", "keras", "torch+onnx", "torch+onnx-script", "torch+openvino",
              "keras+onnx", "tf-keras+onnx", "keras+openvino")}
    assert rules == {"torch": "framework", "keras": "framework", "torch+onnx": "traced_inference",
                     "torch+onnx-script": "traced_update", "torch+openvino": "inference",
                     "keras+onnx": "framework", "tf-keras+onnx": "framework",
                     "keras+openvino": "framework"}


# -- what the exporters do to a train-mode torch module, driven by hand ----------------------

@pytest.mark.slow  # torch.export + onnxscript, then OpenVINO's converter: ~10-20 s on 2 cores
def test_torch_exporters_on_a_train_mode_module():
    torch = require_framework("torch", module="torch")
    onnx = require_framework("onnx", module="onnx")
    require_framework("onnxscript")
    torch.backends.fp32_precision = "none"  # see xbn/adapters/torch/onnx.py
    x = torch.tensor(_X, dtype=torch.float32)
    module = torch.nn.BatchNorm1d(2, momentum=0.1, eps=1e-3).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
    nodes = [n for n in program.model_proto.graph.node if n.op_type == "BatchNormalization"]
    assert len(nodes) == 1  # the dynamo exporter: an inference node for a train-mode module
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs.get("training_mode", 0) == 0
    assert module.training and int(module.num_batches_tracked) == 0  # buffers untouched
    assert float(module.running_var.sum()) == 2.0
    ov = require_framework("openvino", module="openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov.convert_model(module, example_input=x)
    assert not module.training  # OpenVINO's converter called eval() and left it there
    assert int(module.num_batches_tracked) == 0


# -- conformance: each export id behaves as its declared profile says --------------------------

EXPORT_IDS = ("torch+onnx", "torch+onnx-script", "torch+openvino", "keras+onnx",
              "tf-keras+onnx", "keras+openvino")


@pytest.mark.slow  # six export ids over the report's export scenarios: ~2 min on 2 cores
def test_export_ids_match_their_declared_profiles():
    """tests/test_conformance.py's check (the reference under the id's declared profile,
    ``xbn.profiles.facts.semantics_of``, reproduces every row at the verdict tolerance) for the
    export ids, on the built-in scenarios the committed report runs them on."""
    for name in ("torch", "tf-keras", "onnxruntime", "onnxscript", "tf2onnx", "openvino"):
        require_framework(name)
    from tests.test_conformance import _checked, _departure, _known, _profiled
    from xbn.comparison.diffs import row_at
    from xbn.execution.runner import run
    from xbn.frameworks.modes import REPORT_MODES
    from xbn.profiles.facts import semantics_of
    from xbn.scenario.loader import builtin_paths, load

    names = set().union(*(REPORT_MODES[fid] for fid in EXPORT_IDS))
    scenarios = [load(p) for p in builtin_paths() if p.stem in names]
    result = run(scenarios, list(EXPORT_IDS), timeout=1200)
    rows: dict = {}
    for o in result.observations:
        rows.setdefault((o["framework"], o["scenario"]), []).append(o)
    problems = []
    for fid in EXPORT_IDS:
        assert "error" not in result.frameworks[fid], result.frameworks[fid]
        for scenario in scenarios:
            want = _profiled(semantics_of(fid), scenario)
            checked = _checked(fid, scenario, rows)
            assert checked, (fid, scenario.name)
            for got in checked:
                why = None if _known(fid, scenario, got) else _departure(got, want.get(row_at(got)))
                if why:
                    problems.append(f"{fid} {scenario.name} {row_at(got)}: {why}")
    assert not problems, "\n".join(problems)


def test_onnx_runtime_normalizes_a_float64_graph_with_a_float32_epsilon(tmp_path):
    """The known divergence of torch+onnx on float64 layers, driven by hand: ONNX's epsilon is
    a FLOAT attribute, so ORT's output is bit-exact with float32(eps) in float64 arithmetic and
    not with eps itself (xbn/profiles/divergences.toml)."""
    torch = require_framework("torch", module="torch")
    ort = require_framework("onnxruntime")
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 2))
    mean, var = np.array([0.3, -0.1]), np.array([1.7, 0.4])
    bn = torch.nn.BatchNorm1d(2).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
    path = tmp_path / "bn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(bn, (torch.tensor(x),), str(path), dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.dtype == np.float64
    inv32 = 1.0 / np.sqrt(var + float(np.float32(1e-5)))
    np.testing.assert_array_equal(got, x * inv32 + (0.0 - mean * inv32))  # ORT's folded form
    assert not np.array_equal(got, x * (1.0 / np.sqrt(var + 1e-5)) - mean / np.sqrt(var + 1e-5))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exposed_statistics_keep_the_module_dtype(tmp_path, dtype):
    """The training-mode graph's running statistics, made graph outputs, have the module's
    type: a float64 module's typed FLOAT made ONNX Runtime refuse the graph (found by the
    fuzzer); ORT's updated statistics follow ONNX's rule (momentum weights the old value)."""
    torch = require_framework("torch", module="torch")
    onnx = require_framework("onnx", module="onnx")
    ort = require_framework("onnxruntime")
    from xbn.adapters._export.runtime import expose_statistics

    bn = torch.nn.BatchNorm1d(2).to(getattr(torch, dtype)).train()
    x = np.random.default_rng(1).normal(2.0, 1.5, (4, 2)).astype(dtype)
    path = tmp_path / "bn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(bn, (torch.tensor(x),), str(path), dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    model, names = expose_statistics(onnx.load(str(path)))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {session.get_inputs()[0].name: x}), strict=True))
    mean = out[names[0]]
    assert mean.dtype == np.dtype(dtype)
    # the export's trace ran the train-mode forward (torch: 0.1 * mean), then ORT's node:
    # 0.9 * (0.1 * mean) + 0.1 * mean (exported_training = traced_update)
    np.testing.assert_allclose(mean, 0.19 * x.mean(0), rtol=1e-6)
