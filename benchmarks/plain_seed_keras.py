"""The Keras calls of the built-in scenario ``seed-keras``, written as a Keras user would:
the baseline that ``xbn run seed-keras --frameworks keras`` is measured against
(``benchmarks/report_vs_imports.py``). Same layer, same model, same calls, the values read back after
each step; nothing of xbn is imported."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

keras.config.set_floatx("float32")
keras.config.set_dtype_policy("float32")
keras.utils.set_random_seed(0)
inputs = keras.Input(shape=(1,), dtype="float32")
bn = keras.layers.BatchNormalization(axis=-1, momentum=0.99, epsilon=0.001)
model = keras.Model(inputs, bn(inputs))
a = np.array([[100.0]], np.float32)


def state():
    return [np.asarray(v) for v in (bn.moving_mean, bn.moving_variance, bn.gamma, bn.beta)]


def call(training):
    out = np.asarray(model(ops.convert_to_tensor(a), training=training))
    return out, state()


seen = [call(True)]
for _ in range(1000):
    out = call(True)
seen += [out, call(True), call(False)]
seen.append(np.asarray(model.predict(a, batch_size=1, verbose=0)))
bn.trainable = False
seen.append(call(True))
print(seen[-1][0])
