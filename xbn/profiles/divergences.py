"""Known divergences as data (``xbn/profiles/divergences.toml``): rows a framework gets wrong
on purpose or by a reported bug, each with a reason and a link, which the explanations and the
fuzzer leave quiet.

An entry is scoped by what a scenario does, never by its name: conditions on the layer
(``layer``), on the row's own step (``step``), and on the steps up to it (``after``: the row's
step or an earlier one meets them), so a user's copy of a built-in scenario under any name is
covered alike. The vocabulary is ``LAYER_CONDITIONS`` and ``STEP_CONDITIONS``; the file's header
comment describes each condition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from ..common.dtypes import DTYPES, overflowing
from ..frameworks import registry
from ..scenario.model import LAYOUTS, OPS, QUANTITIES, STATE_QUANTITIES, Layer, Scenario, Step

DIVERGENCES = Path(__file__).parent / "divergences.toml"


def _moded(fid: str) -> bool:
    """Whether ``fid`` is a registry id with one of its declared modes (``tf-keras+xla``): a
    compiled program's divergence is its own."""
    from ..frameworks.devices import IdError, base_id, parse

    try:
        return base_id(fid) in registry.FRAMEWORKS and "+" in fid and parse(fid) == fid
    except IdError:
        return False
_DIVERGENCE_KEYS = ("framework", "quantity", "layer", "step", "after", "reason", "link")
_REQUIRED = ("framework", "quantity", "reason", "link")


def training(step: Step) -> bool | None:
    """Whether the step runs the layer in training mode as the scenario says it: True for a
    ``fit`` and a ``call``/``grad`` with ``training = true``; False for a ``predict`` and a
    ``call``/``grad`` with ``training = false``; None where the scenario does not say (a call
    without ``training``, whose mode is the framework's default; set, set_weights, reset)."""
    if step.op == "fit":
        return True
    if step.op == "predict":
        return False
    return step.training if step.op in ("call", "grad") else None


def updates(scenario: Scenario, index: int) -> int:
    """Training updates of the running statistics before step ``index``: each repetition of a
    training step (``training``; a fit's every epoch), not counted while a ``set`` step has
    made the layer ``trainable = false`` (Keras then runs a training call in inference mode),
    and counted from 0 again after a ``reset``."""
    n, trainable = 0, True
    for step in scenario.steps[:index]:
        if step.op == "set" and step.trainable is not None:
            trainable = step.trainable
        elif step.op == "reset":
            n = 0
        elif trainable and training(step):
            n += step.repeat * (step.epochs if step.op == "fit" else 1)
    return n


def _empty_input(scenario: Scenario, step: Step) -> bool:
    return step.input is not None and scenario.input_shape(step.input)[0] == 0


def _exceeding(scenario: Scenario, step: Step) -> set[str]:
    """The quantities a set_weights step sets beyond the largest finite value of the layer's
    dtype (a float32 statistic that the 16-bit compute dtype cannot hold)."""
    return {q for q, v in step.values.items() if overflowing(v, scenario.layer.dtype).size}


def _at(read: Callable[[Scenario, Step], Any]) -> Callable[[Scenario, int], Any]:
    return lambda scenario, i: read(scenario, scenario.steps[i])


# name -> (what a value may be: names, bool or int, how the layer shows it)
LAYER_CONDITIONS: dict[str, tuple[Any, Callable[[Layer], Any]]] = {
    "dtype": (DTYPES, lambda layer: layer.dtype),
    "param_dtype": (DTYPES, lambda layer: layer.state_dtype),  # its dtype where unset
    "layout": (tuple(LAYOUTS), lambda layer: layer.layout),
    "replicas": (bool, lambda layer: bool(layer.replicas)),
    "synchronized": (bool, lambda layer: layer.synchronized),
    "center": (bool, lambda layer: layer.center),
    "scale": (bool, lambda layer: layer.scale),
    "defaults": (bool, lambda layer: layer.defaults),
    "track_running_stats": (bool, lambda layer: layer.track_running_stats),
}
# name -> (what a value may be, how step i of a scenario shows it); ``updates`` holds from that
# many updates on, ``exceeds_dtype`` where the step sets one of the named quantities so
STEP_CONDITIONS: dict[str, tuple[Any, Callable[[Scenario, int], Any]]] = {
    "op": (OPS, _at(lambda s, step: step.op)),
    "training": (bool, _at(lambda s, step: training(step))),
    "empty_input": (bool, _at(_empty_input)),
    "target_is_input": (bool, _at(lambda s, step: step.target is not None and step.target == step.input)),
    "updates": (int, updates),
    "exceeds_dtype": (STATE_QUANTITIES, _at(_exceeding)),
}
_TABLES = {"layer": LAYER_CONDITIONS, "step": STEP_CONDITIONS, "after": STEP_CONDITIONS}


def _checked(value, allowed, where: str):
    """A condition's value, checked against what it may be: names come back as a tuple."""
    if allowed is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {value!r} is not true or false")
        return value
    if allowed is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {value!r} is not a whole number >= 1")
        return value
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else None
    bad = [v for v in names or () if v not in allowed]
    if not names or bad:
        raise ValueError(f"{where}: {bad[0] if bad else value!r} is not one of {', '.join(allowed)}")
    return names


def _conditions(table, vocabulary: dict, where: str) -> dict:
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{where}: a table of conditions ({', '.join(vocabulary)})")
    for key in table:
        if key not in vocabulary:
            raise ValueError(f"{where}.{key}: unknown condition (conditions: {', '.join(vocabulary)})")
    return {key: _checked(value, vocabulary[key][0], f"{where}.{key}") for key, value in table.items()}


def parse_divergences(text: str, source: str = "xbn/profiles/divergences.toml") -> tuple[dict, ...]:
    """Known divergences from TOML text, checked: each names its framework, the quantities it
    covers (a name or a list), a reason and a link; the tables ``layer``, ``step`` and
    ``after`` narrow it (``_TABLES``). ``quantity`` and every condition naming values come back
    as tuples. Raises ValueError naming the entry and the key."""
    out = []
    for i, entry in enumerate(tomllib.loads(text).get("divergence", [])):
        where = f"{source}: divergence[{i}]"
        for key in entry:
            if key == "scenario":
                raise ValueError(f"{where}.scenario: a divergence is scoped by what a scenario does "
                                 f"(layer, step, after), not by its name")
            if key not in _DIVERGENCE_KEYS:
                raise ValueError(f"{where}.{key}: unknown key (keys: {', '.join(_DIVERGENCE_KEYS)})")
        for key in _REQUIRED:
            if not entry.get(key):
                raise ValueError(f"{where}: {key} is required")
        if entry["framework"] not in registry.FRAMEWORKS and not _moded(entry["framework"]):
            raise ValueError(f"{where}.framework: unknown framework {entry['framework']!r}")
        d = dict(entry, quantity=_checked(entry["quantity"], QUANTITIES, f"{where}.quantity"))
        for key, vocabulary in _TABLES.items():
            if key in d:
                d[key] = _conditions(d[key], vocabulary, f"{where}.{key}")
        out.append(d)
    return tuple(out)


@cache
def known_divergences() -> tuple[dict, ...]:
    """Entries of xbn/profiles/divergences.toml (package data), checked by ``parse_divergences``."""
    return parse_divergences(DIVERGENCES.read_text(encoding="utf-8"))


def _holds(shown, wanted) -> bool:
    if isinstance(wanted, tuple):  # names: one of them (a set of them: any of them)
        return bool(set(shown) & set(wanted)) if isinstance(shown, set) else shown in wanted
    if isinstance(wanted, bool):
        return shown is wanted
    return shown >= wanted  # a count: at least


def _step_meets(scenario: Scenario, i: int, conditions: dict) -> bool:
    return all(_holds(STEP_CONDITIONS[k][1](scenario, i), v) for k, v in conditions.items())


def covers(d: dict, scenario: Scenario, step: int, quantity: str) -> bool:
    """Whether entry ``d`` covers the row of ``quantity`` after step ``step`` of ``scenario``."""
    if quantity not in d["quantity"]:
        return False
    if not all(_holds(LAYER_CONDITIONS[k][1](scenario.layer), v) for k, v in d.get("layer", {}).items()):
        return False
    if "step" in d and not _step_meets(scenario, step, d["step"]):
        return False
    return "after" not in d or any(_step_meets(scenario, i, d["after"]) for i in range(step + 1))


def known_divergence(framework: str, scenario: Scenario, step: int, quantity: str) -> dict | None:
    """The known divergence that covers this row (the framework's ``quantity`` after step
    ``step``, an index into ``scenario.steps``), if any: decided by the scenario's content,
    never by its name. xbn's own entries first, then the user's (``user_divergences``)."""
    for d in (*known_divergences(), *_USER_ENTRIES):
        if d["framework"] == framework and covers(d, scenario, step, quantity):
            return d
    return None


# ----------------------------------------------------------------------------------------
# the user's own known divergences (``--divergences FILE``, the pytest plugin): the same
# schema, the same scoping by content; array-api-tests' habit of an xfails file kept by each
# downstream project, including the report of entries that no longer match anything

_USER_ENTRIES: list[dict] = []  # the active user entries, consulted after xbn's own


def load_user_divergences(path) -> tuple[dict, ...]:
    """A user's divergences file, checked like xbn's own (``parse_divergences``); each entry
    also records where it is (``origin``: ``FILE: divergence[i]``). Raises ValueError with one
    line naming the file and the key."""
    from ..common.strict import read_text

    file = str(path)
    text = read_text(path)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{file}: not valid TOML: {exc}") from None
    return tuple(dict(d, origin=f"{file}: divergence[{i}]")
                 for i, d in enumerate(parse_divergences(text, file)))


@contextmanager
def user_divergences(entries: tuple[dict, ...]) -> Iterator[None]:
    """Within the block, ``known_divergence`` also consults ``entries`` (after xbn's own): a
    difference the user documented is explained by their entry, and no finding."""
    _USER_ENTRIES.extend(entries)
    try:
        yield
    finally:
        del _USER_ENTRIES[len(_USER_ENTRIES) - len(entries):]


def stale_divergences(entries: tuple[dict, ...], scenarios, rows) -> list[dict]:
    """The entries that cover none of ``rows`` ((scenario name, step, framework, quantity) of
    every row the command would otherwise report: a differing row, a change): documented
    differences that have gone away, to be removed from the file."""
    by_name = {s.name: s for s in scenarios}
    hit: set[int] = set()
    for name, step, framework, quantity in rows:
        scenario = by_name.get(name)
        if scenario is None:
            continue
        for i, d in enumerate(entries):
            if i not in hit and d["framework"] == framework and \
                    covers(d, scenario, int(step), quantity):
                hit.add(i)
    return [d for i, d in enumerate(entries) if i not in hit]
