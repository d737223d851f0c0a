"""``keras+function``, ``keras+xla``, ``tf-keras+xla``: the calls a Keras-on-TensorFlow user
wraps in ``tf.function`` (``jit_compile=True`` for XLA), shared by the Keras 3 and tf-keras
adapters.

What runs as what (the plain ids, from the installed sources):

* Keras 3 on TensorFlow compiles with ``jit_compile="auto"``, which resolves to False on a
  machine without a GPU (keras/src/trainers/trainer.py ``_resolve_auto_jit_compile``: "Disable
  XLA on CPU-only machines") and to True where one is visible; ``predict``'s and ``fit``'s
  steps are then ``tf.function(..., jit_compile=self.jit_compile)``
  (keras/src/backend/tensorflow/trainer.py ``_make_function``, ``make_predict_function``).
  So on CPU the plain id's predict and fit equal ``keras+function``; calls and gradients are
  eager.
* tf-keras' ``jit_compile`` defaults to None (tf_keras/src/engine/training.py ``compile``:
  "not enabled by default"): its predict and fit are ``tf.function`` without XLA.

Under a mode, calls and gradients run inside one ``tf.function`` per model (traced per
training flag and input signature, ``reduce_retracing`` off as users write it), and the model
is compiled with ``jit_compile`` = the mode's (False for ``function``, True for ``xla``), which
Keras hands to its own predict and train functions. A ``set`` of momentum or epsilon assigns
the layer's Python attribute; a traced function keeps the constant it was traced with (no
guard re-traces it), which is what users' ``tf.function`` steps do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from ..compile_time import CompileTimer

MODES = ("function", "xla")


def _signature(tensors: Sequence[Any]) -> tuple:
    return tuple((tuple(t.shape), str(t.dtype)) for t in tensors if t is not None)


class TracedSteps:
    """The model's forward pass and gradient under ``tf.function(jit_compile=xla)``."""

    def __init__(self, model, mode: str, run_id: str, notes: list[str]):
        self.model, self.xla = model, mode == "xla"
        word = "tf.function(jit_compile=True) (XLA)" if self.xla else "tf.function (graph)"
        self.timer = CompileTimer(run_id, word, notes)
        self._forward = tf.function(self._call, jit_compile=self.xla)
        self._grads: dict[tuple, Callable] = {}  # one traced gradient per set of variables

    @property
    def jit_compile(self) -> bool:
        """The ``jit_compile`` the model is compiled with (its own predict and train steps)."""
        return self.xla

    def _call(self, x, kwargs: dict):
        return self.model(x, **kwargs)

    def call(self, x, kwargs: dict):
        key = ("call", _signature([x, kwargs.get("mask")]), kwargs.get("training"))
        return self.timer(key, self._forward, x, kwargs)

    def grad(self, x, kwargs: dict, weights, variables: Sequence, wide=None):
        """(output, d/dx, [d/dv]) of sum(output * weights), traced once per variable set;
        ``wide``: the dtype the objective sums in (None: the output's)."""
        ids = tuple(id(v) for v in variables)
        if ids not in self._grads:
            def step(x, kwargs, weights):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = self.model(x, **kwargs)
                    total = tf.reduce_sum(tf.cast(y, wide or y.dtype) *
                                          tf.cast(weights, wide or y.dtype))
                grads = tape.gradient(total, [x, *variables])
                return y, grads[0], grads[1:]

            self._grads[ids] = tf.function(step, jit_compile=self.xla)
        key = ("grad", ids, _signature([x, kwargs.get("mask")]), kwargs.get("training"))
        return self.timer(key, self._grads[ids], x, kwargs, weights)


def traced(model, mode: str | None, run_id: str, notes: list[str]) -> TracedSteps | None:
    """The traced steps of a moded id, None for the plain id (which calls eagerly)."""
    return TracedSteps(model, mode, run_id, notes) if mode in MODES else None
