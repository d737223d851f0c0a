"""Live Flax models for ``xbn audit``/``verify``: linen ``(module, variables)`` tuples and NNX.

The hooks of ``xbn.adapters.live`` (see there). Flax is imported only by the functions that run a
model; recognising one looks in ``sys.modules``. Flax models are not loaded from files.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import numpy as np

from ..layer_info import LayerInfo
from ..live import Runner, first_output, to_array
from ..port_errors import PortError
from .state_io import get_path

MODELS = ("a (flax.linen module, variables) tuple", "an nnx.Module")
MODE_ARGS = ("use_running_average", "train", "training", "is_training", "deterministic")


def framework_of(obj: Any) -> str | None:
    if isinstance(obj, tuple) and len(obj) in (2, 3):
        linen = sys.modules.get("flax.linen")
        if linen is not None and isinstance(obj[0], linen.Module):
            return "flax"
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(obj, nnx.Module):
        return "flax-nnx"
    return None


def bn_layers(obj: Any, framework: str, inputs=None) -> list[LayerInfo]:
    return linen_infos(obj, inputs) if framework == "flax" else nnx_infos(obj)


def runner(obj: Any, framework: str, sample: np.ndarray) -> Runner:
    return LinenRunner(obj, sample) if framework == "flax" else NNXRunner(obj)


# linen ---------------------------------------------------------------------------------------

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


class LinenRunner(Runner):
    """Threads the (immutable) variables through jitted ``apply`` calls."""

    framework = "flax"

    def __init__(self, obj: tuple, sample: np.ndarray):
        import flax.linen as nn
        import jax

        self.module, self.variables = obj[0], obj[1]
        self.mode_arg = obj[2] if len(obj) == 3 else None
        self.single_layer = isinstance(self.module, nn.BatchNorm)
        self._infos = linen_infos(obj, sample)
        # jit: one XLA compilation per mode instead of one per primitive (seconds on CPU)
        eval_kw = linen_mode_kwargs(self.module, False, self.mode_arg)
        train_kw = linen_mode_kwargs(self.module, True, self.mode_arg)
        self._eval = jax.jit(lambda v, x: self.module.apply(v, x, **eval_kw))
        self._train = jax.jit(lambda v, x: self.module.apply(v, x, **train_kw,
                                                             mutable=["batch_stats"]))

    def eval(self, x):
        return np.asarray(first_output(self._eval(self.variables, x)))

    def train(self, x):
        out, updates = self._train(self.variables, x)
        self.variables = {**self.variables, **updates}
        return np.asarray(first_output(out))

    def stats(self):
        out = []
        for info in self._infos:
            stats = self.variables.get("batch_stats", {})
            node = stats if info.name == "<root>" else get_path(stats, tuple(info.name.split("/")))
            node = node if isinstance(node, dict) else {}
            out.append((info.name, to_array(node.get("mean")), to_array(node.get("var"))))
        return out

    def infos(self):
        return self._infos


# NNX -----------------------------------------------------------------------------------------

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


class NNXRunner(Runner):
    """Works on an ``nnx.clone`` of the model."""

    framework = "flax-nnx"

    def __init__(self, model):
        from flax import nnx

        self.nnx = nnx
        self.model = nnx.clone(model)
        self.single_layer = isinstance(self.model, nnx.BatchNorm)

    def _bns(self):
        return [("/".join(map(str, p)) or "<root>", n) for p, n in self.nnx.iter_graph(self.model)
                if isinstance(n, self.nnx.BatchNorm)]

    def eval(self, x):
        self.model.eval()
        return np.asarray(first_output(self.model(x)))

    def train(self, x):
        self.model.train()
        return np.asarray(first_output(self.model(x)))

    def stats(self):
        return [(name, to_array(bn.mean), to_array(bn.var)) for name, bn in self._bns()]

    def infos(self):
        return nnx_infos(self.model)


def capture(obj: Any, framework: str, x: np.ndarray, train: bool) -> list:
    """Every BN call of one forward pass (``xbn.adapters.captures``): a linen model's BN
    ``__call__`` intercepted (``nn.intercept_methods``; the variables are immutable, so the
    caller's stay as they were); an NNX model's clone with ``nnx.BatchNorm.__call__`` wrapped
    for the pass (the class attribute: Python looks dunder methods up on the type)."""
    if framework == "flax-nnx":
        return _nnx_capture(obj, x, train)
    import flax.linen as nn

    from ..captures import Capture

    module, variables = obj[0], obj[1]
    mode_arg = obj[2] if len(obj) == 3 else None
    found: list = []

    def state(bn):
        v = bn.variables
        p, s = v.get("params", {}), v.get("batch_stats", {})
        return p, s

    def spy(next_fun, args, kwargs, context):
        bn = context.module
        if not (isinstance(bn, nn.BatchNorm) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        p, s = state(bn)
        rank = np.ndim(args[0])
        axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
        cap = Capture("/".join(bn.path) or "<root>", int(axis) % rank, np.array(args[0]),
                      np.empty(0), before={"gamma": to_array(p.get("scale")),
                                           "beta": to_array(p.get("bias")),
                                           "moving_mean": to_array(s.get("mean")),
                                           "moving_variance": to_array(s.get("var"))},
                      info=linen_info("/".join(bn.path) or "<root>", bn, s))
        out = next_fun(*args, **kwargs)
        _, s = state(bn)
        cap.output = np.array(out)
        cap.after = {"moving_mean": to_array(s.get("mean")), "moving_variance": to_array(s.get("var"))}
        found.append(cap)
        return out

    kwargs = linen_mode_kwargs(module, train, mode_arg)
    with nn.intercept_methods(spy):
        if train:
            module.apply(variables, x, **kwargs, mutable=["batch_stats"])
        else:
            module.apply(variables, x, **kwargs)
    return found


def _nnx_capture(obj: Any, x: np.ndarray, train: bool) -> list:
    from flax import nnx

    from ..captures import Capture

    model = nnx.clone(obj)
    model.train() if train else model.eval()
    infos = {info.name: info for info in nnx_infos(model)}
    names = {id(n): "/".join(map(str, p)) or "<root>" for p, n in nnx.iter_graph(model)
             if isinstance(n, nnx.BatchNorm)}
    found: list = []
    original = nnx.BatchNorm.__call__

    def wrapped(self, inputs, *args, **kwargs):
        if id(self) not in names:
            return original(self, inputs, *args, **kwargs)
        rank = np.ndim(inputs)
        axis = self.axis if isinstance(self.axis, int) else self.axis[0]
        cap = Capture(names[id(self)], int(axis) % rank, np.array(inputs), np.empty(0), before={
            "gamma": to_array(self.scale), "beta": to_array(self.bias),
            "moving_mean": to_array(self.mean), "moving_variance": to_array(self.var)},
            info=infos.get(names[id(self)]))
        out = original(self, inputs, *args, **kwargs)
        cap.output = np.array(out)
        cap.after = {"moving_mean": to_array(self.mean), "moving_variance": to_array(self.var)}
        found.append(cap)
        return out

    nnx.BatchNorm.__call__ = wrapped
    try:
        model(x)
    finally:
        nnx.BatchNorm.__call__ = original
    return found
