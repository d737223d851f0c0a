"""Scenario files: strict loading of TOML/JSON into plain data.

A typo must never change a result silently, so every key is checked, and every error names
the file, the step and the key in one line (``ScenarioError``), which the CLI prints before
exiting with status 2. This module reads the file, the layer and the inputs; the steps, one
parser per op, are in ``xbn.scenario.steps``. The data it builds (``Layer``, ``Step``,
``Scenario``, the layouts and quantities) is defined in ``xbn.scenario.model`` and re-exported
here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..common.dtypes import DTYPES
from ..common.strict import TOML_NAMES, Fields, StrictError, read_text
from ..schemas import validate
from . import additions
from .ddp import check_ddp_options
from .model import (  # noqa: F401 - re-exported: the scenario's vocabulary
    BUILTIN,
    COUNTER,
    LAYOUTS,
    MAX_REPLICAS,
    OPS,
    OUTPUT_OPS,
    QUANTITIES,
    RENORM_QUANTITIES,
    REPLICA_QUANTITIES,
    SCENARIO_NAME,
    SCHEMA,
    STATE_QUANTITIES,
    ElementMask,
    Layer,
    Optimizer,
    Scenario,
    Step,
    chained,
    channel_axis,
    channels_last,
    mask_elements,
    quantity_dtype,
)
from .steps import parse_step

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


def _parse_layer(c: _Checker, raw) -> Layer:
    from ..frameworks.registry import FRAMEWORK_IDS

    t = c.keys(raw, _LAYER_KEYS, "layer", required=("features",))
    layer = Layer(features=c.integer(t["features"], "layer.features", maximum=MAX_FEATURES))
    if "layout" in t:
        layer.layout = c.string(t["layout"], "layer.layout", tuple(LAYOUTS))
    if "momentum" in t:
        m = t["momentum"]
        if isinstance(m, str) and _is_number(m):  # momentum = "0.9": a quoted number
            c.fail(f"must be a number (0.9 without quotes, Keras convention) or "
                   f"\"cumulative\", got the string {m!r}", "layer.momentum")
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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    and is checked against the step's input there (``scenario_additions``). A literal input
    may hold NaN and infinities (padding, overflowed activations); a generated one is finite."""
    key = f"inputs.{name}"
    if isinstance(raw, dict):
        arr = _generated(c, raw, key)
    elif mask:  # 0s and 1s (checked against the step's input by ``additions``)
        return c.array(raw, key)
    else:  # literal values may be non-finite: TOML nan/inf, JSON "NaN"/"Infinity"/"-Infinity"
        arr = c.array(c.numbers(raw, key), key, finite=False)
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


def parse(data: dict, file: str = "<memory>") -> Scenario:
    """Validate a decoded TOML/JSON document and build a Scenario."""
    c = _Checker(file)
    c.keys(data, {"schema", "name", "title", "description", "layer", "inputs", "steps"},
           required=("schema", "name", "layer", "steps"))
    schema = c.integer(data["schema"], "schema")
    if schema != SCHEMA:
        c.fail(f"unsupported schema {schema}; this xbn reads schema {SCHEMA}", "schema")
    name = c.string(data["name"], "name")
    if not SCENARIO_NAME.match(name):
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
        steps.append(parse_step(c, i, s, layer, inputs, steps))
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
    # the published schema (``xbn schema scenario``), after the reader's own precise messages
    # and before anything runs: a file the reader takes must be one the contract describes
    validate("scenario", data, file, ScenarioError)
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
