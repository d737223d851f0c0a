"""Keras 3 ``keras.layers.BatchNormalization`` on the TensorFlow, JAX or PyTorch backend.

The layer sits in a one-layer functional ``keras.Model`` (Input -> BN) so that ``fit`` and
``predict`` are Keras' own. Keras fixes its backend at import from ``KERAS_BACKEND``, which
the runner sets in the worker (``env`` of its entry in ``xbn.frameworks.registry``); this module checks
that the imported backend is the one its framework id promises, so a misconfigured worker
fails loudly instead of reporting one backend's numbers under another's name.

Choices a Keras user would make, reported in ``notes``:

* The global dtype policy says where things live: the scenario's ``dtype`` alone (``param_dtype``
  unset or equal) is that policy (``"float16"``: float16 variables, moving statistics included);
  ``dtype = "float16"``/``"bfloat16"`` with ``param_dtype = "float32"`` is the
  ``mixed_float16``/``mixed_bfloat16`` policy of the mixed-precision guide: float32 variables,
  16-bit outputs, and ``compile`` wraps the optimizer in a ``LossScaleOptimizer`` for
  ``mixed_float16``. Keras has no other pair (a DTypePolicy is one dtype or ``mixed_*``).
  Either way BN computes in float32 (``result_type(inputs.dtype, "float32")``, line 345).
* float64 layers set ``keras.config.set_floatx("float64")`` (else ``fit``/``predict`` cast
  float64 arrays to float32) and the ``float64`` policy; on JAX that needs
  ``jax_enable_x64``, switched on for float64 layers only (otherwise JAX computes in float32).
  Even so, on JAX and torch Keras' ``result_type`` maps 64-bit floats to float32, so the
  layer computes in float32 and casts its float64 output back (noted per scenario).
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
from keras import ops

from ...scenario.loader import Layer, Step, channel_axis
from ..base import Adapter, NotApplicable
from . import inference_backends
from .masking import keras_mask

BACKENDS = {"keras": "tensorflow", "keras-jax": "jax", "keras-torch": "torch",
            **inference_backends.BACKENDS}
MIXED = {("float16", "float32"): "mixed_float16", ("bfloat16", "float32"): "mixed_bfloat16"}


def policy_name(layer: Layer) -> str:
    """The Keras dtype policy for the layer's dtype and param_dtype (NotApplicable for pairs
    that no Keras policy names)."""
    if not layer.mixed:
        return layer.dtype
    name = MIXED.get((layer.dtype, layer.state_dtype))
    if name is None:
        raise NotApplicable(
            f"Keras dtype policies are one dtype for variables and computations, or "
            f"mixed_float16/mixed_bfloat16 (16-bit computations, float32 variables; "
            f"keras/src/dtype_policies/dtype_policy.py:68-92); {layer.dtype} inputs with "
            f"{layer.state_dtype} variables have none")
    return name
PARAMS = ("gamma", "beta")

STATS = ("moving_mean", "moving_variance")
# Batch Renormalization's variables (keras/src/layers/normalization/batch_normalization.py
# build(): moving_stddev, renorm_mean, renorm_stddev), observed as xbn's RENORM_QUANTITIES
RENORM = ("renorm_mean", "renorm_stddev", "moving_stddev")


def renorm_kwargs(layer: Layer) -> dict:
    """``renorm=True`` with ``renorm_clipping`` of the bounds given and ``renorm_momentum`` if
    given (Keras' defaults otherwise: no clipping, 0.99); {} without renorm. tf-keras takes
    the same arguments."""
    if layer.renorm is None:
        return {}
    kwargs: dict = {"renorm": True, "renorm_clipping": {
        k: float(v) for k, v in layer.renorm.items() if k in ("rmax", "rmin", "dmax")}}
    if "momentum" in layer.renorm:
        kwargs["renorm_momentum"] = float(layer.renorm["momentum"])
    return kwargs


def _backend_module():
    """The backend package itself, for its autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as module
    elif backend == "jax":
        import jax as module
    elif inference_backends.inference_only(backend):  # numpy, openvino: for the version
        module = inference_backends.backend_module(backend)
    else:
        import torch as module
    return module


def _numpy(value) -> np.ndarray | tuple[np.ndarray, str]:
    """A backend tensor or variable as numpy; bfloat16 widened exactly, with its name."""
    arr = ops.convert_to_numpy(value)
    name = keras.backend.standardize_dtype(arr.dtype)
    if name == "bfloat16":
        return arr.astype(np.float64), name
    return arr


def _tensor(values: np.ndarray, dtype) -> object:
    """Values exactly representable in ``dtype`` as a backend tensor of that dtype."""
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "bfloat16":
        return ops.cast(ops.convert_to_tensor(np.asarray(values, np.float32)), dtype)
    return ops.convert_to_tensor(np.asarray(values, dtype))


class KerasAdapter(Adapter):
    # renorm=True (Keras 3 has no virtual_batch_size: that was tf-keras only)
    layer_features = frozenset({"renorm"})

    def __init__(self, framework_id: str):
        super().__init__(framework_id)
        expected = BACKENDS[framework_id]
        actual = keras.backend.backend()
        if actual != expected:
            raise RuntimeError(
                f"{framework_id} needs KERAS_BACKEND={expected}, but Keras loaded the {actual!r} "
                f"backend (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}); the backend is "
                "fixed when keras is first imported")
        self.backend = actual
        self.bk = _backend_module()
        self.notes.append(f"keras {keras.__version__}, backend {actual}")
        self.model: keras.Model | None = None

    # -- construction --------------------------------------------------------------------
    def build(self, layer: Layer) -> None:
        self.require(layer, "no_running_stats",
                     "keras BatchNormalization always keeps moving statistics and uses them in "
                     "inference (no track_running_stats option)")
        native = dict(layer.native.get(self.framework_id, {}))
        self.layout = layer.layout
        axis = channel_axis(layer.layout)
        kwargs: dict = {"axis": -1 if axis == layer.rank - 1 else axis}
        if not layer.defaults:
            self.require(layer, "cumulative_momentum",
                         "keras BatchNormalization has no cumulative-average momentum (only an "
                         "exponential moving average)")
            kwargs.update(momentum=layer.momentum, epsilon=layer.epsilon)
        kwargs.update(center=layer.center, scale=layer.scale, **renorm_kwargs(layer))
        kwargs.update(native)
        self.in_dtype = layer.dtype
        if self.backend == "jax":
            import jax

            jax.config.update("jax_enable_x64", layer.dtype == "float64")

        # What a Keras user's script does first: global floatx (fit/predict cast every float
        # array to floatx) and dtype policy, then the seed.
        keras.config.set_floatx("float64" if layer.dtype == "float64" else "float32")
        # keras.config.set_dtype_policy arrived in 3.1; 3.0.x has the mixed_precision alias
        set_policy = getattr(keras.config, "set_dtype_policy", None) or \
            keras.mixed_precision.set_dtype_policy
        set_policy(policy_name(layer))
        keras.utils.set_random_seed(0)
        shape = [None] * (layer.rank - 1)
        shape[axis - 1] = layer.features
        inputs = keras.Input(shape=tuple(shape), dtype=layer.dtype)
        self.bn = keras.layers.BatchNormalization(**kwargs)
        self.model = keras.Model(inputs, self.bn(inputs))
        self.compiled, self.masked_model = False, None
        self.traced = None  # keras+function / keras+xla: tf.function steps (tf_modes)
        if self.mode in ("function", "xla"):
            from .tf_modes import traced

            self.traced = traced(self.model, self.mode, f"{self.framework_id}+{self.mode}",
                                 self.notes)
            self.model.jit_compile = self.traced.jit_compile  # its predict/train functions
        self.mask_shape = tuple(d for i, d in enumerate(shape) if i != axis - 1)
        self._note(
            f"{layer.dtype} inputs: model policy {self.model.dtype_policy.name}, BN policy "
            f"{self.bn.dtype_policy.name} (variables {self.bn.variable_dtype}, "
            f"output {self.bn.compute_dtype})")
        compute = keras.backend.result_type(self.bn.compute_dtype, "float32")
        if compute != self.bn.compute_dtype and layer.dtype == "float64":
            self._note(f"float64 on {self.backend}: Keras' result_type(float64, float32) is "
                       f"{compute} on this backend, so BN computes in {compute} and casts back")

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def _tensor(self, x: np.ndarray):
        return _tensor(x, self.in_dtype)

    def _array(self, x: np.ndarray):
        """Scenario values as a numpy array for ``fit``/``predict`` (ml_dtypes for bfloat16)."""
        if self.in_dtype == "bfloat16":
            import ml_dtypes

            return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16)
        return np.asarray(x, self.in_dtype)

    @staticmethod
    def _training_kwargs(training: bool | None) -> dict:
        return {} if training is None else {"training": training}

    # -- operations ----------------------------------------------------------------------
    def call(self, x, training):
        inference_backends.refuse_training_call(self.backend, training, self.bn.trainable)
        if self.traced is not None:
            return _numpy(self.traced.call(self._tensor(x), self._training_kwargs(training)))
        return _numpy(self.model(self._tensor(x), **self._training_kwargs(training)))

    def _jit(self) -> dict:
        return {} if self.traced is None else {"jit_compile": self.traced.jit_compile}

    def predict(self, x):
        return _numpy(self.model.predict(self._array(x), batch_size=x.shape[0], verbose=0))

    def set_trainable(self, trainable: bool) -> None:
        # Keras needs compile() again before the change affects fit(); the driver hands the
        # next fit fresh_optimizer=True, which recompiles.
        self.bn.trainable = trainable

    def set_mode(self, mode: str) -> None:
        raise NotApplicable("Keras layers have no module-wide train/eval mode; the training "
                            "call argument (or fit/predict) decides")

    def set_hyper(self, momentum, epsilon) -> None:
        """``layer.momentum = ...``/``layer.epsilon = ...``: plain Python floats that
        ``BatchNormalization.call`` reads (keras/src/layers/normalization/
        batch_normalization.py), so an eager call uses them at once, while a function Keras
        already traced (``predict_function``/``train_function``, kept until ``compile()`` or
        ``make_*_function(force=True)``) keeps the value it was traced with; nothing is reset
        here, as a user's assignment resets nothing."""
        if momentum == "cumulative":
            raise NotApplicable("keras BatchNormalization has no cumulative-average momentum")
        if momentum is not None:
            self.bn.momentum = float(momentum)
        if epsilon is not None:
            self.bn.epsilon = float(epsilon)

    def fit(self, x, target, step: Step, fresh_optimizer: bool, mask=None) -> float:
        inference_backends.refuse(self.backend, "fit")
        if fresh_optimizer or not self.compiled:
            opt = step.optimizer
            if opt.name == "sgd":
                self.optimizer = keras.optimizers.SGD(learning_rate=opt.lr)
            elif opt.name == "rmsprop":
                self.optimizer = keras.optimizers.RMSprop(
                    learning_rate=opt.lr, rho=opt.rho, momentum=0.0, epsilon=opt.eps,
                    centered=False)
            else:
                self.optimizer = keras.optimizers.Adam(learning_rate=opt.lr, beta_1=opt.beta1,
                                                       beta_2=opt.beta2, epsilon=opt.eps)
            self.model.compile(optimizer=self.optimizer, loss="mse", **self._jit())
            self.compiled, self.masked_model = True, None
        model, inputs = self.model, self._array(x)
        if mask is not None:  # the same layer and optimizer, the mask as a second input
            model, inputs = self._masked_model(), [inputs, np.asarray(mask) != 0]
        n = x.shape[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(inputs, self._array(target), epochs=step.epochs,
                                batch_size=step.batch_size or n, shuffle=False, verbose=0)
        for message in sorted({str(w.message) for w in caught
                               if "trainable weights" in str(w.message)}):
            self._note(f"fit warned: {message}")
        loss_dtype = model.metrics[0].dtype  # the loss tracker accumulates in this dtype
        return np.asarray(history.history["loss"][-1], dtype=loss_dtype)

    def fit_masked(self, x, target, step: Step, fresh_optimizer: bool, mask) -> float:
        return self.fit(x, target, step, fresh_optimizer, mask)

    def _masked_model(self):
        """``Model([x, mask], bn(x, mask=mask))`` over the same layer, compiled with the same
        optimizer: the mask reaches ``BatchNormalization.call`` as a Masking layer's would, and
        Keras masks the loss with the output's mask (keras/src/losses/loss.py ``apply_mask``:
        the mean over the valid positions). Made at the first masked fit after a compile."""
        if self.masked_model is None:
            inputs = keras.Input(shape=self.model.inputs[0].shape[1:], dtype=self.in_dtype)
            mask = keras.Input(shape=self.mask_shape, dtype="bool")
            self.masked_model = keras.Model([inputs, mask], self.bn(inputs, mask=mask))
            self.masked_model.compile(optimizer=self.optimizer, loss="mse", **self._jit())
        return self.masked_model

    # -- masks: ``Model.__call__(x, training=..., mask=m)`` hands a boolean mask to
    # ``BatchNormalization.call(inputs, training, mask)``, whose ``_moments`` weighs the
    # positions (keras/src/layers/normalization/batch_normalization.py:434-466): the mask is
    # ``expand_dims(mask, -1)`` broadcast to the input, so it must be the channels-last
    # input's shape without its last axis; for channels-first layouts Keras' broadcast fails
    # and that error is the answer. Every position's output is normalized; a fully masked
    # batch gives mean 0 and variance 0 (count 0 + backend.epsilon()).
    def _mask(self, mask):
        return ops.convert_to_tensor(keras_mask(mask, self.layout))

    def call_masked(self, x, training, mask):
        inference_backends.refuse_training_call(self.backend, training, self.bn.trainable)
        if self.traced is not None:
            return _numpy(self.traced.call(self._tensor(x), {
                "mask": self._mask(mask), **self._training_kwargs(training)}))
        return _numpy(self.model(self._tensor(x), mask=self._mask(mask),
                                 **self._training_kwargs(training)))

    def predict_masked(self, x, mask):
        raise NotApplicable("keras Model.predict(x) takes no mask argument; a mask reaches "
                            "BatchNormalization only from an upstream layer (Masking, Embedding)")

    def grad_masked(self, x, training, weights, mask) -> dict:
        return self.grad(x, training, weights, mask)

    def grad(self, x, training, weights, mask=None) -> dict:
        inference_backends.refuse(self.backend, "grad")
        kwargs = self._training_kwargs(training)
        if mask is not None:
            kwargs["mask"] = self._mask(mask)
        params = [(name, getattr(self.bn, name)) for name in PARAMS
                  if getattr(self.bn, name) is not None]
        live = [(name, v) for name, v in params if v.trainable and self.bn.trainable]
        xt = self._tensor(x)
        if self.traced is not None:
            output, gx, gparams = self.traced.grad(xt, kwargs, np.asarray(weights, np.float64),
                                                   [v.value for _, v in live])
        elif self.backend == "tensorflow":
            output, gx, gparams = self._grad_tf(xt, kwargs, weights, [v for _, v in live])
        elif self.backend == "jax":
            output, gx, gparams = self._grad_jax(xt, kwargs, weights, [v for _, v in live])
        else:
            output, gx, gparams = self._grad_torch(xt, kwargs, weights, [v for _, v in live])
        result = {"output": _numpy(output), "grad_input": _numpy(gx)}
        grads = dict(zip([name for name, _ in live], gparams, strict=True))
        for name, _ in params:
            if name in grads:
                result[f"grad_{name}"] = _numpy(grads[name])
            else:
                result[f"grad_{name}_reason"] = ("not a trainable weight (layer.trainable="
                                                 "False): Keras differentiates only "
                                                 "trainable_weights")
        return result

    def _grad_tf(self, xt, kwargs, weights, variables):
        tf = self.bk
        with tf.GradientTape() as tape:
            tape.watch(xt)
            output = self.model(xt, **kwargs)
            total = tf.reduce_sum(output * _tensor(weights, output.dtype))
        grads = tape.gradient(total, [xt, *variables])
        return output, grads[0], grads[1:]

    def _grad_jax(self, xt, kwargs, weights, variables):
        """``stateless_call`` under ``jax.value_and_grad``. The moving statistics it returns
        are assigned back to the variables: Keras' JAX trainer threads them through its
        state the same way and syncs them into the variables, so a training forward moves
        them as a TF or torch training call does (only the gradients are not applied)."""
        jax = self.bk
        model = self.model
        ids = [id(v) for v in variables]
        trainable = [v.value for v in model.trainable_variables]
        positions = [next(i for i, v in enumerate(model.trainable_variables) if id(v) == j)
                     for j in ids]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def objective(trainable_values, x):
            output, new_non_trainable = model.stateless_call(trainable_values, non_trainable,
                                                             x, **kwargs)
            total = jax.numpy.sum(output * _tensor(weights, output.dtype))
            return total, (output, new_non_trainable)

        (_, (output, new_non_trainable)), (g_trainable, gx) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True)(trainable, xt)
        for variable, value in zip(model.non_trainable_variables, new_non_trainable,
                                   strict=True):
            variable.assign(value)
        return output, gx, [g_trainable[i] for i in positions]

    def _grad_torch(self, xt, kwargs, weights, variables):
        torch = self.bk
        xt = xt.detach().requires_grad_(True)
        output = self.model(xt, **kwargs)
        total = torch.sum(output * _tensor(weights, output.dtype))
        grads = torch.autograd.grad(total, [xt, *[v.value for v in variables]])
        return output, grads[0], list(grads[1:])

    # -- weights -------------------------------------------------------------------------
    def set_weights(self, values) -> None:
        for name, value in values.items():
            variable = getattr(self.bn, name)
            if variable is None:
                flag = "scale" if name == "gamma" else "center"
                raise NotApplicable(f"the layer has no {name} ({flag}=False)")
            variable.assign(_tensor(value, variable.dtype))

    def state(self) -> dict:
        names = (*PARAMS, *STATS, *(RENORM if getattr(self.bn, "renorm", None) else ()))
        return {name: _numpy(getattr(self.bn, name)) for name in names
                if getattr(self.bn, name) is not None}

    def versions(self) -> dict[str, str]:
        return {"keras": keras.__version__, self.backend: self.bk.__version__}


def make_adapter(framework_id: str) -> Adapter:
    adapter = KerasAdapter(framework_id)
    if adapter.backend == "tensorflow":  # before any op: TF fixes its devices at start
        from .replicas_devices import configure_logical_devices

        note = configure_logical_devices()
        if note:
            adapter.notes.append(note)
    return adapter
