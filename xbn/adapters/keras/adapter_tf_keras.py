"""Legacy Keras 2 (``tf_keras``): ``BatchNormalization`` as TensorFlow 2.x users ran it.

The layer lives in a one-layer functional ``tf_keras.Model`` so that ``fit`` and ``predict``
are Keras' own. The framework chooses its implementation itself (``fused=None``): the
FusedBatchNormV3 kernel for float32/16-bit 4-D and 5-D inputs (its moving variance is
Bessel-corrected, n/(n-1)), ``tf.nn.moments`` otherwise (biased). Each build records in
``notes`` which one ran, because the same scenario gives different moving variances.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf
import tf_keras

from ...scenario.loader import Layer, Step, channel_axis
from ..base import Adapter, NotApplicable
from .masking import keras_mask
from .tf_modes import traced

# Keras has one global thread pool; one thread keeps reductions in the same order everywhere.
try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # the runtime was already started (tests importing tensorflow first)
    pass

# The layer's dtype policy: the scenario's dtype, or mixed_float16/mixed_bfloat16 for 16-bit
# inputs with param_dtype float32 (what a tf.keras user does for mixed precision). Only this
# layer gets it, so compile adds no loss scaling. Under either 16-bit policy BN keeps
# gamma/beta/moving statistics in float32 (``_param_dtype``, PARAM_DTYPE below).
MIXED = {("float16", "float32"): "mixed_float16", ("bfloat16", "float32"): "mixed_bfloat16"}
PARAM_DTYPE = "tf_keras/src/layers/normalization/batch_normalization.py:319-324 _param_dtype"
WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
# Batch Renormalization's variables (tf_keras/src/layers/normalization/batch_normalization.py
# build(): moving_stddev, renorm_mean, renorm_stddev), observed as xbn's RENORM_QUANTITIES
RENORM = ("renorm_mean", "renorm_stddev", "moving_stddev")


def _renorm_kwargs(layer: Layer) -> dict:
    """``renorm=True``, ``renorm_clipping`` of the bounds given, ``renorm_momentum`` if given
    (tf-keras' defaults otherwise: no clipping, 0.99); {} without renorm."""
    if layer.renorm is None:
        return {}
    clipping = {k: float(v) for k, v in layer.renorm.items() if k != "momentum"}
    momentum = {"renorm_momentum": float(layer.renorm["momentum"])} \
        if "momentum" in layer.renorm else {}
    return {"renorm": True, "renorm_clipping": clipping, **momentum}


def _output(value) -> np.ndarray | tuple[np.ndarray, str]:
    """A numpy array, or (float64 array, "bfloat16") where numpy cannot name the dtype."""
    arr = value.numpy() if isinstance(value, tf.Tensor) else np.asarray(value)
    if arr.dtype.name == "bfloat16":
        return arr.astype(np.float64), "bfloat16"
    return arr


class TfKerasAdapter(Adapter):
    # renorm=True, and ghost batches: virtual_batch_size=N (training reshapes the batch to
    # [N, -1, ...], so ghost batch g holds rows g, g + B/N, ...; variables get shape [1, 1, C])
    layer_features = frozenset({"renorm", "virtual_batch_size"})

    def build(self, layer: Layer) -> None:
        self.notes = []
        self.require(layer, "cumulative_momentum",
                     "tf_keras BatchNormalization has only an exponential moving average "
                     "(momentum is a number); no cumulative average")
        self.require(layer, "no_running_stats",
                     "tf_keras BatchNormalization always creates and uses moving statistics; "
                     "it has no track_running_stats=False")
        tf_keras.backend.clear_session()
        tf_keras.utils.set_random_seed(0)
        self.layer = layer
        self.dtype = tf.as_dtype(layer.dtype)
        axis = channel_axis(layer.layout)
        policy = layer.dtype if not layer.mixed else MIXED.get((layer.dtype, layer.state_dtype))
        if policy is None:
            raise NotApplicable(
                f"a tf_keras dtype policy is one dtype or mixed_float16/mixed_bfloat16 (16-bit "
                f"computations, float32 variables); {layer.dtype} inputs with "
                f"{layer.state_dtype} variables have none")
        kwargs: dict = {"axis": axis, "center": layer.center, "scale": layer.scale,
                        "dtype": policy}
        if not layer.defaults:
            kwargs.update(momentum=float(layer.momentum), epsilon=float(layer.epsilon))
        kwargs.update(_renorm_kwargs(layer))
        if layer.virtual_batch_size is not None:
            kwargs["virtual_batch_size"] = layer.virtual_batch_size
        kwargs.update(layer.native.get(self.framework_id, {}))
        self.bn = tf_keras.layers.BatchNormalization(**kwargs)
        shape: list[int | None] = [None] * (layer.rank - 1)
        shape[axis - 1] = layer.features  # spatial sizes may differ between inputs
        inputs = tf_keras.Input(shape=shape, dtype=self.dtype)
        self.model = tf_keras.Model(inputs, self.bn(inputs))
        self.masked_model = None
        self.mask_shape = tuple(d for i, d in enumerate(shape) if i != axis - 1)
        self.optimizer = None
        self.compiled = False
        self.notes = [self._path_note()]
        self.traced = traced(self.model, self.mode, f"{self.framework_id}+{self.mode}",
                             self.notes)  # tf-keras+xla: tf.function(jit_compile=True) steps
        if self.traced is not None:
            self.model.jit_compile = self.traced.jit_compile  # its predict/train functions
        if layer.state_dtype in ("float16", "bfloat16"):
            self.notes.append(f"tf-keras: param_dtype {layer.state_dtype} is not honoured: BN "
                              f"creates float32 gamma/beta/moving statistics for 16-bit layers "
                              f"({PARAM_DTYPE})")

    def _path_note(self) -> str:
        if self.bn.fused:
            return (f"tf-keras: fused path (FusedBatchNormV3, {self.bn._data_format}): moving "
                    "variance fed the Bessel-corrected batch variance n/(n-1)")
        return "tf-keras: non-fused path (tf.nn.moments): moving variance fed the biased variance"

    def _tensor(self, x) -> tf.Tensor:
        # the values are exactly representable in the layer dtype: the cast is exact
        return tf.cast(tf.constant(np.asarray(x, np.float64)), self.dtype)

    def call(self, x, training):
        xt = self._tensor(x)
        if self.traced is not None:
            return _output(self.traced.call(xt, self._call_kwargs(training, None)))
        y = self.model(xt) if training is None else self.model(xt, training=training)
        return _output(y)

    def predict(self, x):
        return _output(self.model.predict(self._tensor(x), batch_size=len(x), verbose=0))

    def set_trainable(self, trainable: bool) -> None:
        self.bn.trainable = trainable
        self.compiled = False  # Keras: a trainable change takes effect at the next compile()

    def set_hyper(self, momentum, epsilon) -> None:
        """``layer.momentum = ...``/``layer.epsilon = ...``, as a tf.keras user changes a built
        layer: ``call`` reads both as Python numbers (fused path: ``1.0 - self.momentum``,
        tf_keras/src/layers/normalization/batch_normalization.py ``_fused_batch_norm``), so an
        eager call sees them; a ``predict``/``fit`` function already traced by tf.function
        keeps the traced constants until ``compile()`` (nothing here forces a retrace)."""
        if momentum == "cumulative":
            raise NotApplicable("tf_keras BatchNormalization has no cumulative-average momentum")
        if momentum is not None:
            self.bn.momentum = float(momentum)
        if epsilon is not None:
            self.bn.epsilon = float(epsilon)

    def _make_optimizer(self, step: Step):
        opt = step.optimizer
        if opt.name == "sgd":
            return tf_keras.optimizers.SGD(learning_rate=opt.lr, momentum=0.0)
        if opt.name == "rmsprop":
            return tf_keras.optimizers.RMSprop(learning_rate=opt.lr, rho=opt.rho, momentum=0.0,
                                               epsilon=opt.eps, centered=False)
        return tf_keras.optimizers.Adam(learning_rate=opt.lr, beta_1=opt.beta1,
                                        beta_2=opt.beta2, epsilon=opt.eps)

    def fit(self, x, target, step: Step, fresh_optimizer: bool, mask=None) -> float:
        if fresh_optimizer or self.optimizer is None:
            self.optimizer = self._make_optimizer(step)
            self.compiled = False
        if not self.compiled:  # recompiling with the same optimizer object keeps its state
            self.model.compile(optimizer=self.optimizer, loss="mean_squared_error",
                               jit_compile=self.traced.jit_compile if self.traced else None)
            self.compiled, self.masked_model = True, None
        model, inputs = self.model, self._tensor(x)
        if mask is not None:  # the same layer and optimizer, the mask as a second input
            model, inputs = self._masked_model(), [inputs, tf.constant(np.asarray(mask) != 0)]
        history = model.fit(inputs, self._tensor(target), batch_size=step.batch_size or len(x),
                            epochs=step.epochs, shuffle=False, verbose=0)
        # the loss tracker is a float32 Mean weighted by batch size; history holds its value
        return np.float32(history.history["loss"][-1])

    def fit_masked(self, x, target, step: Step, fresh_optimizer: bool, mask) -> float:
        return self.fit(x, target, step, fresh_optimizer, mask)

    def _masked_model(self):
        """``Model([x, mask], bn(x, mask=mask))`` over the same layer and optimizer: the mask
        reaches BatchNormalization as a Masking layer's would, and the loss is masked with the
        output's mask (tf_keras/src/utils/losses_utils.py ``apply_valid_mask``: the mean over
        the valid positions). Made at the first masked fit after a compile."""
        if self.masked_model is None:
            x_in = tf_keras.Input(shape=self.model.inputs[0].shape[1:], dtype=self.dtype)
            m_in = tf_keras.Input(shape=self.mask_shape, dtype=tf.bool)
            self.masked_model = tf_keras.Model([x_in, m_in], self.bn(x_in, mask=m_in))
            self.masked_model.compile(optimizer=self.optimizer, loss="mean_squared_error")
        return self.masked_model

    # -- masks: ``Model.__call__(x, training=..., mask=m)`` hands the boolean mask to
    # ``BatchNormalization.call(inputs, training, mask)``. Its non-fused path weighs the
    # positions (tf_keras/src/layers/normalization/batch_normalization.py:1132-1149,
    # tf.nn.weighted_moments with div_no_nan: a fully masked batch gives 0 and 0); the fused
    # kernel (4-D/5-D float inputs, ``fused=None``) warns "Masking is not supported with
    # fused=True" and ignores the mask (:896-905). Both are what a user gets; the warning is
    # kept in ``notes``, and the comparison shows the difference.
    def _call_kwargs(self, training, mask) -> dict:
        kwargs = {} if training is None else {"training": training}
        if mask is not None:
            # the fused 4-D/5-D kernel ignores a mask (above); the 3-D path expands it
            layout = self.layer.layout if self.layer.rank == 3 else None
            kwargs["mask"] = tf.constant(keras_mask(mask, layout))
        return kwargs

    def call_masked(self, x, training, mask):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kwargs = self._call_kwargs(training, mask)
            y = self.traced.call(self._tensor(x), kwargs) if self.traced else \
                self.model(self._tensor(x), **kwargs)
        self._warned(caught)
        return _output(y)

    def predict_masked(self, x, mask):
        raise NotApplicable("tf_keras Model.predict(x) takes no mask argument; a mask reaches "
                            "BatchNormalization only from an upstream layer (Masking, Embedding)")

    def grad_masked(self, x, training, weights, mask) -> dict:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self.grad(x, training, weights, mask)
        self._warned(caught)
        return out

    def _warned(self, caught) -> None:
        for message in sorted({str(w.message) for w in caught if "Masking" in str(w.message)}):
            note = f"tf-keras warned: {message}"
            if note not in self.notes:
                self.notes.append(note)

    def grad(self, x, training, weights, mask=None) -> dict:
        xt = self._tensor(x)
        wide = tf.float64 if self.dtype == tf.float64 else tf.float32
        w = tf.constant(np.asarray(weights, np.float64), dtype=wide)
        params = {q: v for q, v in (("grad_gamma", self.bn.gamma), ("grad_beta", self.bn.beta))
                  if v is not None}
        live = {q: v for q, v in params.items() if self.bn.trainable}
        if self.traced is not None:  # tf-keras+xla: the same step as one traced function
            y, gx, gp = self.traced.grad(xt, self._call_kwargs(training, mask), w,
                                         list(live.values()), wide)
            grads = [gx, *gp]
        else:
            with tf.GradientTape() as tape:
                tape.watch(xt)
                y = self.model(xt, **self._call_kwargs(training, mask))
                # summed in at least float32 so 16-bit outputs cannot overflow; d/dy is w
                objective = tf.reduce_sum(tf.cast(y, wide) * w)
            grads = tape.gradient(objective, [xt, *live.values()])
        out = {"output": _output(y), "grad_input": _output(grads[0])}
        for q, g in zip(live, grads[1:], strict=True):
            out[q] = _output(tf.reshape(g, [-1]))  # [1, 1, C] with virtual_batch_size
        for q in params.keys() - live.keys():
            out[f"{q}_reason"] = "parameters frozen (layer.trainable = False)"
        return out

    def set_weights(self, values) -> None:
        for name, value in values.items():
            var = getattr(self.bn, name, None)
            if var is None:
                raise NotApplicable(f"the layer has no {name}")
            # with virtual_batch_size the variables have shape [1, 1, C]
            var.assign(np.asarray(value, np.float64).astype(var.dtype.as_numpy_dtype)
                       .reshape(var.shape))

    def state(self) -> dict:
        names = (*WEIGHTS, *(RENORM if self.bn.renorm else ()))
        # reshaped: with virtual_batch_size tf-keras' variables have shape [1, 1, C]
        return {name: getattr(self.bn, name).numpy().reshape(-1) for name in names
                if getattr(self.bn, name, None) is not None}

    def versions(self) -> dict[str, str]:
        return {"tf_keras": tf_keras.__version__, "tensorflow": tf.__version__}


def make_adapter(framework_id: str) -> Adapter:
    from .replicas_devices import configure_logical_devices

    note = configure_logical_devices()  # before any op: TF fixes its devices at start
    adapter = TfKerasAdapter(framework_id)
    if note:
        adapter.notes.append(note)
    return adapter
