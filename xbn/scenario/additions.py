"""Strict parsing of the scenario keys of the contract's "Additions" (schema 1, optional).

Layer: ``renorm``, ``virtual_batch_size``, ``replicas``, ``synchronized``. Steps: ``mask`` (and
``mask_channels``), ``trace``, and ``momentum``/``epsilon`` on ``set``. Kept apart from
``xbn.scenario.loader`` (which calls these) so that each loader module stays small; the errors
are the same one-line ``ScenarioError`` naming file, step and key. A ground-floor module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .model import MAX_REPLICAS, Layer, Step, channel_axis

LAYER_KEYS = {"renorm", "virtual_batch_size", "replicas", "synchronized"}
RENORM_KEYS = ("momentum", "rmax", "rmin", "dmax")
MASK_OPS = ("call", "predict", "grad", "fit")
TRACE_OPS = ("call", "predict", "fit")
# ops that are not supported on replicas yet: how an engine reduces gradients across replicas
# (DDP averages, MirroredStrategy sums per-replica losses, pmean by hand) is its own topic
REPLICA_REFUSED_OPS = ("fit", "grad")
# frameworks whose replicated path takes [layer.native.<id>] replicas_engine = "shard_map" | "jit"
JAX_REPLICA_IDS = ("flax", "flax-nnx", "haiku", "equinox")


def parse_layer(c, t: dict, layer: Layer) -> None:
    """The additions' layer keys found in table ``t`` (already checked for unknown keys)."""
    if "renorm" in t:
        r = c.keys(t["renorm"], set(RENORM_KEYS), "layer.renorm")
        renorm: dict[str, float] = {}
        for key in RENORM_KEYS:
            if key in r:
                # Keras accepts dmax = 0 (no shift); rmin and rmax scale, so they must be > 0
                renorm[key] = c.number(r[key], f"layer.renorm.{key}",
                                       positive=key in ("rmax", "rmin"))
        if renorm.get("dmax", 0.0) < 0:
            c.fail(f"must be >= 0, got {renorm['dmax']}", "layer.renorm.dmax")
        if "momentum" in renorm and not 0.0 <= renorm["momentum"] <= 1.0:
            c.fail(f"must be in [0, 1], got {renorm['momentum']}", "layer.renorm.momentum")
        if "rmin" in renorm and "rmax" in renorm and renorm["rmin"] > renorm["rmax"]:
            c.fail(f"rmin ({renorm['rmin']}) is larger than rmax ({renorm['rmax']})",
                   "layer.renorm.rmin")
        layer.renorm = renorm
    if "virtual_batch_size" in t:
        layer.virtual_batch_size = c.integer(t["virtual_batch_size"], "layer.virtual_batch_size")
    if "replicas" in t:
        raw = c.expect(t["replicas"], (list,), "layer.replicas")
        if not raw or len(raw) > MAX_REPLICAS:
            c.fail(f"expected 1 to {MAX_REPLICAS} replicas, got {len(raw)}", "layer.replicas")
        layer.replicas = [c.integer(v, f"layer.replicas[{i}]") for i, v in enumerate(raw)]
    if "synchronized" in t:
        if "replicas" not in t:
            c.fail("only meaningful with replicas", "layer.synchronized")
        layer.synchronized = c.boolean(t["synchronized"], "layer.synchronized")
    for fid in JAX_REPLICA_IDS:  # a native option of the replicated path only
        native = layer.native.get(fid, {})
        if "replicas_engine" in native:
            key = f"layer.native.{fid}.replicas_engine"
            c.string(native["replicas_engine"], key, ("shard_map", "jit"))
            if not layer.replicas:
                c.fail("only meaningful with replicas", key)
    if layer.replicas and (layer.renorm is not None or layer.virtual_batch_size is not None):
        c.fail("renorm and virtual_batch_size are not supported with replicas yet",
               "layer.replicas")


def step_keys(op: str) -> set[str]:
    """The additions' keys a step of ``op`` may have."""
    keys = set()
    if op in MASK_OPS:
        keys |= {"mask", "mask_channels"}
    if op in TRACE_OPS:
        keys.add("trace")
    if op == "set":
        keys |= {"momentum", "epsilon"}
    return keys


def parse_step(c, raw: dict, step: Step, layer: Layer, inputs: dict[str, np.ndarray],
               input_shape: tuple[int, ...] | None) -> None:
    """The additions' keys of one step; ``c`` is already inside the step; ``input_shape``:
    the shape of the step's input (through "@N" chains), None for ops without one."""
    if "trace" in raw:
        step.trace = c.boolean(raw["trace"], "trace")
    if "mask_channels" in raw:
        step.mask_channels = c.boolean(raw["mask_channels"], "mask_channels")
        if "mask" not in raw:
            c.fail("only meaningful with mask", "mask_channels")
        if step.op == "fit" and step.mask_channels:
            c.fail("a mask over the channel axis is not supported on fit yet (the masked "
                   "loss weighs positions)", "mask_channels")
    if "mask" in raw:
        step.mask = _mask(c, raw["mask"], layer, inputs, input_shape, step.mask_channels)
        want = list(input_shape or ())
        if step.op == "fit" and want and list(inputs[step.mask].shape) != \
                want[:channel_axis(layer.layout)] + want[channel_axis(layer.layout) + 1:]:
            c.fail("a mask on fit is sliced with the mini-batches: it has the input's shape "
                   "without the channel axis, no axis broadcast", "mask")
    if step.op == "set":
        if "momentum" in raw:
            step.momentum = _momentum(c, raw["momentum"], "momentum")
        if "epsilon" in raw:
            step.epsilon = c.number(raw["epsilon"], "epsilon")
            if step.epsilon < 0:
                c.fail(f"must be >= 0, got {step.epsilon}", "epsilon")
    if layer.replicas:
        if step.op in REPLICA_REFUSED_OPS:
            c.fail(f"{step.op} is not supported with replicas yet (cross-replica gradient "
                   "reduction differs per engine)", "op")
        if input_shape is not None:
            rows = input_shape[0] if input_shape else 0
            if rows != sum(layer.replicas):
                c.fail(f"a batch of {rows} rows cannot be split as replicas {layer.replicas} "
                       f"(they sum to {sum(layer.replicas)})", "input")


def _momentum(c, value: Any, where: str) -> float | str:
    if isinstance(value, str):
        return c.string(value, where, ("cumulative",))
    m = c.number(value, where)
    if not 0.0 <= m <= 1.0:
        c.fail(f"must be in [0, 1] (Keras convention) or \"cumulative\", got {m}", where)
    return m


def _mask(c, value: Any, layer: Layer, inputs: dict[str, np.ndarray],
          input_shape: tuple[int, ...] | None, channels: bool = False) -> str:
    """A mask of the input's shape without the channel axis (with it: ``channels``), where any
    axis may be 1 (broadcast, as the frameworks broadcast a mask)."""
    name = c.string(value, "mask")
    if name not in inputs:
        c.fail(f"unknown input {name!r} (inputs: {', '.join(sorted(inputs)) or 'none'})", "mask")
    # the loader checks every input against the layout's rank; a mask has one axis less, so
    # mask arrays are checked here from the raw values the loader kept
    arr = inputs[name]
    want = list(input_shape or ())
    if want and not channels:
        del want[channel_axis(layer.layout)]
    if arr.ndim != len(want) or any(a not in (w, 1)
                                    for a, w in zip(arr.shape, want, strict=True)):
        what = "the input's shape" if channels else "the input's shape without the channel axis"
        c.fail(f"a mask has {what}, {want} (an axis may be 1: broadcast); input {name!r} has "
               f"shape {list(arr.shape)}", "mask")
    if not np.all((arr == 0) | (arr == 1)):
        c.fail(f"input {name!r} must hold only 0 and 1 (1 = valid)", "mask")
    return name
