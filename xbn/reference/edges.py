"""Two edges of the reference's behaviour (``xbn.reference.batchnorm``): a batch of no rows, and
momentum/epsilon changed after a framework traced its predict and train functions.

Kept apart from ``xbn.reference.batchnorm`` so that each stays small enough to read whole. The switches
(``xbn.reference.semantics``): ``empty_batch``, ``empty_gradient``, ``empty_predict`` and
``traced_functions``; where each framework stands, with sources: ``xbn.profiles.edges``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..scenario.model import ElementMask, chained, mask_elements

# the reference's refusal of predict on an empty batch (profiles_edges.ERRORS declares it)
EMPTY_PREDICT = "predict on an empty batch is refused (no batch to run)"


def relevant_edges(scenario) -> set[str]:
    """The edge switches that can change anything in ``scenario`` (``xbn.explain.search`` tries them
    only there): the empty-batch ones where an input has no rows, ``traced_functions`` where
    a ``set`` step changes momentum or epsilon, ``ghost_batch_remainder`` where the layer has
    ghost batches (``virtual_batch_size``); ``masked_nonfinite`` where a step's mask covers
    a NaN or an infinity of its input; ``rmsprop_form`` where a fit uses RMSprop;
    ``synchronized_mask`` where a synchronized layer's step has a mask."""
    found = set()
    if any(np.size(v) == 0 for v in scenario.inputs.values()):
        found |= {"empty_batch", "empty_gradient", "empty_predict"}
    if any(s.op == "set" and (s.momentum, s.epsilon) != (None, None) for s in scenario.steps):
        found.add("traced_functions")
    if getattr(scenario.layer, "virtual_batch_size", None):
        found.add("ghost_batch_remainder")
    if any(masks_nonfinite(scenario, s) for s in scenario.steps):
        found.add("masked_nonfinite")
    if any(s.op == "fit" and s.optimizer.name == "rmsprop" for s in scenario.steps):
        found.add("rmsprop_form")  # not an edge, but asked for here as adam_form is elsewhere
    if getattr(scenario.layer, "synchronized", False) and any(s.mask for s in scenario.steps):
        found.add("synchronized_mask")  # a replica switch, asked for where it can act
    return found


def masks_nonfinite(scenario, step) -> bool:
    """Whether ``step``'s mask covers a NaN or an infinity of its input (for "@N", of the named
    input at the start of the chain: an output is non-finite where its input was)."""
    if step.mask is None:
        return False
    name = step.input
    while (n := chained(name)) is not None:
        name = scenario.steps[n].input
    x, mask = scenario.inputs[name], np.asarray(scenario.inputs[step.mask])
    if step.mask_channels:
        mask = mask.view(ElementMask)
    masked = ~mask_elements(mask, x.shape, scenario.layer.layout)
    return bool(np.any(masked & ~np.isfinite(x)))


def skips_update(rows: int, rule: str) -> bool:
    """Whether a training batch of ``rows`` rows leaves the running statistics alone:
    ``empty_batch = "skip"`` (torch: ``_batch_norm_impl_index`` returns early on an empty
    input, while ``BatchNorm.forward`` has already counted the batch) and no rows. Under
    ``"nan"`` the mean of no rows (NaN) is averaged in, as every other framework does."""
    return rows == 0 and rule == "skip"


def identity_batch(training: bool, values: int, rule: str) -> bool:
    """Whether a call returns its input unchanged and leaves the statistics alone:
    ``batch_of_one = "identity"`` (Paddle's batch_norm kernel: ``if ((N * sample_size) == 1)``
    copies x to y and returns before the update, paddle/phi/kernels/cpu/batch_norm_kernel.cc,
    deliberately since Paddle#11578) on a training batch of one value per channel."""
    return training and values == 1 and rule == "identity"


def identity_gradients(dy: np.ndarray, gamma, beta) -> dict:
    """The gradients of an ``identity_batch`` call, y = x: dy passes through, and gamma and
    beta, which the output does not depend on, get 0 (Paddle's grad kernel, measured)."""
    grads = {"grad_input": np.asarray(dy, np.float64)}
    for name, value in (("grad_gamma", gamma), ("grad_beta", beta)):
        if value is not None:
            grads[name] = np.zeros(np.shape(value))
    return grads


def gamma_gradient(grad: np.ndarray, inv: np.ndarray, rows: int, rule: str) -> np.ndarray:
    """grad_gamma on a batch of ``rows`` rows. The reference sums dy * x_hat over the rows:
    0 for no rows (``"zero"``: torch, Equinox, whose gamma multiplies each row's x_hat).
    ``"nan"``: Keras, Flax and Haiku fold gamma into a per-channel factor
    ``gamma * rsqrt(var + eps)`` that multiplies the row sum, so the gradient is that sum
    times ``rsqrt(var + eps)``: 0 * NaN = NaN when the statistics of no rows are NaN (a finite
    factor, e.g. inference with finite running statistics, still gives 0)."""
    if rows == 0 and rule == "nan":
        with np.errstate(invalid="ignore"):
            return grad + np.zeros_like(grad) * inv
    return grad


def refuse_empty_predict(x: np.ndarray, rule: str) -> None:
    """``empty_predict = "error"``: tf-keras' ``DataHandler`` refuses an input of no rows
    (tf_keras/src/engine/data_adapter.py:1275 batch_size 0, :1330-1331 no steps)."""
    if np.size(x) == 0 and rule == "error":
        raise ValueError(EMPTY_PREDICT)


class TracedFunctions:
    """Keras' cached ``predict_function``/``train_function``: traced at their first use after
    a ``compile()`` (keras/src/trainers/trainer.py:223-225 and tf_keras/src/engine/
    training.py:848-851 ``_reset_compile_cache`` set them to None), a trace keeps the Python
    floats ``layer.momentum``/``layer.epsilon`` had when it was made. xbn's Keras adapters
    compile at a fit whose optimizer is fresh (the first fit, a changed optimizer, or the
    first fit after a ``set trainable``): the reference's ``fit`` calls ``compile`` there.

    A batch shape the function has not seen traces it again, with the current values
    (measured on predict and fit): ``"until_compile"`` is tf.function with
    reduce_retracing (Keras 3 on TensorFlow, tf-keras): the first shape keeps its own trace,
    the second makes one relaxed trace that every later new shape reuses;
    ``"until_compile_per_shape"`` is jax.jit (Keras 3 on JAX): one trace per shape.
    Under ``"none"`` every operation reads the current values."""

    def __init__(self, rule: str):
        self.rule = rule
        self.values: dict[tuple, dict] = {}  # trace -> the attributes it was made with
        self.first: dict[str, tuple] = {}  # function -> its first batch shape since compile

    def compile(self) -> None:
        self.values.clear()
        self.first.clear()

    def _trace(self, function: str, shape: tuple) -> tuple:
        if self.rule == "until_compile_per_shape":
            return function, tuple(shape)
        first = self.first.setdefault(function, tuple(shape))
        return function, tuple(shape) if tuple(shape) == first else "relaxed"

    @contextmanager
    def use(self, layer, function: str, names: tuple[str, ...], shape: tuple) -> Iterator[None]:
        """Run ``function`` ("predict", "train") on a batch of ``shape`` with the ``names``
        attributes of ``layer`` its trace for that shape was made with (the current ones when
        that trace is new), then put the current ones back."""
        if self.rule == "none":
            yield
            return
        current = {k: getattr(layer, k) for k in names}
        for k, v in self.values.setdefault(self._trace(function, shape), dict(current)).items():
            setattr(layer, k, v)
        try:
            yield
        finally:
            for k, v in current.items():
                setattr(layer, k, v)
