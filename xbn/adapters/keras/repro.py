"""``xbn repro`` template for the Keras family: Keras 3 on a backend, and tf-keras (Keras 2).

Code, as a user writes it and as xbn's Keras adapters drive it: ``BatchNormalization(axis,
momentum, epsilon, center, scale)`` in a one-layer functional ``Model`` (spatial sizes left
``None``), ``model(x, training=...)`` for a call, ``model.predict`` (the whole batch) for
``predict``, ``layer.trainable`` for freezing, the variables' ``assign`` for set_weights,
``model.compile`` + ``model.fit`` (unshuffled, the adapter's optimizer arguments) for ``fit``
and the backend's own autodiff (``tf.GradientTape``; ``stateless_call`` under
``jax.value_and_grad`` on JAX; ``torch.autograd.grad``) for ``grad``.

``fit`` is Keras' own ``model.fit``, not a hand-written loop: xbn's adapters observe that call
(a tf.function train step on TensorFlow, a jitted one on JAX), and a loop of
``GradientTape`` steps is a different program whose rounding need not agree.
"""

from __future__ import annotations

from ...frameworks.devices import base_id, mode_of
from ...scenario.loader import Layer, channel_axis

BACKENDS = {"keras": "tensorflow", "keras-jax": "jax", "keras-torch": "torch",
            "keras-numpy": "numpy"}
# the template defines fit and grad too (xbn.fuzz.repro.TRAINING_OPS)
TRAINING = True

_GRAD = {
    "tensorflow": '''def grad(x, training, weights):
    """tf.GradientTape over the input and the trainable weights, as xbn's adapter takes it."""
    import tensorflow as tf

    live = [(n, v) for n, v in _params() if v.trainable and layer.trainable]
    xt = keras.ops.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt, training=training)
        total = tf.reduce_sum(y * _like(weights, y))
    grads = tape.gradient(total, [xt, *[v for _, v in live]])
    return _grads(y, grads[0], live, grads[1:])''',
    "jax": '''def grad(x, training, weights):
    """model.stateless_call under jax.value_and_grad, the new moving statistics assigned back
    (as Keras' JAX trainer syncs its state into the variables), as xbn's adapter takes it."""
    live = [(n, v) for n, v in _params() if v.trainable and layer.trainable]
    trainable = [v.value for v in model.trainable_variables]
    positions = [next(i for i, v in enumerate(model.trainable_variables) if v is w)
                 for _, w in live]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def objective(trainable_values, xj):
        y, new = model.stateless_call(trainable_values, non_trainable, xj, training=training)
        return jax.numpy.sum(y * _like(weights, y)), (y, new)

    (_, (y, new)), (g_trainable, gx) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True)(trainable, keras.ops.convert_to_tensor(x))
    for variable, value in zip(model.non_trainable_variables, new, strict=True):
        variable.assign(value)
    return _grads(y, gx, live, [g_trainable[i] for i in positions])''',
    "numpy": '''def grad(x, training, weights):
    raise SystemExit("Keras 3's numpy backend is inference only: it computes no gradients")''',
    "torch": '''def grad(x, training, weights):
    """torch.autograd.grad over the input and the trainable weights' tensors."""
    import torch

    live = [(n, v) for n, v in _params() if v.trainable and layer.trainable]
    xt = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
    y = model(xt, training=training)
    grads = torch.autograd.grad(torch.sum(y * _like(weights, y)),
                                [xt, *[v.value for _, v in live]])
    return _grads(y, grads[0], live, grads[1:])''',
}


def _keras3(framework: str, layer: Layer, shape: list) -> str:
    backend = BACKENDS[framework]
    axis = channel_axis(layer.layout)
    axis = -1 if axis == layer.rank - 1 else axis
    floatx = "float64" if layer.dtype == "float64" else "float32"
    x64 = ('import jax\njax.config.update("jax_enable_x64", True)\n'
           if backend == "jax" and layer.dtype == "float64" else
           "import jax\n" if backend == "jax" else "")
    return f'''import os
os.environ["KERAS_BACKEND"] = "{backend}"
{x64}import keras

VERSIONS = f"keras {{keras.__version__}}, backend {{keras.backend.backend()}}"
to_numpy = lambda v: np.asarray(keras.ops.convert_to_numpy(v))
# floatx: fit and predict cast every float array to it; the policy: the layer's dtype
keras.config.set_floatx("{floatx}")
keras.config.set_dtype_policy("{layer.dtype}")
inputs = keras.Input(shape={tuple(shape)!r}, dtype="{layer.dtype}")
layer = keras.layers.BatchNormalization(
    axis={axis}, momentum={float(layer.momentum)!r}, epsilon={layer.epsilon!r},
    center={layer.center}, scale={layer.scale})
model = keras.Model(inputs, layer(inputs))


def call(x, training):
    return to_numpy(model(keras.ops.convert_to_tensor(x), training=training))


def predict(x):
    return model.predict(x, batch_size=len(x), verbose=0)


def set_trainable(flag):
    layer.trainable = flag  # takes effect in fit at the next compile()


def set_weights(values):
    for name, value in values.items():
        variable = getattr(layer, name)
        variable.assign(keras.ops.convert_to_tensor(np.asarray(value, variable.dtype)))


_compiled = False


def fit(x, target, epochs, batch_size, opt, fresh):
    """compile (a new optimizer when fresh) and model.fit over unshuffled batches; the
    history's last loss, in the dtype the loss tracker accumulates in."""
    global _compiled
    if fresh or not _compiled:
        if opt["name"] == "sgd":
            optimizer = keras.optimizers.SGD(learning_rate=opt["lr"])
        elif opt["name"] == "rmsprop":
            optimizer = keras.optimizers.RMSprop(learning_rate=opt["lr"], rho=opt["rho"],
                                                 momentum=0.0, epsilon=opt["eps"], centered=False)
        else:
            optimizer = keras.optimizers.Adam(learning_rate=opt["lr"], beta_1=opt["beta1"],
                                              beta_2=opt["beta2"], epsilon=opt["eps"])
        model.compile(optimizer=optimizer, loss="mse")
        _compiled = True
    history = model.fit(x, target, epochs=epochs, batch_size=batch_size or len(x),
                        shuffle=False, verbose=0)
    return np.asarray(history.history["loss"][-1], dtype=model.metrics[0].dtype)


def _params():
    return [(n, getattr(layer, n)) for n in ("gamma", "beta") if getattr(layer, n) is not None]


def _like(values, y):
    return keras.ops.convert_to_tensor(np.asarray(values, keras.backend.standardize_dtype(y.dtype)))


def _grads(y, gx, live, grads):
    out = {{"output": to_numpy(y), "grad_input": to_numpy(gx)}}
    for (name, _), g in zip(live, grads, strict=True):
        out[f"grad_{{name}}"] = to_numpy(g)
    return out


{_GRAD[backend]}


def state():
    names = ["gamma"] * {layer.scale} + ["beta"] * {layer.center} + ["moving_mean", "moving_variance"]
    return {{name: to_numpy(getattr(layer, name)) for name in names}}'''


def _tf_keras(layer: Layer, shape: list) -> str:
    wide = "tf.float64" if layer.dtype == "float64" else "tf.float32"
    return f'''import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
import tf_keras as keras

VERSIONS = f"tf_keras {{keras.__version__}}, tensorflow {{tf.__version__}}"
inputs = keras.Input(shape={tuple(shape)!r}, dtype="{layer.dtype}")
layer = keras.layers.BatchNormalization(
    axis={channel_axis(layer.layout)}, momentum={float(layer.momentum)!r},
    epsilon={layer.epsilon!r}, center={layer.center}, scale={layer.scale}, dtype="{layer.dtype}")
model = keras.Model(inputs, layer(inputs))


def call(x, training):
    return model(tf.constant(x), training=training).numpy()


def predict(x):
    return model.predict(tf.constant(x), batch_size=len(x), verbose=0)


def set_trainable(flag):
    layer.trainable = flag  # takes effect in fit at the next compile()


def set_weights(values):
    for name, value in values.items():
        variable = getattr(layer, name)
        variable.assign(np.asarray(value, variable.dtype.as_numpy_dtype))


_optimizer = None


def fit(x, target, epochs, batch_size, opt, fresh):
    """compile (a new optimizer when fresh) and model.fit over unshuffled batches; the loss
    tracker is a float32 Mean weighted by batch size, the history holds its value."""
    global _optimizer
    if fresh or _optimizer is None:
        if opt["name"] == "sgd":
            _optimizer = keras.optimizers.SGD(learning_rate=opt["lr"], momentum=0.0)
        elif opt["name"] == "rmsprop":
            _optimizer = keras.optimizers.RMSprop(learning_rate=opt["lr"], rho=opt["rho"],
                                                  momentum=0.0, epsilon=opt["eps"],
                                                  centered=False)
        else:
            _optimizer = keras.optimizers.Adam(learning_rate=opt["lr"], beta_1=opt["beta1"],
                                               beta_2=opt["beta2"], epsilon=opt["eps"])
        model.compile(optimizer=_optimizer, loss="mean_squared_error", jit_compile=None)
    history = model.fit(tf.constant(x), tf.constant(target), batch_size=batch_size or len(x),
                        epochs=epochs, shuffle=False, verbose=0)
    return np.float32(history.history["loss"][-1])


def grad(x, training, weights):
    """tf.GradientTape over the input and, unless frozen, gamma and beta; the objective
    summed in at least float32."""
    xt = tf.constant(x)
    w = tf.constant(np.asarray(weights, np.float64), dtype={wide})
    live = [(n, getattr(layer, n)) for n in ("gamma", "beta")
            if getattr(layer, n) is not None and layer.trainable]
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt, training=training)
        total = tf.reduce_sum(tf.cast(y, {wide}) * w)
    grads = tape.gradient(total, [xt, *[v for _, v in live]])
    out = {{"output": y.numpy(), "grad_input": grads[0].numpy()}}
    for (name, _), g in zip(live, grads[1:], strict=True):
        out[f"grad_{{name}}"] = tf.reshape(g, [-1]).numpy()
    return out


def state():
    names = ["gamma"] * {layer.scale} + ["beta"] * {layer.center} + ["moving_mean", "moving_variance"]
    return {{name: getattr(layer, name).numpy() for name in names}}'''


def template(framework: str, layer: Layer, shape: tuple[int, ...]) -> str:
    """Source defining call, predict, set_trainable, set_weights, fit, grad, state and
    VERSIONS."""
    from ..repro import ReproUnsupported

    if layer.cumulative or not layer.track_running_stats or layer.mixed or layer.defaults \
            or layer.native:
        raise ReproUnsupported("Keras' BatchNormalization keeps an exponential average only")
    base = base_id(framework)
    if base not in (*BACKENDS, "tf-keras"):
        raise ReproUnsupported(f"{framework}: no standalone form for this Keras id yet "
                               f"(supported: {', '.join((*BACKENDS, 'tf-keras'))})")
    if mode_of(framework) is not None:
        raise ReproUnsupported(f"{framework}: xbn traces this mode's steps itself "
                               "(xbn/adapters/keras/tf_modes.py); no standalone form yet")
    # the Input's shape: spatial sizes left None (they may differ between inputs), as xbn's
    # adapters build the model
    dims: list = [None] * (layer.rank - 1)
    dims[channel_axis(layer.layout) - 1] = layer.features
    return _tf_keras(layer, dims) if base == "tf-keras" else _keras3(base, layer, dims)
