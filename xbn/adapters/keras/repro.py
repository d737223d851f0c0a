"""``xbn repro`` template for the Keras family: Keras 3 on a backend, and tf-keras (Keras 2).

Code, as a user writes it: ``BatchNormalization(axis, momentum, epsilon, center, scale)`` built
on the input shape, ``layer(x, training=...)`` for a call, a ``Sequential`` around the layer for
``predict``, ``layer.trainable`` for freezing and the variables' ``assign`` for set_weights.
"""

from __future__ import annotations

from ...scenario.loader import Layer, channel_axis

BACKENDS = {"keras": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}


def template(framework: str, layer: Layer, shape: tuple[int, ...]) -> str:
    """Source defining call, predict, set_trainable, set_weights, state and VERSIONS."""
    from ..repro import ReproUnsupported

    if layer.cumulative or not layer.track_running_stats or layer.mixed or layer.defaults \
            or layer.native:
        raise ReproUnsupported("Keras' BatchNormalization keeps an exponential average only")
    if framework == "tf-keras":
        head = ('import os\nos.environ["TF_USE_LEGACY_KERAS"] = "1"\nimport tensorflow as tf\n'
                'import tf_keras as keras\n'
                'VERSIONS = f"tf_keras {keras.__version__}, tensorflow {tf.__version__}"\n'
                "to_numpy = lambda v: np.asarray(v.numpy() if hasattr(v, 'numpy') else v)")
    else:
        head = (f'import os\nos.environ["KERAS_BACKEND"] = "{BACKENDS[framework]}"\n'
                'import keras\n'
                'VERSIONS = f"keras {keras.__version__}, backend {keras.backend.backend()}"\n'
                "to_numpy = lambda v: np.asarray(keras.ops.convert_to_numpy(v))")
    return f'''{head}

layer = keras.layers.BatchNormalization(
    axis={channel_axis(layer.layout)}, momentum={float(layer.momentum)!r},
    epsilon={layer.epsilon!r}, center={layer.center}, scale={layer.scale}, dtype="{layer.dtype}")
layer.build({tuple(shape)!r})


def call(x, training):
    return to_numpy(layer(x, training=training))


def predict(x):
    model = keras.Sequential([keras.Input(shape=x.shape[1:], dtype="{layer.dtype}"), layer])
    return model.predict(x, verbose=0)


def set_trainable(flag):
    layer.trainable = flag


def set_weights(values):
    for name, value in values.items():
        variable = getattr(layer, name)
        variable.assign(np.broadcast_to(np.asarray(value, "{layer.dtype}"), variable.shape))


def state():
    names = ["moving_mean", "moving_variance"] + ["gamma"] * {layer.scale} + ["beta"] * {layer.center}
    return {{name: to_numpy(getattr(layer, name)) for name in names}}'''
