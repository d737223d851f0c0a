"""The ``[[steps]]`` of a scenario file: one small parser per op, strict as the whole loader.

Every step is checked in the same order whatever its op, so that a step with several defects
always reports the same one first: its ``op`` and its keys; its input (the ops whose keys
include ``input``: ``_step_input``); the "Additions" keys (``xbn.scenario.additions``);
``training`` and ``repeat``; the op's own keys (its parser in ``_OPS``); ``expect`` (only what
the op records, ``xbn.scenario.observation.RECORDS``). Each op's rules are in one place: its
row of ``_OPS``, the keys it takes and its ``_parse_<op>`` function (``_no_own_keys`` for call,
predict and reset). The errors are the loader's one-line ``ScenarioError``, naming the file,
the step and the key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..common.strict import Fields
from . import additions
from .model import (
    OPS,
    OUTPUT_OPS,
    QUANTITIES,
    RENORM_QUANTITIES,
    REPLICA_QUANTITIES,
    STATE_QUANTITIES,
    Layer,
    Optimizer,
    Step,
    chained,
    quantity_dtype,
)
from .observation import RECORDS

Inputs = dict[str, np.ndarray]
# parses the op's own keys of a step: (checker, raw step, the Step so far, layer, the named
# inputs, ``source``: the named input whose shape the step's input has, None without an input)
OpParser = Callable[[Fields, dict, Step, Layer, Inputs, str | None], None]
_OPTIMIZER_KEYS = {"name", "lr", "beta1", "beta2", "eps", "rho", "momentum"}


def parse_step(c: Fields, i: int, raw: Any, layer: Layer, inputs: Inputs,
               steps: list[Step]) -> Step:
    """Step ``i``, checked in the order the module's docstring gives; ``steps``: the steps
    before it (what "@N" may name)."""
    c = c.within(f"steps[{i}]")  # every location below is inside this step
    c.expect(raw, (dict,))
    if "op" not in raw:
        c.fail(c.missing, "op")
    op = c.string(raw["op"], "op", OPS)
    keys, parse_own_keys = _OPS[op]
    c.keys(raw, {"op", "expect"} | keys | additions.step_keys(op))
    step = Step(index=i, op=op)
    # the named input whose shape the step's input has (through "@N" chains)
    source = _step_input(c, raw, step, layer, inputs, steps) if "input" in keys else None
    additions.parse_step(c, raw, step, layer, inputs,
                         None if source is None else tuple(inputs[source].shape))
    if "training" in raw:
        step.training = c.boolean(raw["training"], "training")
    if "repeat" in raw:
        step.repeat = c.integer(raw["repeat"], "repeat")
    parse_own_keys(c, raw, step, layer, inputs, source)
    if "expect" in raw:
        step.expect = _parse_expect(c, raw["expect"], layer, inputs, step, source)
    return step


# ----------------------------------------------------------------------------------------
# the input, shared by every op that takes one (call, predict, fit, grad)


def _step_input(c: Fields, raw: dict, step: Step, layer: Layer, inputs: Inputs,
                steps: list[Step]) -> str:
    """Sets ``step.input`` (a named input, or "@N" for the ops whose output can be chained)
    and returns the named input whose shape it has."""
    if "input" not in raw:
        c.fail(c.missing, "input")
    if step.op in OUTPUT_OPS and isinstance(raw["input"], str) and raw["input"].startswith("@"):
        step.input, source = _chained_ref(c, raw["input"], "input", steps)
    else:
        step.input = source = _input_ref(c, raw["input"], "input", inputs)
    if inputs[source].ndim != layer.rank:
        c.fail(f"input {source!r} has rank {inputs[source].ndim} (it is a mask); layout "
               f"{layer.layout} needs rank {layer.rank}", "input")
    return source


def _input_ref(c: Fields, value, key: str, inputs: Inputs, like: str | None = None) -> str:
    """A named input (``like``: the input whose shape it must have)."""
    name = c.string(value, key)
    if name not in inputs:
        c.fail(f"unknown input {name!r} (inputs: {', '.join(sorted(inputs)) or 'none'})", key)
    if like is not None and inputs[name].shape != inputs[like].shape:
        c.fail(f"shape {list(inputs[name].shape)} does not match input {like!r} "
               f"{list(inputs[like].shape)}", key)
    return name


def _chained_ref(c: Fields, value, key: str, steps: list[Step]) -> tuple[str, str]:
    """"@N": this framework's own output of step N, which must come earlier and produce one.
    Returns the name and the named input whose shape that output has (step N's, through
    chains)."""
    name = c.string(value, key)
    n = chained(name)
    if n is None:
        c.fail(f"expected \"@N\" with N a step index, got {name!r}", key)
    if n >= len(steps):
        c.fail(f"step {n} is not an earlier step (a step can only take the output of one "
               f"that ran before it)", key)
    if steps[n].op not in OUTPUT_OPS:
        c.fail(f"step {n} ({steps[n].op}) has no output (only {', '.join(OUTPUT_OPS)} do)", key)
    source = steps[n].input
    while (m := chained(source)) is not None:
        source = steps[m].input
    return name, source


# ----------------------------------------------------------------------------------------
# each op's own keys, after the shared ones


def _no_own_keys(c: Fields, raw: dict, step: Step, layer: Layer, inputs: Inputs,
                 source: str | None) -> None:
    """call, predict, reset: every key they take is shared (input, training, repeat) or an
    addition, already parsed."""


def _parse_set(c: Fields, raw: dict, step: Step, layer: Layer, inputs: Inputs,
               source: str | None) -> None:
    """``trainable`` and ``mode``; ``momentum`` and ``epsilon`` are additions' keys (already
    parsed), but count towards the one key a set step must change."""
    if not {"trainable", "mode", "momentum", "epsilon"} & set(raw):
        c.fail("give at least one of trainable, mode, momentum, epsilon")
    if "trainable" in raw:
        step.trainable = c.boolean(raw["trainable"], "trainable")
    if "mode" in raw:
        step.mode = c.string(raw["mode"], "mode", ("train", "eval"))


def _parse_fit(c: Fields, raw: dict, step: Step, layer: Layer, inputs: Inputs,
               source: str | None) -> None:
    """The target (the input's shape), the loss, the optimizer, epochs and mini-batches."""
    if "target" not in raw:
        c.fail(c.missing, "target")
    step.target = _input_ref(c, raw["target"], "target", inputs, like=step.input)
    step.loss = c.string(raw.get("loss", "mse"), "loss", ("mse",))
    if "optimizer" not in raw:
        c.fail(f"{c.missing} (e.g. optimizer = {{ name = \"sgd\", lr = 0.1 }})", "optimizer")
    step.optimizer = _optimizer(c, raw["optimizer"])
    step.epochs = c.integer(raw.get("epochs", 1), "epochs")
    n = inputs[step.input].shape[0]
    if n == 0:  # a training loop over no batch has no loss to report
        c.fail("a zero-size batch has no rows to train on", "input")
    if "batch_size" in raw:
        step.batch_size = c.integer(raw["batch_size"], "batch_size")
        if step.batch_size > n:
            c.fail(f"larger than the input's batch ({n})", "batch_size")


# each optimizer's own hyper-parameters (with their defaults in ``Optimizer``); any other is
# refused on it rather than ignored
OPTIMIZER_KEYS = {"sgd": (), "adam": ("beta1", "beta2", "eps"), "rmsprop": ("rho", "eps")}


def _optimizer(c: Fields, raw) -> Optimizer:
    """A fit step's ``optimizer`` table. A hyper-parameter of another optimizer (Adam's betas on
    SGD, ``rho`` on Adam) and momentum are refused rather than ignored: a typo must never
    change a result silently."""
    o = c.keys(raw, _OPTIMIZER_KEYS, "optimizer", required=("name", "lr"))
    opt = Optimizer(name=c.string(o["name"], "optimizer.name", tuple(OPTIMIZER_KEYS)),
                    lr=c.number(o["lr"], "optimizer.lr", positive=True))
    own = OPTIMIZER_KEYS[opt.name]
    for k in ("beta1", "beta2", "eps", "rho"):
        if k in o:
            if k not in own:
                users = " and ".join(n for n, keys in OPTIMIZER_KEYS.items() if k in keys)
                c.fail(f"only meaningful for {users}", f"optimizer.{k}")
            setattr(opt, k, c.number(o[k], f"optimizer.{k}", positive=True))
    if opt.name == "rmsprop":
        opt.rho = 0.9 if opt.rho is None else opt.rho  # Keras' and optax's default
        if not opt.rho < 1:
            c.fail(f"must be in (0, 1), got {opt.rho}", "optimizer.rho")
    if "momentum" in o:
        c.fail(f"{opt.name} momentum is not supported yet (momentum 0 is passed to every "
               "framework)", "optimizer.momentum")
    return opt


def _parse_grad(c: Fields, raw: dict, step: Step, layer: Layer, inputs: Inputs,
                source: str | None) -> None:
    """``weights``: the upstream gradient, a named input of the input's shape (the backward
    pass is of sum(output * weights))."""
    if "weights" not in raw:
        c.fail(c.missing, "weights")
    step.weights = _input_ref(c, raw["weights"], "weights", inputs, like=source)


def _parse_set_weights(c: Fields, raw: dict, step: Step, layer: Layer, inputs: Inputs,
                       source: str | None) -> None:
    """gamma, beta, moving_mean, moving_variance, and with ``renorm`` renorm_mean,
    renorm_stddev, moving_stddev (at least one): one value per channel (a number is every
    channel's), rounded to the dtype the state lives in."""
    if not any(k in raw for k in LOADABLE):
        c.fail("give at least one of " + ", ".join(
            STATE_QUANTITIES + (RENORM_QUANTITIES if layer.renorm is not None else ())))
    for k in LOADABLE:
        if k not in raw:
            continue
        if k in RENORM_QUANTITIES and layer.renorm is None:
            c.fail("a Batch Renormalization variable: only with layer.renorm", k)
        arr = c.array(raw[k], k)
        if arr.ndim == 0:
            arr = np.full(layer.features, float(arr))
        if arr.shape != (layer.features,):
            c.fail(f"expected {layer.features} values, got shape {list(arr.shape)}", k)
        if k == "moving_variance" and np.any(arr < 0):
            c.fail("a variance cannot be negative", k)
        if k.endswith("stddev") and np.any(arr < 0):
            c.fail("a standard deviation cannot be negative", k)
        step.values[k] = c.rounded(arr, quantity_dtype(layer, k), k).tolist()


# what set_weights loads: the state, and Keras' Batch Renormalization variables with renorm
LOADABLE = STATE_QUANTITIES + RENORM_QUANTITIES


# op -> (the keys its step may have besides op, expect and the additions', the parser of the
# op's own keys); an op whose keys include "input" takes one (``_step_input``)
_OPS: dict[str, tuple[frozenset[str], OpParser]] = {
    "call": (frozenset({"input", "training", "repeat"}), _no_own_keys),
    "predict": (frozenset({"input", "repeat"}), _no_own_keys),
    "set": (frozenset({"trainable", "mode"}), _parse_set),
    "fit": (frozenset({"input", "target", "loss", "optimizer", "epochs", "batch_size",
                       "repeat"}), _parse_fit),
    "grad": (frozenset({"input", "training", "weights"}), _parse_grad),
    "set_weights": (frozenset(LOADABLE), _parse_set_weights),
    "reset": (frozenset(), _no_own_keys),
}


# ----------------------------------------------------------------------------------------
# published values


def _parse_expect(c: Fields, raw, layer: Layer, inputs: Inputs, step: Step,
                  source: str | None) -> dict:
    """A step's ``expect`` table: published values of what the step records (or the state),
    each of the shape the framework's would have, rounded to the dtype it lives in."""
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
                q not in RECORDS[step.op]:
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
