"""What a scenario is, as plain data: the layer, the steps, the layouts and quantities.

The loader (``xbn.scenario.loader``) builds these from a file after checking every key, and
re-exports all of them; they live apart so that each module stays small enough to read whole.
A ground-floor module: it imports nothing from xbn but ``xbn.common`` (dtypes, and the strict
JSON spellings of non-finite values, which inputs may hold).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..common.dtypes import wider
from ..common.jsonio import NONFINITE, clean

SCHEMA = 1

LAYOUTS: dict[str, int] = {
    "NC": 2, "NCL": 3, "NLC": 3, "NCHW": 4, "NHWC": 4, "NCDHW": 5, "NDHWC": 5,
}
OPS = ("call", "predict", "set", "fit", "grad", "set_weights", "reset")
# ops whose output a later step can take as its input ("@N")
OUTPUT_OPS = ("call", "predict", "grad")
STATE_QUANTITIES = ("moving_mean", "moving_variance", "gamma", "beta")
# observed only in scenarios with a reset step (what torch's reset zeroes; the reference counts
# its training batches too): every other scenario's observations stay as they were
COUNTER = "num_batches_tracked"
# observed only in scenarios with replicas: every replica's copy of the running statistics,
# shape [R, C] (``moving_mean``/``moving_variance`` are what the framework reads back on the host)
REPLICA_QUANTITIES = ("replica_moving_mean", "replica_moving_variance")
# observed only in scenarios with ``renorm``: Keras' Batch Renormalization variables (Keras 3
# and tf-keras name them so), shape [C]; moving_variance is derived from moving_stddev there
RENORM_QUANTITIES = ("renorm_mean", "renorm_stddev", "moving_stddev")
QUANTITIES = ("output", *STATE_QUANTITIES, "loss", "grad_input", "grad_gamma", "grad_beta",
              COUNTER, *REPLICA_QUANTITIES, *RENORM_QUANTITIES)
MAX_REPLICAS = 8  # host devices a worker asks its engine for (XLA flag, logical CPU devices)
# how many host devices a worker's engines should offer: set by xbn.execution.worker.prepare_replicas
# before the framework is imported, read by engines that configure devices (TensorFlow)
REPLICAS_ENV = "XBN_REPLICAS"
# layer keys of the "Additions" that an adapter must declare it expresses
# (``Adapter.layer_features``); any other adapter reports n/a rather than ignore them
LAYER_FEATURES = ("renorm", "virtual_batch_size")
# what a scenario's ``name`` may be (the loader checks it): lowercase, digits and dashes, so that it
# reads the same in every report, snapshot and JUnit class name (``xbn.NAME``)
SCENARIO_NAME = re.compile(r"^[a-z0-9-]+$")
BUILTIN = "builtin:"  # how a built-in scenario's path is recorded: builtin:NAME


def split_rows(x: np.ndarray, replicas: list[int]) -> list[np.ndarray]:
    """A batch split over replicas: ``replicas[i]`` rows each, in batch order."""
    return np.split(np.asarray(x), np.cumsum(replicas)[:-1], axis=0)


def chained(name: str | None) -> int | None:
    """N for an input written "@N" (this framework's own output of step N), else None."""
    return int(name[1:]) if name and name.startswith("@") and name[1:].isdigit() else None


def channels_last(layout: str) -> bool:
    return layout != "NC" and layout.endswith("C")


def channel_axis(layout: str) -> int:
    return LAYOUTS[layout] - 1 if channels_last(layout) else 1


class ElementMask(np.ndarray):
    """A step's mask with ``mask_channels = true``: it has the input's channel axis too, so it
    can mask single channels (Flax's mask is broadcast to the whole input). The driver hands
    adapters this view of the mask array; a plain array is a mask of positions (the input's
    shape without the channel axis, Keras' convention)."""


def mask_elements(mask, shape: tuple[int, ...], layout: str) -> np.ndarray:
    """The boolean mask of every element of an input of ``shape``: a mask of positions gets the
    channel axis (size 1), an ``ElementMask`` has it; either is then broadcast (each of its
    axes is the input's size or 1, which the loader checks)."""
    valid = np.asarray(mask) != 0
    if not isinstance(mask, ElementMask):
        valid = np.expand_dims(valid, channel_axis(layout))
    return np.broadcast_to(valid, shape)


@dataclass
class Optimizer:
    name: str = "sgd"
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7  # Keras' default; passed explicitly to every framework
    rho: float | None = None  # RMSprop's decay of the squared gradients (0.9 when rmsprop)


@dataclass
class Layer:
    features: int
    layout: str = "NC"
    momentum: float | str = 0.99
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    track_running_stats: bool = True
    dtype: str = "float32"
    defaults: bool = False
    native: dict[str, dict[str, Any]] = field(default_factory=dict)
    param_dtype: str | None = None  # gamma, beta, running statistics; None: the same as dtype
    # Batch Renormalization (Keras): the keys given of momentum, rmax, rmin, dmax ({}: defaults)
    renorm: dict[str, float] | None = None
    virtual_batch_size: int | None = None  # tf-keras ghost batches
    replicas: list[int] | None = None  # rows of every input per replica, in batch order
    synchronized: bool = False  # with replicas: cross-replica statistics

    def features_used(self) -> list[str]:
        """Which of ``LAYER_FEATURES`` this layer uses."""
        return [f for f in LAYER_FEATURES if getattr(self, f) is not None]

    @property
    def rank(self) -> int:
        return LAYOUTS[self.layout]

    @property
    def state_dtype(self) -> str:
        """The dtype gamma, beta and the running statistics live in (``param_dtype``)."""
        return self.param_dtype or self.dtype

    @property
    def mixed(self) -> bool:
        """param_dtype differs from dtype (16-bit inputs, float32 parameters: mixed precision)."""
        return self.state_dtype != self.dtype

    @property
    def cumulative(self) -> bool:
        return self.momentum == "cumulative"


@dataclass
class Step:
    index: int
    op: str
    input: str | None = None
    training: bool | None = None
    repeat: int = 1
    trainable: bool | None = None
    mode: str | None = None
    target: str | None = None
    loss: str = "mse"
    optimizer: Optimizer | None = None
    epochs: int = 1
    batch_size: int | None = None
    weights: str | None = None
    values: dict[str, list[float]] = field(default_factory=dict)  # set_weights
    expect: dict[str, Any] | None = None  # {"source": str, quantity: nested list}
    mask: str | None = None  # call/predict/grad/fit: a named 0/1 input, shape = input without channels
    mask_channels: bool = False  # the mask has the channel axis too (masks single channels)
    trace: bool = False  # with repeat: observations after every repetition ("rep": k)
    momentum: float | str | None = None  # set: the layer's new momentum (Keras convention)
    epsilon: float | None = None  # set: the layer's new epsilon


@dataclass
class Scenario:
    name: str
    layer: Layer
    inputs: dict[str, np.ndarray]
    steps: list[Step]
    title: str = ""
    description: str = ""
    path: str = "<memory>"  # as recorded_path() writes it: builtin:NAME or relative

    @property
    def replicated(self) -> bool:
        """Whether the layer runs on replicas (a real distributed engine per framework)."""
        return bool(self.layer.replicas)

    @property
    def observes_renorm(self) -> bool:
        """Whether ``RENORM_QUANTITIES`` are observed: in scenarios whose layer renormalizes."""
        return self.layer.renorm is not None

    @property
    def observes_counter(self) -> bool:
        """Whether ``COUNTER`` is observed: in scenarios that reset the statistics."""
        return any(s.op == "reset" for s in self.steps)

    def input_shape(self, name: str) -> tuple[int, ...]:
        """The shape of a named input, or of the output of step N for "@N" (its input's)."""
        while (n := chained(name)) is not None:
            name = self.steps[n].input
        return tuple(self.inputs[name].shape)

    def to_dict(self) -> dict:
        """JSON-able form (sent to workers, hashed into snapshots). Optional keys that are not
        set are left out, so a scenario that does not use them keeps its digest."""
        data = asdict(self)
        # an empty array keeps its shape ({"empty": shape}); every other input is a nested list,
        # NaN and infinities spelt as strict JSON writes them ("NaN", "Infinity", "-Infinity"),
        # so that a snapshot stores, and hashes, the very text the digest was computed from
        data["inputs"] = {k: ({"empty": list(v.shape)} if v.size == 0 else clean(v.tolist()))
                          for k, v in self.inputs.items()}
        for key, unset in _UNSET_LAYER.items():
            if data["layer"][key] == unset:
                del data["layer"][key]
        for step in data["steps"]:
            for key, unset in _UNSET_STEP.items():
                if step[key] == unset:
                    del step[key]
            if step.get("optimizer") and step["optimizer"]["rho"] is None:
                del step["optimizer"]["rho"]  # only RMSprop has one
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Scenario:
        layer = Layer(**data["layer"])
        steps = []
        for s in data["steps"]:
            s = dict(s)
            if s.get("optimizer") is not None:
                s["optimizer"] = Optimizer(**s["optimizer"])
            steps.append(Step(**s))
        inputs = {k: (np.zeros(v["empty"]) if isinstance(v, dict) else
                      np.asarray(_finite_or_spelt(v), dtype=np.float64))
                  for k, v in data["inputs"].items()}
        return cls(data["name"], layer, inputs, steps, data.get("title", ""),
                   data.get("description", ""), data.get("path", "<memory>"))

    @property
    def digest(self) -> str:
        body = self.to_dict()
        body.pop("path")
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _finite_or_spelt(value):
    """A nested list of numbers with "NaN", "Infinity", "-Infinity" read back as floats."""
    if isinstance(value, list):
        return [_finite_or_spelt(v) for v in value]
    return NONFINITE.get(value, value) if isinstance(value, str) else value


# optional keys that are left out of ``to_dict`` when unset, so that old scenarios keep digests
_UNSET_LAYER = {"param_dtype": None, "renorm": None, "virtual_batch_size": None,
                "replicas": None, "synchronized": False}
_UNSET_STEP = {"mask": None, "mask_channels": False, "trace": False, "momentum": None,
               "epsilon": None}


def quantity_dtype(layer: Layer, quantity: str) -> str:
    """The dtype a quantity lives in: inputs, outputs and their gradients in ``dtype``; gamma,
    beta, the running statistics and the parameters' gradients in ``param_dtype``; the loss
    in at least float32 (a mean over every element, reduced in float32 or wider)."""
    if quantity in ("output", "grad_input"):
        return layer.dtype
    if quantity == "loss":
        return wider(layer.dtype, "float32")
    return layer.state_dtype
