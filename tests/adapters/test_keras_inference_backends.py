"""Keras 3 on its inference-only backends (numpy, OpenVINO) against the layer driven by hand.

Each backend runs in a child process (Keras fixes its backend at its first import; see
keras_child). Inside it: a training call (numpy only), an inference call and ``predict``
equal Keras' own on that backend bit for bit, and ``fit``/``grad`` are ``n/a`` with the
trainer's reason (never an error): the backends raise NotImplementedError in ``fit`` and have
no autodiff. On OpenVINO a training call is ``n/a`` too (each eager call compiles a model) and
leaves the statistics alone, while a frozen layer's ``training=True`` call (inference in
Keras 3) runs.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.frameworks import require_framework

X = np.random.default_rng(26).normal(2.0, 3.0, size=(8, 3)).astype(np.float32)


@pytest.mark.slow  # a fresh interpreter per backend importing Keras (and OpenVINO): 15-25 s
@pytest.mark.parametrize("framework_id", ["keras-numpy", "keras-openvino"])
def test_inference_backend(framework_id: str) -> None:
    require_framework(framework_id)
    from tests.adapters.keras_child import run_in_backend

    run_in_backend(__file__, framework_id)


def _checks(framework_id: str) -> None:
    import keras

    from xbn.adapters.base import NotApplicable
    from xbn.frameworks.registry import load_adapter
    from xbn.scenario.loader import Layer, Optimizer, Step

    trains = framework_id == "keras-numpy"
    adapter = load_adapter(framework_id)
    adapter.build(Layer(features=3, momentum=0.9, epsilon=1e-3))
    got = [adapter.call(X, True)] if trains else []
    if not trains:
        try:
            adapter.call(X, True)
        except NotApplicable as exc:
            assert "training-mode call" in str(exc) and "inference only" in str(exc)
        else:
            raise AssertionError("a training call ran on keras-openvino")
    got += [adapter.call(X, False), adapter.predict(X)]

    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,), dtype="float32")
    bn = keras.layers.BatchNormalization(axis=-1, momentum=0.9, epsilon=1e-3)
    model = keras.Model(inputs, bn(inputs))
    xt = keras.ops.convert_to_tensor(X)
    want = [keras.ops.convert_to_numpy(model(xt, training=False)),
            model.predict(X, batch_size=8, verbose=0)]
    if trains:  # run first, as the adapter did, so that the later ones see the moved state
        want = [keras.ops.convert_to_numpy(model(xt, training=True))]
        want += [keras.ops.convert_to_numpy(model(xt, training=False)),
                 model.predict(X, batch_size=8, verbose=0)]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(adapter.state()["moving_mean"],
                                  keras.ops.convert_to_numpy(bn.moving_mean))
    # the moving statistics moved in numpy's training call (0.1 * the batch mean); OpenVINO's
    # n/a training call left them at 0
    np.testing.assert_allclose(adapter.state()["moving_mean"],
                               0.1 * X.mean(0) if trains else np.zeros(3), rtol=1e-5)
    if not trains:  # frozen: training=True is an inference call in Keras 3, and runs
        adapter.set_trainable(False)
        bn.trainable = False
        np.testing.assert_array_equal(adapter.call(X, True), keras.ops.convert_to_numpy(
            model(xt, training=True)))
        adapter.set_trainable(True)

    step = Step(index=0, op="fit", input="x", target="x", optimizer=Optimizer())
    for op, run in (("fit", lambda: adapter.fit(X, X, step, True)),
                    ("grad", lambda: adapter.grad(X, True, X))):
        try:
            run()
        except NotApplicable as exc:
            assert str(exc).startswith(f"{op}: Keras 3's") and "inference only" in str(exc)
        else:
            raise AssertionError(f"{op} ran on {framework_id}")


if __name__ == "__main__":
    _checks(sys.argv[1])
    print(f"OK {sys.argv[1]}")
