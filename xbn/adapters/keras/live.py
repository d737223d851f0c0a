"""Live Keras 3 and tf-keras models for ``xbn audit``/``verify``: BN layers, a runner, .keras files.

The hooks of ``xbn.adapters.live`` (see there). Keras is imported only by the functions that run
or load a model; recognising one looks in ``sys.modules``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ...frameworks.registry import FRAMEWORKS
from ..layer_info import LayerInfo
from ..live import Runner, first_output
from ..port_errors import PortError

MODELS = ("a Keras model or layer",)
BN_CLASSES = ("BatchNormalization", "SyncBatchNormalization")


def framework_of(obj: Any) -> str | None:
    tfk = sys.modules.get("tf_keras")
    if tfk is not None and isinstance(obj, tfk.layers.Layer):
        return "tf-keras"
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(obj, keras.layers.Layer):
        return "keras"
    return None


def bn_layers(obj: Any, framework: str, inputs=None) -> list[LayerInfo]:
    return [keras_info(layer, framework) for layer in keras_bn_layers(obj)]


def runner(obj: Any, framework: str, sample: np.ndarray) -> Runner:
    return KerasRunner(obj, framework)


def is_keras_bn(layer) -> bool:
    return any(c.__name__ in BN_CLASSES for c in type(layer).__mro__)


def keras_bn_layers(model) -> list:
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        layers = list(flatten(include_self=True, recursive=True))
    else:  # pragma: no cover - every supported Keras has _flatten_layers
        layers = [model, *getattr(model, "layers", [])]
    return [layer for layer in layers if is_keras_bn(layer)]


def keras_info(layer, fid: str) -> LayerInfo:
    conf = layer.get_config()
    getter = getattr(layer, "get_build_config", None)
    conf["build_config"] = getter() if getter is not None else None
    return config_info(layer.name, fid, type(layer).__name__, conf,
                       trainable=bool(layer.trainable), features=_keras_features(layer))


def _keras_features(layer) -> int | None:
    var = getattr(layer, "moving_mean", None)
    shape = getattr(var, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 1 else None


def config_info(name: str, fid: str, kind: str, conf: dict, *, trainable: bool | None,
                features: int | None) -> LayerInfo:
    """LayerInfo from a Keras layer config (live ``get_config()`` or a ``.keras`` config.json)."""
    axis = conf.get("axis", -1)
    if isinstance(axis, list):
        axis = axis[0] if len(axis) == 1 else tuple(axis)
    info = LayerInfo(name, fid, kind, features=features, momentum=conf.get("momentum"),
                     epsilon=conf.get("epsilon"), center=conf.get("center", True),
                     scale=conf.get("scale", True), track_running_stats=True,
                     trainable=trainable, axis=axis, rank=_build_rank(conf.get("build_config")))
    for key in ("renorm", "synchronized", "fused", "virtual_batch_size", "adjustment"):
        if conf.get(key) not in (None, False):
            info.extras[key] = conf[key]
    return info


def _build_rank(build_config) -> int | None:
    shape = build_config.get("input_shape") if isinstance(build_config, dict) else None
    return len(shape) if isinstance(shape, list | tuple) else None


class KerasRunner(Runner):
    """Runs the caller's model itself and restores its weights when closed."""

    def __init__(self, model, framework: str):
        self.framework = framework
        self.model = model
        self.saved = model.get_weights()
        self.bns = keras_bn_layers(model)
        self.single_layer = len(self.bns) == 1 and self.bns[0] is model

    def eval(self, x):
        return np.asarray(first_output(self.model(x, training=False)))

    def train(self, x):
        return np.asarray(first_output(self.model(x, training=True)))

    def stats(self):
        return [(layer.name, np.array(layer.moving_mean.numpy()),
                 np.array(layer.moving_variance.numpy())) for layer in self.bns]

    def infos(self):
        return [keras_info(layer, self.framework) for layer in self.bns]

    def close(self):
        self.model.set_weights(self.saved)


def load_model(path: Path):
    """``keras.models.load_model(path, safe_mode=True, compile=False)``: builds the model from
    its config (standard layers; ``safe_mode`` refuses lambda layers), which is why ``xbn
    audit`` never does it and ``xbn verify`` does. The backend is the ``keras`` framework's."""
    for key, value in FRAMEWORKS["keras"].env.items():
        os.environ.setdefault(key, value)
    import zipfile

    try:
        import keras
    except ImportError:
        raise PortError("running a .keras file needs keras: pip install 'xbn[tensorflow]'") from None
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except zipfile.BadZipFile as exc:
        raise PortError(f"{path}: not a valid .keras archive ({exc})") from None
    except Exception as exc:  # Keras raises ValueError/TypeError for configs it cannot build
        raise PortError(f"{path}: Keras could not load it ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None


def capture(obj: Any, framework: str, x: np.ndarray, train: bool) -> list:
    """Every BN call of one forward pass of ``obj`` (``xbn.adapters.captures``): each BN layer's
    ``call`` is wrapped for the pass (Keras looks ``self.call`` up at every call), and the
    model's weights are restored afterwards."""
    from ..captures import Capture

    def arr(v):
        return None if v is None else np.array(v.numpy() if hasattr(v, "numpy") else v)

    found: list = []
    saved = obj.get_weights()
    layers = keras_bn_layers(obj)

    def wrap(layer, call):
        def wrapped(inputs, *args, **kwargs):
            axis = layer.axis[0] if isinstance(layer.axis, list | tuple) else layer.axis
            rank = len(inputs.shape)
            cap = Capture(layer.name, int(axis) % rank, arr(inputs), np.empty(0), before={
                "gamma": arr(getattr(layer, "gamma", None)),
                "beta": arr(getattr(layer, "beta", None)),
                "moving_mean": arr(layer.moving_mean),
                "moving_variance": arr(layer.moving_variance)},
                info=keras_info(layer, framework))
            out = call(inputs, *args, **kwargs)
            cap.output = arr(out)
            cap.after = {"moving_mean": arr(layer.moving_mean),
                         "moving_variance": arr(layer.moving_variance)}
            found.append(cap)
            return out
        return wrapped

    for layer in layers:
        layer.call = wrap(layer, layer.call)
    try:
        obj(x, training=train)
    finally:
        for layer in layers:
            del layer.call  # the class's own call again
        obj.set_weights(saved)
    return found
