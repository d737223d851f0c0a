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


def _jax_modes(jit_word: str) -> tuple[Mode, ...]:
    return (Mode("eager", "every call and fit step un-jitted, op by op"),
            Mode("jit", f"every call and fit step under {jit_word}"))


MODES: dict[str, tuple[Mode, ...]] = {
    "numpy": (),
    "torch": (
        Mode("eager", "the module as called (eager PyTorch)"),
        Mode("compile", "torch.compile(module) (inductor, default options) for call, predict, "
                        "fit and grad"),
        Mode("onnx", "torch.onnx.export (the torch.export-based exporter) at the step, run in "
                     "ONNX Runtime's CPU provider", module="xbn.adapters.torch.onnx",
             requires=(*_ONNX, "onnxscript"), extra="onnx", export=True),
        Mode("onnx-script", "torch.onnx.export(dynamo=False) (the TorchScript-based exporter) at "
                            "the step, run in ONNX Runtime's CPU provider",
             module="xbn.adapters.torch.onnx", requires=_ONNX, extra="onnx", export=True),
        Mode("openvino", "openvino.convert_model of the module at the step, run on OpenVINO's "
                         "CPU plugin", module="xbn.adapters.torch.openvino", requires=_OPENVINO,
             extra="openvino", export=True),
    ),
    "keras": (
        Mode("function", "calls, predict and fit steps inside tf.function (no XLA)"),
        Mode("xla", "calls, predict and fit steps inside tf.function(jit_compile=True)"),
        Mode("onnx", "model.export(format='onnx') at the step, run in ONNX Runtime's CPU "
                     "provider", module="xbn.adapters.keras.onnx",
             requires=(*_ONNX, "tf2onnx"), extra="onnx", export=True),
        Mode("openvino", "openvino.convert_model of the layer's SavedModel at the step, run on "
                         "OpenVINO's CPU plugin", module="xbn.adapters.keras.openvino",
             requires=_OPENVINO, extra="openvino", export=True),
    ),
    "tf-keras": (
        Mode("xla", "calls, predict and fit steps inside tf.function(jit_compile=True)"),
        Mode("onnx", "tf2onnx.convert.from_keras at the step, run in ONNX Runtime's CPU "
                     "provider", module="xbn.adapters.keras.onnx",
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
    "haiku": _jax_modes("jax.jit"),
    "equinox": _jax_modes("eqx.filter_jit"),
}

_KERAS_PLAIN = (("call", "eager (layer(x, training=...))"),
                ("predict", "model.predict: its compiled predict function"),
                ("fit", "model.fit: its compiled train function"),
                ("grad", "eager (GradientTape / backend autodiff)"))

PLAIN: dict[str, Plain] = {
    "numpy": Plain((("call", "float64 numpy"),), "the reference has no modes"),
    "torch": Plain((), "PyTorch runs eagerly unless the user calls torch.compile", "eager"),
    "keras": Plain(_KERAS_PLAIN, "Keras users call layers eagerly and train with fit/predict, "
                   "which Keras compiles itself (tf.function, jit_compile='auto')"),
    "keras-jax": Plain(_KERAS_PLAIN, "as Keras on TensorFlow; predict and fit are jax.jit "
                       "functions, calls are eager"),
    "keras-torch": Plain(_KERAS_PLAIN, "as Keras on TensorFlow; the torch backend runs "
                         "predict and fit eagerly (jit_compile='auto' is False there)"),
    "tf-keras": Plain(_KERAS_PLAIN, "as Keras 3 on TensorFlow (tf.function for predict/fit)"),
    "keras-numpy": Plain(_KERAS_PLAIN[:2], "inference only: numpy runs every op eagerly"),
    "keras-openvino": Plain(_KERAS_PLAIN[:2], "inference only: each call builds and runs an "
                            "OpenVINO model"),
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
                    ("grad", "jax.jit(jax.grad)")), _JAX_WHY, "jit"),
    "equinox": Plain((("call", "eqx.filter_jit"), ("predict", "eqx.filter_jit"),
                      ("fit", "eqx.filter_jit train step"), ("grad", "eqx.filter_jit")),
                     _JAX_WHY, "jit"),
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
