"""BN layers of live models: torch Modules, Keras 3 / tf-keras models, Flax linen and NNX.

A framework is recognised through ``sys.modules`` only: an object can only come from a
framework that is already imported, so nothing is imported here to find out.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from .errors import PortError
from .info import LayerInfo

TORCH_BN = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d",
            "LazyBatchNorm2d", "LazyBatchNorm3d")
MODE_ARGS = ("use_running_average", "train", "training", "is_training", "deterministic")


def _mod(name: str):
    return sys.modules.get(name)


def framework_of(obj: Any) -> str:
    """Framework id of a live model, or PortError."""
    torch = _mod("torch")
    if torch is not None and isinstance(obj, torch.nn.Module | torch.jit.ScriptModule):
        return "torch"
    if isinstance(obj, tuple) and len(obj) in (2, 3):
        linen = _mod("flax.linen")
        if linen is not None and isinstance(obj[0], linen.Module):
            return "flax"
    nnx = _mod("flax.nnx")
    if nnx is not None and isinstance(obj, nnx.Module):
        return "flax-nnx"
    tfk = _mod("tf_keras")
    if tfk is not None and isinstance(obj, tfk.layers.Layer):
        return "tf-keras"
    keras = _mod("keras")
    if keras is not None and isinstance(obj, keras.layers.Layer):
        return "keras"
    raise PortError(f"not a model xbn knows: {type(obj).__module__}.{type(obj).__name__} "
                    "(expected a torch.nn.Module, a Keras model or layer, a (flax.linen module, "
                    "variables) tuple or an nnx.Module)")


def bn_layers(obj: Any, inputs=None) -> list[LayerInfo]:
    """Every BN layer of a live model, in model order."""
    fid = framework_of(obj)
    if fid == "torch":
        return [torch_info(name, m) for name, m in torch_bn_modules(obj)]
    if fid in ("keras", "tf-keras"):
        return [keras_info(layer, fid) for layer in keras_bn_layers(obj)]
    if fid == "flax":
        return linen_infos(obj, inputs)
    return nnx_infos(obj)


# torch ---------------------------------------------------------------------------------------

def is_torch_bn(module) -> bool:
    name = getattr(module, "original_name", None)  # TorchScript keeps the class name here
    return type(module).__name__ in TORCH_BN or name in TORCH_BN or any(
        c.__name__ == "_BatchNorm" for c in type(module).__mro__)


def torch_bn_modules(model) -> list[tuple[str, Any]]:
    return [(name or "<root>", m) for name, m in model.named_modules() if is_torch_bn(m)]


def torch_info(name: str, m) -> LayerInfo:
    kind = getattr(m, "original_name", None) or type(m).__name__
    momentum = getattr(m, "momentum", None)
    affine = bool(getattr(m, "affine", True))
    params = [p for p in (getattr(m, "weight", None), getattr(m, "bias", None)) if p is not None]
    info = LayerInfo(name, "torch", kind, features=getattr(m, "num_features", None),
                     momentum=momentum, cumulative=momentum is None,
                     epsilon=getattr(m, "eps", None), center=affine, scale=affine,
                     track_running_stats=bool(getattr(m, "track_running_stats", True)),
                     trainable=all(p.requires_grad for p in params) if params else None,
                     training=bool(m.training), axis=1,
                     rank={"BatchNorm2d": 4, "BatchNorm3d": 5}.get(kind.replace("Lazy", "")))
    nbt = getattr(m, "num_batches_tracked", None)
    if nbt is not None:
        info.extras["num_batches_tracked"] = int(nbt)
    return info


# Keras ---------------------------------------------------------------------------------------

def is_keras_bn(layer) -> bool:
    return any(c.__name__ in ("BatchNormalization", "SyncBatchNormalization")
               for c in type(layer).__mro__)


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


# Flax ----------------------------------------------------------------------------------------

def linen_mode_kwargs(module, train: bool, mode_arg: str | None = None) -> dict:
    """The call keyword that selects training or inference for a linen module."""
    import flax.linen as nn

    if isinstance(module, nn.BatchNorm) and mode_arg is None:
        if module.use_running_average is not None:
            raise PortError("this nn.BatchNorm fixes use_running_average in its constructor: "
                            "xbn cannot switch its mode")
        return {"use_running_average": not train}
    if mode_arg is None:
        params = inspect.signature(type(module).__call__).parameters
        mode_arg = next((a for a in MODE_ARGS if a in params), None)
        if mode_arg is None:
            raise PortError(f"{type(module).__name__}.__call__ has no train/eval argument "
                            f"({', '.join(MODE_ARGS)}): pass (module, variables, 'arg_name')")
    inverted = mode_arg in ("use_running_average", "deterministic")
    return {mode_arg: (not train) if inverted else train}


def linen_infos(obj: tuple, inputs) -> list[LayerInfo]:
    import flax.linen as nn

    module, variables = obj[0], obj[1]
    mode_arg = obj[2] if len(obj) == 3 else None
    if isinstance(module, nn.BatchNorm):
        return [linen_info("<root>", module, variables.get("batch_stats", {}))]
    if inputs is None:
        raise PortError("auditing a linen module needs inputs (its BN layers exist only while "
                        "it runs): audit((module, variables), inputs=x)")
    found: dict[str, Any] = {}

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            found.setdefault("/".join(context.module.path), context.module)
        return next_fun(*args, **kwargs)

    import jax

    kwargs = linen_mode_kwargs(module, False, mode_arg)
    with nn.intercept_methods(spy):  # abstract evaluation: traces the modules, compiles nothing
        jax.eval_shape(lambda v, x: module.apply(v, x, **kwargs), variables, inputs)
    stats = variables.get("batch_stats", {})
    return [linen_info(path, m, _subtree(stats, path)) for path, m in found.items()]


def _subtree(tree, path: str):
    node = tree
    for part in path.split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


def linen_info(name: str, m, stats) -> LayerInfo:
    mean = stats.get("mean") if isinstance(stats, dict) else None
    info = LayerInfo(name, "flax", "BatchNorm",
                     features=int(mean.shape[0]) if mean is not None else None,
                     momentum=m.momentum, epsilon=m.epsilon, center=m.use_bias,
                     scale=m.use_scale, track_running_stats=True, axis=m.axis)
    if m.axis_name is not None:
        info.extras["axis_name"] = m.axis_name
    return info


def nnx_infos(model) -> list[LayerInfo]:
    from flax import nnx

    out = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            out.append(LayerInfo("/".join(map(str, path)) or "<root>", "flax-nnx", "BatchNorm",
                                 features=int(node.mean.shape[0]), momentum=node.momentum,
                                 epsilon=node.epsilon, center=node.use_bias,
                                 scale=node.use_scale, track_running_stats=True,
                                 training=not node.use_running_average, axis=node.axis))
    return out
