"""Scenario files: strict loading of TOML/JSON into plain data.

A typo must never change a result silently, so every key is checked, and every error names
the file, the step and the key in one line (``ScenarioError``), which the CLI prints before
exiting with status 2. The data it builds (``Layer``, ``Step``, ``Scenario``, the layouts and
quantities) is defined in ``xbn.scenario.model`` and re-exported here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..common.dtypes import DTYPES
from ..common.strict import TOML_NAMES, Fields, StrictError, read_text
from . import additions
from .ddp import check_ddp_options
from .model import (  # noqa: F401 - re-exported: the scenario's vocabulary
    BUILTIN,
    COUNTER,
    FRAMEWORK_NAME,
    LAYOUTS,
    MAX_REPLICAS,
    OPS,
    OUTPUT_OPS,
    QUANTITIES,
    RENORM_QUANTITIES,
    REPLICA_QUANTITIES,
    SCHEMA,
    STATE_QUANTITIES,
    Layer,
    Optimizer,
    Scenario,
    Step,
    chained,
    channel_axis,
    channels_last,
    quantity_dtype,
)

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

class ScenarioError(StrictError):
    """A malformed scenario: one line naming file, step and key."""


class _Checker(Fields):
    """``strict.Fields`` in a scenario file's words: TOML tables and keys."""

    error = ScenarioError
    names = TOML_NAMES
    wanted = {**TOML_NAMES, bool: "true or false"}
    missing = "required key is missing"


# ----------------------------------------------------------------------------------------
# the loader

_LAYER_KEYS = {"features", "layout", "momentum", "epsilon", "center", "scale",
               "track_running_stats", "dtype", "param_dtype", "defaults", "native",
               *additions.LAYER_KEYS}
MAX_ELEMENTS = 1 << 24  # per input array: a scenario is a handful of batches, not a data set
MAX_FEATURES = 1 << 16
_STEP_KEYS = {
    "call": {"input", "training", "repeat"},
    "predict": {"input", "repeat"},
    "set": {"trainable", "mode"},
    "fit": {"input", "target", "loss", "optimizer", "epochs", "batch_size", "repeat"},
    "grad": {"input", "training", "weights"},
    "set_weights": {"gamma", "beta", "moving_mean", "moving_variance"},
    "reset": set(),
}
_OPTIMIZER_KEYS = {"name", "lr", "beta1", "beta2", "eps", "momentum"}


def _parse_layer(c: _Checker, raw) -> Layer:
    from ..frameworks.registry import FRAMEWORK_IDS

    t = c.keys(raw, _LAYER_KEYS, "layer", required=("features",))
    layer = Layer(features=c.integer(t["features"], "layer.features", maximum=MAX_FEATURES))
    if "layout" in t:
        layer.layout = c.string(t["layout"], "layer.layout", tuple(LAYOUTS))
    if "momentum" in t:
        m = t["momentum"]
        if isinstance(m, str):
            layer.momentum = c.string(m, "layer.momentum", ("cumulative",))
        else:
            m = c.number(m, "layer.momentum")
            if not 0.0 <= m <= 1.0:
                c.fail(f"must be in [0, 1] (Keras convention) or \"cumulative\", got {m}",
                       "layer.momentum")
            layer.momentum = m
    if "epsilon" in t:  # 0 is passed through: each framework's own validation decides
        layer.epsilon = c.number(t["epsilon"], "layer.epsilon")
        if layer.epsilon < 0:
            c.fail(f"must be >= 0, got {layer.epsilon}", "layer.epsilon")
    for key in ("center", "scale", "track_running_stats", "defaults"):
        if key in t:
            setattr(layer, key, c.boolean(t[key], f"layer.{key}"))
    if "dtype" in t:
        layer.dtype = c.string(t["dtype"], "layer.dtype", DTYPES)
    if "param_dtype" in t:  # kept only where it differs: the same as dtype means unset
        param_dtype = c.string(t["param_dtype"], "layer.param_dtype", DTYPES)
        layer.param_dtype = None if param_dtype == layer.dtype else param_dtype
    if "native" in t:
        native = c.keys(t["native"], set(FRAMEWORK_IDS), "layer.native")
        for fid, kwargs in native.items():
            c.keys(kwargs, set(kwargs) if isinstance(kwargs, dict) else set(),
                   f"layer.native.{fid}")
            layer.native[fid] = dict(kwargs)
    _check_memory_format(c, layer)
    additions.parse_layer(c, t, layer)
    check_ddp_options(c, layer)
    return layer


def _check_memory_format(c: _Checker, layer: Layer) -> None:
    """``[layer.native.torch] memory_format``: xbn's one torch option that is not a constructor
    argument (the torch adapter lays its inputs out so); channels-last needs 4-D/5-D inputs."""
    native = layer.native.get("torch", {})
    if "memory_format" not in native:
        return
    key = "layer.native.torch.memory_format"
    value = c.string(native["memory_format"], key, ("contiguous", "channels_last"))
    if value == "channels_last" and layer.rank not in (4, 5):
        c.fail(f"channels_last needs a 4-D or 5-D layout, got {layer.layout}", key)


def _parse_input(c: _Checker, name: str, raw, layer: Layer, mask: bool = False) -> np.ndarray:
    """Input ``name``; a ``mask`` (named by a step's mask key) has the input's rank less one
    and is checked against the step's input there (``scenario_additions``)."""
    key = f"inputs.{name}"
    arr = _generated(c, raw, key) if isinstance(raw, dict) else c.array(raw, key)
    if mask:
        return arr
    if arr.ndim != layer.rank:
        c.fail(f"layout {layer.layout} needs a rank-{layer.rank} array, got shape "
               f"{list(arr.shape)}", key)
    if arr.shape[channel_axis(layer.layout)] != layer.features:
        c.fail(f"channel axis ({layer.layout}) has size {arr.shape[channel_axis(layer.layout)]}, "
               f"but layer.features = {layer.features}", key)
    return c.rounded(arr, layer.dtype, key)


def _generated(c: _Checker, raw: dict, key: str) -> np.ndarray:
    """A generated input; ``shape = [0, ...]`` is a zero-size batch (torch's suite feeds
    BatchNorm one), passed to the frameworks whose own validation decides: drawn with one row,
    which is then dropped."""
    shape = raw.get("shape")
    if isinstance(shape, list) and len(shape) > 1 and type(shape[0]) is int and shape[0] == 0:
        return c.generated({**raw, "shape": [1, *shape[1:]]}, key, MAX_ELEMENTS)[:0]
    return c.generated(raw, key, MAX_ELEMENTS)


def _input_ref(c: _Checker, value, key: str, inputs, like: str | None = None) -> str:
    name = c.string(value, key)
    if name not in inputs:
        c.fail(f"unknown input {name!r} (inputs: {', '.join(sorted(inputs)) or 'none'})", key)
    if like is not None and inputs[name].shape != inputs[like].shape:
        c.fail(f"shape {list(inputs[name].shape)} does not match input {like!r} "
               f"{list(inputs[like].shape)}", key)
    return name


def _chained_ref(c: _Checker, value, key: str, steps: list[Step]) -> tuple[str, tuple]:
    """"@N": this framework's own output of step N, which must come earlier and produce one.
    Returns the name and the shape of that output (the shape of step N's input)."""
    name = c.string(value, key)
    n = chained(name)
    if n is None:
        c.fail(f"expected \"@N\" with N a step index, got {name!r}", key)
    if n >= len(steps):
        c.fail(f"step {n} is not an earlier step (a step can only take the output of one "
               f"that ran before it)", key)
    if steps[n].op not in OUTPUT_OPS:
        c.fail(f"step {n} ({steps[n].op}) has no output (only {', '.join(OUTPUT_OPS)} do)", key)
    shape = steps[n].input
    while (m := chained(shape)) is not None:
        shape = steps[m].input
    return name, shape


def _parse_step(c: _Checker, i: int, raw, layer: Layer, inputs, steps: list[Step]) -> Step:
    """Step ``i``; ``steps``: the steps before it (what "@N" may name)."""
    c = c.within(f"steps[{i}]")  # every location below is inside this step
    c.expect(raw, (dict,))
    if "op" not in raw:
        c.fail(c.missing, "op")
    op = c.string(raw["op"], "op", OPS)
    c.keys(raw, {"op", "expect"} | _STEP_KEYS[op] | additions.step_keys(op))
    step = Step(index=i, op=op)
    source = None  # the named input whose shape the step's input has (through "@N" chains)
    if op in ("call", "predict", "fit", "grad"):
        if "input" not in raw:
            c.fail(c.missing, "input")
        if op in OUTPUT_OPS and isinstance(raw["input"], str) and raw["input"].startswith("@"):
            step.input, source = _chained_ref(c, raw["input"], "input", steps)
        else:
            step.input = source = _input_ref(c, raw["input"], "input", inputs)
        if inputs[source].ndim != layer.rank:
            c.fail(f"input {source!r} has rank {inputs[source].ndim} (it is a mask); layout "
                   f"{layer.layout} needs rank {layer.rank}", "input")
    additions.parse_step(c, raw, step, layer, inputs,
                         None if source is None else tuple(inputs[source].shape))
    if "training" in raw:
        step.training = c.boolean(raw["training"], "training")
    if "repeat" in raw:
        step.repeat = c.integer(raw["repeat"], "repeat")
    if op == "set":
        if not {"trainable", "mode", "momentum", "epsilon"} & set(raw):
            c.fail("give at least one of trainable, mode, momentum, epsilon")
        if "trainable" in raw:
            step.trainable = c.boolean(raw["trainable"], "trainable")
        if "mode" in raw:
            step.mode = c.string(raw["mode"], "mode", ("train", "eval"))
    if op == "fit":
        if "target" not in raw:
            c.fail(c.missing, "target")
        step.target = _input_ref(c, raw["target"], "target", inputs, like=step.input)
        step.loss = c.string(raw.get("loss", "mse"), "loss", ("mse",))
        if "optimizer" not in raw:
            c.fail(f"{c.missing} (e.g. optimizer = {{ name = \"sgd\", lr = 0.1 }})", "optimizer")
        o = c.keys(raw["optimizer"], _OPTIMIZER_KEYS, "optimizer", required=("name", "lr"))
        opt = Optimizer(name=c.string(o["name"], "optimizer.name", ("sgd", "adam")),
                        lr=c.number(o["lr"], "optimizer.lr", positive=True))
        for k in ("beta1", "beta2", "eps"):
            if k in o:
                if opt.name != "adam":
                    c.fail("only meaningful for adam", f"optimizer.{k}")
                setattr(opt, k, c.number(o[k], f"optimizer.{k}", positive=True))
        if "momentum" in o:
            c.fail("SGD momentum is not supported yet (plain SGD only)", "optimizer.momentum")
        step.optimizer = opt
        step.epochs = c.integer(raw.get("epochs", 1), "epochs")
        n = inputs[step.input].shape[0]
        if n == 0:  # a training loop over no batch has no loss to report
            c.fail("a zero-size batch has no rows to train on", "input")
        if "batch_size" in raw:
            step.batch_size = c.integer(raw["batch_size"], "batch_size")
            if step.batch_size > n:
                c.fail(f"larger than the input's batch ({n})", "batch_size")
    if op == "grad":
        if "weights" not in raw:
            c.fail(c.missing, "weights")
        step.weights = _input_ref(c, raw["weights"], "weights", inputs, like=source)
    if op == "set_weights":
        if not any(k in raw for k in STATE_QUANTITIES):
            c.fail("give at least one of gamma, beta, moving_mean, moving_variance")
        for k in STATE_QUANTITIES:
            if k in raw:
                arr = c.array(raw[k], k)
                if arr.ndim == 0:
                    arr = np.full(layer.features, float(arr))
                if arr.shape != (layer.features,):
                    c.fail(f"expected {layer.features} values, got shape {list(arr.shape)}", k)
                if k == "moving_variance" and np.any(arr < 0):
                    c.fail("a variance cannot be negative", k)
                step.values[k] = c.rounded(arr, quantity_dtype(layer, k), k).tolist()
    if "expect" in raw:
        step.expect = _parse_expect(c, raw["expect"], layer, inputs, step, source)
    return step


def _parse_expect(c: _Checker, raw, layer: Layer, inputs, step: Step,
                  source: str | None) -> dict:
    t = c.keys(raw, {"source", *QUANTITIES}, "expect", required=("source",))
    out: dict[str, Any] = {"source": c.string(t["source"], "expect.source")}
    for q, v in t.items():
        if q == "source":
            continue
        if q in REPLICA_QUANTITIES and not layer.replicas:
            c.fail("only observed in scenarios with replicas", f"expect.{q}")
        if q in RENORM_QUANTITIES and layer.renorm is None:
            c.fail("only observed in scenarios with renorm", f"expect.{q}")
        if q not in STATE_QUANTITIES + REPLICA_QUANTITIES + RENORM_QUANTITIES and \
                q not in _RECORDS[step.op]:
            c.fail(f"a {step.op} step records no {q}", f"expect.{q}")
        arr = c.array(v, f"expect.{q}", finite=False)
        if q in ("output", "grad_input"):
            want = inputs[source].shape
        elif q == "loss":
            want = ()
        elif q in REPLICA_QUANTITIES:
            want = (len(layer.replicas), layer.features)
        else:
            want = (layer.features,)
        if arr.ndim == 0 and want != ():
            arr = np.full(want, float(arr))
        if arr.shape != want:
            c.fail(f"expected shape {list(want)}, got {list(arr.shape)}", f"expect.{q}")
        out[q] = c.rounded(arr, quantity_dtype(layer, q), f"expect.{q}").tolist()
    return out


_RECORDS = {"call": ("output",), "predict": ("output",), "fit": ("loss",), "set": (),
            "set_weights": (), "reset": (), "grad": ("output", "grad_input", "grad_gamma", "grad_beta")}


def parse(data: dict, file: str = "<memory>") -> Scenario:
    """Validate a decoded TOML/JSON document and build a Scenario."""
    c = _Checker(file)
    c.keys(data, {"schema", "name", "title", "description", "layer", "inputs", "steps"},
           required=("schema", "name", "layer", "steps"))
    schema = c.integer(data["schema"], "schema")
    if schema != SCHEMA:
        c.fail(f"unsupported schema {schema}; this xbn reads schema {SCHEMA}", "schema")
    name = c.string(data["name"], "name")
    if not FRAMEWORK_NAME.match(name):
        c.fail(f"must match [a-z0-9-]+, got {name!r}", "name")
    title = c.string(data.get("title", ""), "title")
    description = c.string(data.get("description", ""), "description")
    layer = _parse_layer(c, data["layer"])
    raw_inputs = c.expect(data.get("inputs", {}), (dict,), "inputs")
    steps_raw = data["steps"]
    if not isinstance(steps_raw, list) or not steps_raw:
        c.fail("expected a non-empty list of [[steps]]", "steps")
    masks = {s["mask"] for s in steps_raw if isinstance(s, dict) and isinstance(s.get("mask"), str)}
    inputs = {k: _parse_input(c, k, v, layer, mask=k in masks) for k, v in raw_inputs.items()}
    steps: list[Step] = []
    for i, s in enumerate(steps_raw):
        steps.append(_parse_step(c, i, s, layer, inputs, steps))
    return Scenario(name, layer, inputs, steps, title, description, file)


def load(path: str | Path) -> Scenario:
    """Load and validate one scenario file (.toml or .json, or ``builtin:NAME``).

    Errors name the file as given; the scenario records it as ``recorded_path`` does."""
    if str(path).startswith(BUILTIN):
        path = resolve(str(path))
    path = Path(path)
    file = str(path)
    text = read_text(path, ScenarioError)
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ScenarioError(file, "expected a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ScenarioError(file, f"not valid {path.suffix[1:].upper()}: {exc}") from None
    scenario = parse(data, file)
    scenario.path = recorded_path(path)
    return scenario


def builtin_dir() -> Path:
    return Path(__file__).parents[1] / "scenarios"


def builtin_paths() -> list[Path]:
    return sorted(builtin_dir().glob("*.toml"))


def recorded_path(path: str | Path) -> str:
    """How reports and snapshots record a scenario file: ``builtin:NAME`` for a built-in
    scenario, else the path relative to the working directory (``..`` where needed), so that
    what xbn writes is the same in every clone and on every machine."""
    p = Path(path)
    if p.suffix == ".toml" and p.resolve().parent == builtin_dir().resolve():
        return BUILTIN + p.stem
    try:
        return Path(os.path.relpath(p)).as_posix()
    except ValueError:  # on another drive (Windows): nothing relative to say
        return p.as_posix()


def resolve(name_or_path: str) -> Path:
    """A path, the name of a built-in scenario, or ``builtin:NAME`` (as reports record it)."""
    if name_or_path.startswith(BUILTIN):
        return builtin_dir() / f"{name_or_path[len(BUILTIN):]}.toml"
    p = Path(name_or_path)
    if p.exists() or p.suffix in (".toml", ".json"):
        return p
    candidate = builtin_dir() / f"{name_or_path}.toml"
    return candidate if candidate.exists() else p
