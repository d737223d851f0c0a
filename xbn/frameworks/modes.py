"""Execution modes, the ``+MODE`` slot of a framework id: ``ID+MODE[@DEVICE]``.

A compiled or exported BatchNorm is another float program than the eager one (``torch.compile``
fuses the normalization, XLA folds constants, ONNX Runtime runs its own kernel), so xbn names
how each op runs. Every registry id has a *plain* form (no ``+MODE``) that keeps meaning what
that framework's users typically run; :data:`PLAIN` says, per op, what that is and why. The
named modes (:data:`MODES`) pin one way of running every op: ``torch+compile``,
``haiku+eager``, ``keras+xla``, and the export paths (``torch+onnx``: the layer exported at
the step, as the preceding steps left it, and run in ONNX Runtime).

Plain data and the standard library: the command line validates ids against this module
without importing a framework; an adapter reads its mode from ``Adapter.mode``.
"""

from __future__ import annotations

from dataclasses import dataclass

OPS = ("call", "predict", "fit", "grad")  # the ops whose program a mode decides


@dataclass(frozen=True)
class Mode:
    """One way of running a framework's BatchNorm.

    ``runs`` says what runs in the user's words; ``ops`` what each op runs as (an op not
    listed runs as ``runs``); ``module`` an adapter module of its own (the export paths,
    which build the layer in their framework and run it somewhere else); ``requires`` the
    distributions it needs besides the framework's, installed by ``extra``.
    """

    name: str
    runs: str
    ops: tuple[tuple[str, str], ...] = ()
    module: str | None = None
    requires: tuple[str, ...] = ()
    extra: str | None = None
    export: bool = False  # the layer leaves its framework: inference in another runtime

    def op(self, op: str) -> str:
        """What ``op`` runs as under this mode."""
        return dict(self.ops).get(op, self.runs)


@dataclass(frozen=True)
class Plain:
    """What a plain id runs, per op, and why that is the default its users meet."""

    ops: tuple[tuple[str, str], ...]
    why: str
    same_as: str | None = None  # the named mode the plain id equals, when it equals one

    def op(self, op: str) -> str:
        return dict(self.ops).get(op, "eager")


_ONNX = ("onnx", "onnxruntime")
_OPENVINO = ("openvino",)
_JAX_WHY = ("JAX users jit their steps (a jitted `apply` / train step is the program they run)")


def _tf_ops(word: str, jit: str) -> tuple[tuple[str, str], ...]:
    return (("call", f"{word}(model(x, training=...))"),
            ("predict", f"model.predict, model compiled with jit_compile={jit}"),
            ("fit", f"model.fit, model compiled with jit_compile={jit}"),
            ("grad", f"{word} around GradientTape"))


def _export_ops(call: str, runtime: str, fit: str) -> tuple[tuple[str, str], ...]:
    """An export path per op: training steps stay in the framework, inference runs the graph
    exported at the step (xbn.adapters.torch.onnx, xbn.adapters.keras.onnx)."""
    return (("call", call), ("predict", f"exported at the step (inference), run in {runtime}"),
            ("fit", fit), ("grad", "n/a: an inference runtime computes no gradients"))


_ORT = "ONNX Runtime's CPU provider"
_OV = "OpenVINO's CPU plugin"
_TORCH_FIT = "torch (eager training loop), as before exporting"
_KERAS_CALL = ("training call: Keras (eager), as before exporting; inference call: exported at "
               "the step, run in {}")
_KERAS_FIT = "Keras (model.fit), as before exporting"


def _jax_modes(jit_word: str, grad: str = "") -> tuple[Mode, ...]:
    return (Mode("eager", "every call, predict, fit step and gradient un-jitted, op by op"),
            Mode("jit", f"every call, predict, fit step and gradient under {jit_word}",
                 (("grad", grad),) if grad else ()))


MODES: dict[str, tuple[Mode, ...]] = {
    "numpy": (),
    "torch": (
        Mode("eager", "the module as called (eager PyTorch)"),
        Mode("compile", "torch.compile(module) (inductor, default options), called as the "
                        "module is"),
        Mode("onnx", "torch.onnx.export (the torch.export-based exporter) at the step, run in "
                     "ONNX Runtime's CPU provider",
             _export_ops(f"exported at the step, run in {_ORT}; a training call: torch.export "
                         "traces the train-mode forward, onnxscript writes an inference node "
                         "(statistics unchanged)", _ORT, _TORCH_FIT),
             module="xbn.adapters.torch.onnx", requires=(*_ONNX, "onnxscript"), extra="onnx",
             export=True),
        Mode("onnx-script", "torch.onnx.export(dynamo=False) (the TorchScript-based exporter) at "
                            "the step, run in ONNX Runtime's CPU provider",
             _export_ops(f"exported at the step (training=PRESERVE), run in {_ORT}; a training "
                         "call: the trace updates torch's statistics, then ONNX's training_mode=1 "
                         "node updates them again (written back)", _ORT, _TORCH_FIT),
             module="xbn.adapters.torch.onnx", requires=_ONNX, extra="onnx", export=True),
        Mode("openvino", "openvino.convert_model of the module at the step, run on OpenVINO's "
                         "CPU plugin",
             _export_ops(f"converted at the step (the converter calls eval()), run on {_OV}: "
                         "a training call runs inference", _OV, _TORCH_FIT),
             module="xbn.adapters.torch.openvino", requires=_OPENVINO,
             extra="openvino", export=True),
    ),
    "keras": (
        Mode("function", "tf.function (no XLA)", _tf_ops("tf.function", "False")),
        Mode("xla", "tf.function(jit_compile=True) (XLA)",
             _tf_ops("tf.function(jit_compile=True)", "True")),
        Mode("onnx", "model.export(format='onnx') at the step, run in ONNX Runtime's CPU "
                     "provider", _export_ops(_KERAS_CALL.format(_ORT), _ORT, _KERAS_FIT),
             module="xbn.adapters.keras.onnx",
             requires=(*_ONNX, "tf2onnx"), extra="onnx", export=True),
        Mode("openvino", "openvino.convert_model of the layer's SavedModel at the step, run on "
                         "OpenVINO's CPU plugin",
             _export_ops(_KERAS_CALL.format(_OV), _OV, _KERAS_FIT),
             module="xbn.adapters.keras.openvino",
             requires=_OPENVINO, extra="openvino", export=True),
    ),
    "tf-keras": (
        Mode("xla", "tf.function(jit_compile=True) (XLA)",
             _tf_ops("tf.function(jit_compile=True)", "True")),
        Mode("onnx", "tf2onnx.convert.from_keras at the step, run in ONNX Runtime's CPU "
                     "provider", _export_ops(_KERAS_CALL.format(_ORT), _ORT,
                                             "tf-keras (model.fit), as before exporting"),
             module="xbn.adapters.keras.onnx",
             requires=(*_ONNX, "tf2onnx"), extra="onnx", export=True),
    ),
    "keras-jax": (),
    "keras-torch": (),
    "keras-numpy": (),
    "keras-openvino": (),
    "paddle": (),
    "mlx": (),
    "flax": _jax_modes("jax.jit"),
    "flax-nnx": _jax_modes("nnx.jit"),
    "haiku": _jax_modes("jax.jit", "jax.grad of jax.jit(transformed.apply)"),
    "equinox": _jax_modes("eqx.filter_jit"),
}

_KERAS = "keras/src/trainers/trainer.py _resolve_auto_jit_compile"
_KERAS_PLAIN = (("call", "eager (layer(x, training=...))"),
                ("predict", "model.predict: tf.function; XLA only where a GPU is visible"),
                ("fit", "model.fit: tf.function train step; XLA only where a GPU is visible"),
                ("grad", "eager (GradientTape)"))
_KERAS_JAX = (("call", "eager (layer(x, training=...), op by op)"),
              ("predict", "model.predict: jax.jit predict step"),
              ("fit", "model.fit: jax.jit train step"),
              ("grad", "eager (jax.value_and_grad of stateless_call, un-jitted)"))
_KERAS_TORCH = (("call", "eager"), ("predict", "eager (no torch.compile)"),
                ("fit", "eager train step (no torch.compile)"), ("grad", "eager (autograd)"))

PLAIN: dict[str, Plain] = {
    "numpy": Plain((("call", "float64 numpy"),), "the reference has no modes"),
    "torch": Plain((), "PyTorch runs eagerly unless the user calls torch.compile", "eager"),
    "keras": Plain(_KERAS_PLAIN, "Keras users call layers eagerly and train with fit/predict, "
                   f"compiled with jit_compile='auto', which is False on a CPU-only machine "
                   f"(no XLA: tf.function graphs, the same program as keras+function) and True "
                   f"where TensorFlow sees a GPU ({_KERAS}: 'Disable XLA on CPU-only machines'; "
                   "keras/src/backend/tensorflow/trainer.py _make_function, "
                   "make_predict_function)"),
    "keras-jax": Plain(_KERAS_JAX, f"jit_compile='auto' is True on JAX ({_KERAS}, "
                       "model_supports_jit): predict and fit steps are jax.jit functions "
                       "(keras/src/backend/jax/trainer.py make_predict_function, "
                       "make_train_function); calls and xbn's gradient are eager"),
    "keras-torch": Plain(_KERAS_TORCH, f"jit_compile='auto' is False on torch ({_KERAS}: "
                         "'defaults to eager'): no op is compiled "
                         "(keras/src/backend/torch/trainer.py _should_torch_compile)"),
    "tf-keras": Plain(_KERAS_PLAIN[:1] + (
        ("predict", "model.predict: tf.function (jit_compile=None: no XLA)"),
        ("fit", "model.fit: tf.function train step (jit_compile=None: no XLA)"),
        ("grad", "eager (GradientTape)")),
        "tf_keras/src/engine/training.py compile(jit_compile=None): 'not enabled by default'; "
        "predict/fit are tf.function graphs, calls eager"),
    "keras-numpy": Plain(_KERAS_PLAIN[:1] + (("predict", "model.predict: eager numpy"),),
                         "inference only: numpy runs every op eagerly"),
    "keras-openvino": Plain(_KERAS_PLAIN[:1] + (("predict", "model.predict: an OpenVINO "
                                                             "model per call"),),
                            "inference only: each call builds and runs an OpenVINO model"),
    "paddle": Plain((), "dygraph (eager) is Paddle's default since 2.0", None),
    "mlx": Plain((("call", "lazy graph, evaluated where xbn reads values (mx.eval)"),),
                 "MLX evaluates lazily; users call modules without mx.compile"),
    "flax": Plain((("call", "eager (module.apply)"), ("predict", "eager (module.apply)"),
                   ("fit", "jax.jit train step"), ("grad", "eager (jax.grad)")),
                  "linen users call apply directly when they inspect a layer and jit their "
                  "train step"),
    "flax-nnx": Plain((("call", "eager (module(x))"), ("predict", "eager (module(x))"),
                       ("fit", "nnx.jit train step"), ("grad", "eager (nnx.grad)")),
                      "NNX users call modules directly and nnx.jit their train step"),
    "haiku": Plain((("call", "jax.jit(transformed.apply)"),
                    ("predict", "jax.jit(transformed.apply)"), ("fit", "jax.jit train step"),
                    ("grad", "jax.grad of jax.jit(transformed.apply)")), _JAX_WHY, "jit"),
    "equinox": Plain((("call", "eqx.filter_jit"), ("predict", "eqx.filter_jit"),
                      ("fit", "eqx.filter_jit train step"),
                      ("grad", "eager (eqx.filter_value_and_grad of the vmapped layer)")),
                     _JAX_WHY + "; xbn's gradient op has run eager since it was written, "
                     "equinox+jit jits it too"),
}


class ModeError(ValueError):
    """A mode the framework id has not (a usage error)."""


def modes_of(base: str) -> tuple[Mode, ...]:
    """The named modes of a registry id (none for a plugin or the reference)."""
    return MODES.get(base, ())


def mode_named(base: str, name: str) -> Mode:
    for mode in modes_of(base):
        if mode.name == name:
            return mode
    names = [m.name for m in modes_of(base)]
    if not names:
        raise ModeError(f"{base} has no execution modes (write {base})")
    raise ModeError(f"{base} has no mode {name!r}; its modes: "
                    f"{', '.join(f'{base}+{n}' for n in names)} (or {base} alone)")


def plain_of(base: str) -> Plain:
    return PLAIN.get(base, Plain((), "a plugin: as its adapter runs it"))


def op_runs(base: str, mode: str | None, op: str) -> str:
    """What ``op`` runs as for ``base`` under ``mode`` (None: the plain id)."""
    return plain_of(base).op(op) if mode is None else mode_named(base, mode).op(op)


def describe(base: str) -> dict:
    """What ``base`` runs per op as a plain id (and why), and each named mode per op: the data
    ``xbn frameworks`` and the report's framework notes print."""
    plain = plain_of(base)
    ops = [op for op in OPS if op in dict(plain.ops)] or list(OPS)
    return {"plain": {op: plain.op(op) for op in ops}, "plain_why": plain.why,
            "plain_same_as": plain.same_as,
            "modes": {f"{base}+{m.name}": {op: m.op(op) for op in OPS} for m in modes_of(base)}}



# The mode columns of the committed report (`xbn report` without --all-modes): mode id -> the
# built-in scenarios it runs; on every other scenario its column is n/a, naming this table.
# A compiled program costs a compile per (train/eval, gradient, shape) key (torch.compile
# ~5 s warm, ~15 s cold; XLA ~1.4 s), so each mode runs where a compiled program is known to
# differ from the eager one, or where the compiler meets a feature it handles apart
# (momentum=None, eval folding), and nowhere else. Why each scenario, and the measured cost:
# README "Execution modes in the report". `xbn report --all-modes` runs every mode
# everywhere.
REPORT_MODES: dict[str, tuple[str, ...]] = {
    "torch+compile": ("large-mean", "eval-folding-after-training", "cumulative-momentum"),
    "keras+xla": ("large-mean", "eval-folding-after-training", "layout-nhwc"),
    "tf-keras+xla": ("large-mean", "layout-nhwc"),
    # examples/modes/large-mean-eval.toml and large-mean-nhwc-fused.toml (tensorflow#118701)
    # are examples, not built-ins: at a mean of 1e4 over many elements every framework's
    # float32 summation order departs from the reference's emulation beyond 16 eps, so the
    # conformance suite cannot hold them; baseline-modes.json guards them instead
    # the export paths: where an export changes a rule (a training call after the
    # export, a frozen layer's flag) and where it must not (the trained statistics, eval)
    **{fid: ("export-after-training", "freeze-then-export") for fid in (
        "torch+onnx", "torch+onnx-script", "torch+openvino", "keras+onnx", "tf-keras+onnx",
        "keras+openvino")},
}


def report_modes(base: str) -> dict[str, tuple[str, ...]]:
    """The selected mode ids of registry id ``base`` and the scenarios each runs in the report."""
    return {fid: names for fid, names in REPORT_MODES.items() if fid.partition("+")[0] == base}


def all_mode_ids(base: str) -> list[str]:
    """Every named mode of ``base`` as an id (``torch+compile``, ``torch+onnx``, ...)."""
    return [f"{base}+{m.name}" for m in modes_of(base)]


def runs_of(fid: str) -> dict[str, str]:
    """What each op of framework id ``fid`` (``ID[+MODE][@DEVICE]``) runs as: the report's
    framework notes and its JSON (``frameworks.ID.runs``). A plugin says it runs as its
    adapter runs it."""
    base, _, mode = fid.partition("@")[0].partition("+")
    if not mode and base not in PLAIN:
        return {"call": "as its adapter runs it"}
    if mode and mode not in {m.name for m in modes_of(base)}:
        return {}
    desc = describe(base)
    return desc["plain"] if not mode else desc["modes"][f"{base}+{mode}"]


def runs_text(ops: dict[str, str]) -> str:
    """'call, grad: X; predict, fit: Y': ops that run alike named together."""
    grouped: dict[str, list[str]] = {}
    for op, what in ops.items():
        grouped.setdefault(what, []).append(op)
    if len(grouped) == 1:
        return next(iter(grouped))
    return "; ".join(f"{', '.join(names)}: {what}" for what, names in grouped.items())
