"""Every framework xbn knows, declared once: plain data, importing nothing but the standard library.

One :class:`FrameworkInfo` per framework id says where its code lives (the adapter module, in
its family's folder ``xbn/adapters/<family>/``), how it is installed (pip extra, distributions,
worker environment), what its BatchNorm can express (:class:`Capabilities`), how a user spells
that BatchNorm (:class:`Convention`, for ``xbn port``/``audit``) and which tables of
``xbn/profiles/facts.py`` hold its semantic switches (:class:`Profile`). One :class:`Family` per
folder under ``xbn/adapters/`` says which weights files and live models its port code handles.

Like einops' backends, family code is found by name and imported lazily (:func:`family_module`),
so listing frameworks, reading versions, validating scenarios and translating a BN constructor
never import a framework. Every other table keyed by framework id is derived from this one.

Id sets: every framework has a family, capabilities and a profile. The numpy reference has
no convention (nobody writes its constructor); the Keras 3 backends share ``keras``' one, so
``PORT_IDS`` (the ids ``xbn port``/``audit`` accept) are the ids that own a convention. Only
the families with port code (torch, keras, flax) have weights formats and live models.
"""

from __future__ import annotations

import importlib

from .devices import base_id, mode_of
from .kinds import (  # noqa: F401 - the registry's vocabulary, imported from here by users
    Capabilities,
    Convention,
    Family,
    Format,
    FrameworkInfo,
    Profile,
    Since,
    installed,
)
from .modes import Mode, mode_named


def _formats(family: str, *specs: tuple[str, tuple[str, ...], str]) -> tuple[Format, ...]:
    return tuple(Format(name, family, suffixes, text) for name, suffixes, text in specs)


FAMILIES: dict[str, Family] = {
    f.id: f
    for f in [
        Family("numpy"),
        Family("torch", _formats("torch", ("torch", (".pt", ".pth", ".bin"),
                                           "PyTorch state_dict, torch.load(weights_only=True)"),
                                 ("safetensors", (".safetensors",),
                                  "PyTorch state_dict as safetensors")),
               file_framework="torch", live=True, model_files=(".pt", ".pth"),
               model_files_label="TorchScript .pt/.pth files"),
        Family("keras", _formats("keras", ("keras-weights", (".weights.h5", ".h5", ".hdf5"),
                                           "Keras 3 .weights.h5 (or legacy tf-keras HDF5)"),
                                 ("keras", (".keras",),
                                  "Keras 3 .keras archive (config.json + model.weights.h5)")),
               file_framework="keras", live=True, model_files=(".keras",),
               model_files_label=".keras files"),
        Family("flax", _formats("flax", ("flax-msgpack", (".msgpack",),
                                         "Flax variables, flax.serialization msgpack"),
                                ("flax-npz", (".npz",), "Flax variables, '/'-joined keys")),
               file_framework="flax", live=True),
        Family("haiku"),
        Family("equinox"),
        Family("paddle", _formats("paddle", ("paddle", (".pdparams",),
                                            "Paddle state_dict, paddle.save (arrays only)")),
               file_framework="paddle"),
        Family("mlx", _formats("mlx", ("mlx-safetensors", (".mlx.safetensors",),
                                       "MLX Module.save_weights as safetensors"),
                               ("mlx-npz", (".mlx.npz",), "MLX Module.save_weights as .npz")),
               file_framework="mlx"),
    ]
}

# What keeps no running statistics in frameworks without track_running_stats.
_KERAS_NO_STATS = ("call the layer with training=True at inference too (and never set "
                   "trainable=False, which forces the moving statistics); the moving statistics "
                   "are then updated but unused")
# The common case: an exponential moving average only, running statistics always kept.
EMA_ONLY = Capabilities(cumulative_momentum=False, no_running_stats=False)
EMA_ONLY_ONE_AFFINE = Capabilities(cumulative_momentum=False, no_running_stats=False,
                                   scale_without_center=False, center_without_scale=False)
# torch/nn/modules/batchnorm.py:48 (2.13) `bias: bool = True` in _NormBase.__init__:
# BatchNorm{1,2,3}d(C, affine=True, bias=False) has a weight and no bias.
TORCH_BIAS = Since("torch", "2.12", "pytorch/pytorch#176573 (a bias argument for Batch/Instance/"
                   "Group norm, opened 2026-03-05, after the 2.11 branch cut); the 2.12 docs "
                   "(docs.pytorch.org/docs/2.12, LazyBatchNorm1d) show `*, bias=True`")

# Conventions cite the constructor they were read from (paths in the installed packages).
KERAS3 = Convention(  # keras/src/layers/normalization/batch_normalization.py: axis is one int
    "keras", "Keras 3", "keras.layers.BatchNormalization", "import keras", "momentum", False,
    "epsilon", "center", "scale", None, None, None, -1, False, _KERAS_NO_STATS)


def _keras3(fid: str, backend: str, extra: str, requires: tuple[str, ...], label: str,
            numerics: str) -> FrameworkInfo:
    return FrameworkInfo(fid, "xbn.adapters.keras.adapter_keras3", extra, ("keras",), requires,
                         {"KERAS_BACKEND": backend}, f"Keras 3 BatchNormalization, {label} backend",
                         "keras", EMA_ONLY, KERAS3, Profile("keras3", numerics))


def _jax(fid: str, module: str, dist: str, description: str, family: str, caps: Capabilities,
         conv: Convention, semantics: str) -> FrameworkInfo:
    return FrameworkInfo(fid, module, "jax", (dist,), (dist, "optax"), {}, description, family,
                         caps, conv, Profile(semantics, semantics))


FRAMEWORKS: dict[str, FrameworkInfo] = {
    info.id: info
    for info in [
        FrameworkInfo("numpy", "xbn.adapters.numpy.adapter", "(core)", ("numpy",), ("numpy",),
                      description="xbn's float64 reference (the executable specification)",
                      family="numpy", profile=Profile("reference")),
        FrameworkInfo(
            "torch", "xbn.adapters.torch.adapter", "torch", ("torch",), ("torch",),
            description="torch.nn.BatchNorm1d/2d/3d", family="torch",
            capabilities=Capabilities(cumulative_momentum=True, no_running_stats=True,
                                      scale_without_center=TORCH_BIAS,
                                      center_without_scale=False),
            # torch/nn/modules/batchnorm.py: _NormBase(num_features, eps, momentum, affine,
            # track_running_stats); momentum=None -> cumulative average; channels are dim 1.
            convention=Convention("torch", "PyTorch", "torch.nn.BatchNorm{d}d", "import torch",
                                  "momentum", True, "eps", None, None, "affine", "num_features",
                                  1, 1, False, offset_kw="bias"),
            profile=Profile("torch", "torch")),
        _keras3("keras", "tensorflow", "tensorflow", ("keras", "tensorflow|tensorflow-cpu"),
                "TensorFlow", "keras3-tensorflow"),
        _keras3("keras-jax", "jax", "tensorflow,jax", ("keras", "jax"), "JAX", "keras3-jax"),
        _keras3("keras-torch", "torch", "tensorflow,torch", ("keras", "torch"), "PyTorch",
                "keras3-torch"),
        # Keras 3's inference-only backends: no fit, no gradients (training steps are n/a).
        _keras3("keras-numpy", "numpy", "tensorflow", ("keras",), "numpy (inference only)",
                "keras3-numpy"),
        _keras3("keras-openvino", "openvino", "openvino", ("keras", "openvino"),
                "OpenVINO (inference only)", "keras3-openvino"),
        FrameworkInfo(
            "tf-keras", "xbn.adapters.keras.adapter_tf_keras", "tensorflow", ("tf-keras",),
            ("tf-keras",), {"TF_USE_LEGACY_KERAS": "1"},
            "legacy Keras 2 (tf_keras) BatchNormalization", "keras", EMA_ONLY,
            # tf_keras/src/layers/normalization/batch_normalization.py: axis int or list.
            Convention("tf-keras", "tf-keras (Keras 2)", "tf_keras.layers.BatchNormalization",
                       "import tf_keras", "momentum", False, "epsilon", "center", "scale", None,
                       None, None, -1, True,
                       "call the layer with training=True at inference too (and never set "
                       "trainable=False); the moving statistics are updated but unused"),
            Profile("tf_keras", "tf_keras")),
        # flax/linen/normalization.py: BatchNorm(use_running_average, axis, momentum, epsilon,
        # use_bias, use_scale); axis may be a tuple.
        _jax("flax", "xbn.adapters.flax.adapter_linen", "flax", "flax.linen.BatchNorm", "flax",
             EMA_ONLY, Convention("flax", "Flax linen", "nn.BatchNorm", "import flax.linen as nn",
                               "momentum", False, "epsilon", "use_bias", "use_scale", None, None,
                               None, -1, True,
                               "set use_running_average=False in the constructor and apply with "
                               "mutable=['batch_stats'], discarding the updates"),
             "flax_linen"),
        # flax/nnx/nn/normalization.py: BatchNorm(num_features, *, use_running_average,
        # axis: int, momentum, epsilon, use_bias, use_scale, rngs).
        _jax("flax-nnx", "xbn.adapters.flax.adapter_nnx", "flax", "flax.nnx.BatchNorm", "flax",
             EMA_ONLY, Convention("flax-nnx", "Flax NNX", "nnx.BatchNorm", "from flax import nnx",
                               "momentum", False, "epsilon", "use_bias", "use_scale", None,
                               "num_features", None, -1, False,
                               "keep use_running_average=False and do not call .eval() on this "
                               "layer (model.eval() sets it for every nested BatchNorm)"),
             "flax_nnx"),
        # haiku/_src/batch_norm.py: BatchNorm(create_scale, create_offset, decay_rate, eps,
        # data_format="channels_last"); `axis` there lists the reduced axes.
        _jax("haiku", "xbn.adapters.haiku.adapter", "dm-haiku", "haiku.BatchNorm", "haiku",
             EMA_ONLY,
             Convention("haiku", "Haiku", "hk.BatchNorm", "import haiku as hk", "decay_rate",
                        False, "eps", "create_offset", "create_scale", None, None, None, -1,
                        False, "call with is_training=False, test_local_stats=True at inference"),
             "haiku"),
        # equinox/nn/_batch_norm.py: BatchNorm(input_size, axis_name, eps, channelwise_affine,
        # momentum, inference, mode); per example the channel axis is 0, so 1 for the batch.
        _jax("equinox", "xbn.adapters.equinox.adapter", "equinox", "equinox.nn.BatchNorm",
             "equinox", EMA_ONLY_ONE_AFFINE,
             Convention("equinox", "Equinox", "eqx.nn.BatchNorm", "import equinox as eqx",
                        "momentum", False, "eps", None, None, "channelwise_affine", "input_size",
                        1, 1, False, "there is no switch: keep inference=False at inference too"),
             "equinox"),
        # paddle/nn/layer/norm.py:759-875 _BatchNormBase(num_features, momentum=0.9,
        # epsilon=1e-05, weight_attr=None, bias_attr=None, data_format='NCHW',
        # use_global_stats=None, name=None): momentum weighs the old value (Keras' direction);
        # weight_attr=False / bias_attr=False drop the weight / the bias alone (:790-808);
        # running statistics are always created (:813-835); channels are dim 1 by default.
        FrameworkInfo(
            "paddle", "xbn.adapters.paddle.adapter", "paddle", ("paddlepaddle",),
            ("paddlepaddle",), {}, "paddle.nn.BatchNorm1D/2D/3D (dygraph)", "paddle",
            EMA_ONLY,
            Convention("paddle", "PaddlePaddle", "paddle.nn.BatchNorm{d}D", "import paddle",
                       "momentum", False, "epsilon", "bias_attr", "weight_attr", None,
                       "num_features", 1, 1, False,
                       "build it with use_global_stats=False: batch statistics in train and "
                       "eval mode (the running statistics are still kept and updated)"),
            Profile("paddle", "paddle")),
        # mlx/nn/layers/normalization.py:320-344 BatchNorm(num_features, eps=1e-5,
        # momentum=0.1, affine=True, track_running_stats=True): momentum weighs the new batch
        # (torch's direction, :408-409); channels last (:371 reduces every axis but the last).
        FrameworkInfo(
            "mlx", "xbn.adapters.mlx.adapter", "mlx", ("mlx",), ("mlx",), {},
            "mlx.nn.BatchNorm (CPU)", "mlx",
            Capabilities(cumulative_momentum=False, no_running_stats=True,
                         scale_without_center=False, center_without_scale=False),
            Convention("mlx", "MLX", "nn.BatchNorm", "import mlx.nn as nn", "momentum",
                       True, "eps", None, None, "affine", "num_features", -1, -1, False),
            Profile("mlx", "mlx")),
    ]
}

FRAMEWORK_IDS: tuple[str, ...] = tuple(FRAMEWORKS)
# Derived views (the built-in ids; plugins added to FRAMEWORKS later have none of these).
CONVENTIONS: dict[str, Convention] = {fid: i.convention for fid, i in FRAMEWORKS.items()
                                      if i.convention is not None and i.convention.id == fid}
PORT_IDS: tuple[str, ...] = tuple(CONVENTIONS)
FORMATS: dict[str, Format] = {f.name: f for fam in FAMILIES.values() for f in fam.formats}


# -- installation (package metadata only: nothing is imported) -----------------------------

def version(framework_id: str) -> str | None:
    """Version of the framework's main distribution, or None when not installed."""
    for dist in info(framework_id).distributions:
        found = installed(dist)
        if found:
            return found
    return None


def requires(framework_id: str) -> tuple[str, ...]:
    """Distributions an id needs: its framework's, and its mode's (``torch+onnx``: onnx too)."""
    mode = _mode(framework_id)
    return (*info(framework_id).requires, *(mode.requires if mode else ()))


def missing(framework_id: str) -> list[str]:
    """Distributions this framework id needs that are not installed (empty: available)."""
    return [d for d in requires(framework_id) if installed(d) is None]


def extra_of(framework_id: str) -> str:
    """The pip extra that installs what ``framework_id`` needs."""
    mode = _mode(framework_id)
    return mode.extra if mode is not None and mode.extra else info(framework_id).extra


def available(framework_id: str) -> bool:
    return not missing(framework_id)


def availability() -> dict[str, dict]:
    """Per framework: available, version, extra, missing distributions."""
    out = {}
    for fid, entry in FRAMEWORKS.items():
        miss = missing(fid)
        out[fid] = {"available": not miss, "version": version(fid), "extra": entry.extra,
                    "missing": miss}
    return out


def moded_availability(framework_id: str, base: dict | None = None) -> dict:
    """``availability()``'s entry for any id: a mode's own distributions and extra count
    (``torch+onnx`` without onnxruntime is unavailable, ``pip install "xbn[onnx]"``)."""
    entry = dict(base if base is not None else availability()[base_id(framework_id)])
    miss = missing(framework_id)
    entry.update(available=not miss, missing=miss, extra=extra_of(framework_id))
    return entry


# -- code, found by name --------------------------------------------------------------------

def info(framework_id: str) -> FrameworkInfo:
    """The registry entry under any id (``torch+compile@cuda`` -> torch's); KeyError if none."""
    return FRAMEWORKS[base_id(framework_id)]


def _mode(framework_id: str) -> Mode | None:
    name = mode_of(framework_id)
    return mode_named(base_id(framework_id), name) if name else None


def module_path(framework_id: str) -> str:
    """Importable module of an id's adapter (an export mode has its own); a dotted ``module``
    is used as is (plugins too)."""
    mode = _mode(framework_id)
    module = mode.module if mode is not None and mode.module else info(framework_id).module
    return module if "." in module else f"xbn.adapters.{module}"


def load_adapter(framework_id: str, module: str | None = None):
    """Import the adapter module (and so the framework) and make the adapter of an id, its
    execution mode set (``Adapter.mode``: None runs the plain id). Call only inside a worker."""
    mod = importlib.import_module(module or module_path(framework_id))
    adapter = mod.make_adapter(base_id(framework_id))
    adapter.mode = mode_of(framework_id)
    return adapter


def family_module(family: str, part: str):
    """``xbn.adapters.<family>.<part>`` (state_io, live), imported on first use."""
    return importlib.import_module(f"{FAMILIES[family].package}.{part}")


def family_of(framework_id: str) -> Family | None:
    found = FRAMEWORKS.get(base_id(framework_id))
    return FAMILIES.get(found.family) if found is not None else None


def live_families() -> list[Family]:
    return [f for f in FAMILIES.values() if f.live]


# -- what a framework can express and how it spells it ---------------------------------------

def capabilities(framework_id: str) -> Capabilities:
    """Declared capabilities, resolved against the installed versions (:class:`Since`); an id
    the registry does not know (a plugin) declares none."""
    found = FRAMEWORKS.get(base_id(framework_id))
    return found.capabilities.resolved() if found is not None else Capabilities()


def declared_capabilities(framework_id: str) -> Capabilities:
    """The declaration itself, :class:`Since` fields unresolved."""
    found = FRAMEWORKS.get(base_id(framework_id))
    return found.capabilities if found is not None else Capabilities()


def convention_of(framework_id: str) -> Convention | None:
    found = FRAMEWORKS.get(base_id(framework_id))
    return found.convention if found is not None else None


def clean(x: float) -> float:
    """``1 - 0.99`` is 0.010000000000000009: round away the binary noise of a subtraction."""
    return float(f"{x:.12g}")


def _new_batch_weight(framework_id: str) -> bool:
    conv = convention_of(framework_id)
    if conv is None:
        raise ValueError(f"{framework_id} has no momentum convention of its own")
    return conv.new_batch_weight


def native_momentum(framework_id: str, decay: float | None) -> float | None:
    """The value of ``framework_id``'s momentum keyword for a Keras-style decay (weight of the
    old value): ``1 - m`` for torch, ``m`` elsewhere, as a user would write it; None stays."""
    if decay is None:
        return None
    return clean(1.0 - decay) if _new_batch_weight(framework_id) else clean(decay)


def decay_from_native(framework_id: str, momentum: float | None) -> float | None:
    """Keras-style decay (weight of the old value) from ``framework_id``'s own momentum."""
    if momentum is None:
        return None
    return clean(1.0 - momentum) if _new_batch_weight(framework_id) else clean(momentum)
