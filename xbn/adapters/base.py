"""The adapter interface and the one driver loop that walks a scenario through any adapter.

An adapter translates the scenario's neutral vocabulary into its framework's idiomatic calls
and reports what happened; it never patches behaviour. Everything else (repeats, recording
observations, turning exceptions into ``error`` rows, optimizer lifetimes) lives here once.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, replace

import numpy as np

from ..common.dtypes import round_to
from ..frameworks.registry import Capabilities, capabilities, family_module, family_of
from ..scenario.loader import (
    COUNTER,
    RENORM_QUANTITIES,
    REPLICA_QUANTITIES,
    STATE_QUANTITIES,
    ElementMask,
    Layer,
    Scenario,
    Step,
    chained,
    channel_axis,
)
from ..scenario.observation import (  # primary_quantities: xbn.execution.spawn imports it here
    ERROR,
    NOT_APPLICABLE,
    OK,
    STEP,
    Observation,
    Status,
    primary_quantities,
)
from .errors import (  # noqa: F401 - re-exported: where exceptions come from
    REFERENCE,
    XBN,
    NotApplicable,
    adapter_modules,
    describe_exception,
    exception_origin,
)
from .masked import MaskedOps

# What a layer asks of its framework, per field of xbn.frameworks.registry.Capabilities.
NEEDS = {
    "cumulative_momentum": lambda layer: layer.cumulative,
    "no_running_stats": lambda layer: not layer.track_running_stats,
    "scale_without_center": lambda layer: layer.scale and not layer.center,
    "center_without_scale": lambda layer: layer.center and not layer.scale,
    "split_affine": lambda layer: layer.center != layer.scale,
}


def require(framework_id: str, layer: Layer, capability: str, why: str,
            caps: Capabilities | None = None) -> None:
    """NotApplicable(why) when ``layer`` needs a capability that ``framework_id`` lacks:
    ``caps`` (what the adapter probed in the installed framework), else the registry's
    declaration. The adapter only words the reason."""
    caps = caps if caps is not None else capabilities(framework_id)
    if NEEDS[capability](layer) and not getattr(caps, capability):
        raise NotApplicable(why)


# An adapter returns either a numpy array (its dtype is reported) or (float64 array, dtype name),
# for dtypes numpy cannot hold (bfloat16 from torch, for instance).
Array = np.ndarray


class Adapter(MaskedOps, ABC):
    """One framework's BatchNorm behind xbn's vocabulary (the masked operations:
    ``xbn.adapters.masked``).

    Arrays come in and go out in the scenario's layout, as float64 arrays holding values
    exactly representable in the scenario's dtype; adapters cast to their own dtype and use
    ``to_channels_first``/``from_channels_first`` when their layer needs another layout.
    """

    framework_id: str = ""
    mode: str | None = None  # the id's execution mode (xbn.frameworks.modes); None: plain
    notes: list[str]
    # the contract's "Additions" layer keys (scenario_model.LAYER_FEATURES) this adapter
    # expresses; a layer using any other is n/a before build, never silently ignored
    layer_features: frozenset[str] = frozenset()

    def __init__(self, framework_id: str):
        self.framework_id = framework_id
        self.notes = []

    @abstractmethod
    def build(self, layer: Layer) -> None:
        """Create a fresh layer (with fresh weights and statistics)."""

    @abstractmethod
    def call(self, x: Array, training: bool | None):
        """Forward pass; ``training=None`` is a bare call (whatever the framework does)."""

    @abstractmethod
    def predict(self, x: Array):
        """The framework's inference entry point."""

    def capabilities(self) -> Capabilities:
        """What the installed framework's BatchNorm can express. Adapters that can ask the
        framework (a signature, a probe) override this; the default is the registry's
        declaration, resolved against the installed versions."""
        return capabilities(self.framework_id)

    def require(self, layer: Layer, capability: str, why: str) -> None:
        """See :func:`require`: raise NotApplicable(why) if the framework lacks ``capability``."""
        require(self.framework_id, layer, capability, why, self.capabilities())

    def set_trainable(self, trainable: bool) -> None:
        raise NotApplicable(f"{self.framework_id} has no trainable flag")

    def set_mode(self, mode: str) -> None:
        raise NotApplicable(f"{self.framework_id} has no module-wide train/eval mode")

    def reset(self) -> None:
        """``op = "reset"``: the framework's own reset of the running statistics (torch's
        ``reset_running_stats()``). Frameworks without one say so; xbn never emulates it by
        assigning values, which ``set_weights`` already expresses."""
        raise NotApplicable(f"{self.framework_id}'s BatchNorm has no reset of its running "
                            "statistics (users re-initialize the layer or assign the values: "
                            "set_weights)")

    def set_hyper(self, momentum: float | str | None, epsilon: float | None) -> None:
        """``set`` with ``momentum``/``epsilon``: change the built layer the way the
        framework's users do (an attribute, Flax ``clone`` with the same variables); None
        leaves that one alone. ``momentum`` is in the Keras convention, as in ``Layer``."""
        raise NotApplicable(f"{self.framework_id}: changing momentum/epsilon after "
                            "construction is not expressed")

    def replicated(self) -> Adapter:
        """The adapter that runs this framework's scenarios with ``replicas`` on its own
        distributed engine: ``make_replicated(self)`` of ``xbn.adapters.<family>.replicas``,
        made once per worker (process groups and devices are set up once). Its ``state()``
        adds ``replica_moving_mean``/``replica_moving_variance`` ([R, C])."""
        if getattr(self, "_replicated", None) is None:
            family = family_of(self.framework_id)
            try:
                module = family_module(family.id, "replicas") if family else None
            except ModuleNotFoundError:
                module = None
            if module is None:
                raise NotApplicable(f"{self.framework_id}: no distributed engine is wired up "
                                    "for replicas")
            self._replicated = module.make_replicated(self)
        return self._replicated

    def close(self) -> None:
        """Release what the adapter holds outside its process (a replicated engine's
        processes and ports). The worker calls it once at the end."""
        engine = getattr(self, "_replicated", None)
        if engine is not None and engine is not self:
            engine.close()

    @abstractmethod
    def fit(self, x: Array, target: Array, step: Step, fresh_optimizer: bool) -> float:
        """Train with the step's loss and optimizer; return the last epoch's mean loss."""

    @abstractmethod
    def grad(self, x: Array, training: bool | None, weights: Array) -> dict:
        """Backward of sum(output * weights): {"output", "grad_input", "grad_gamma"?, "grad_beta"?}."""

    @abstractmethod
    def set_weights(self, values: dict[str, Array]) -> None:
        """Load gamma/beta/moving_mean/moving_variance (those given)."""

    @abstractmethod
    def state(self) -> dict:
        """Current gamma, beta, moving_mean, moving_variance (only those that exist)."""

    def batches_tracked(self) -> Array | None:
        """Optional: the framework's own count of the training batches that updated the
        running statistics (torch's ``num_batches_tracked``, which drives its cumulative
        average and which a reset zeroes), observed as ``num_batches_tracked`` in scenarios
        with a reset step. None: the framework keeps no such count."""
        return None

    def versions(self) -> dict[str, str]:
        """Versions of the packages this adapter really imported."""
        return {}

    def magnitudes(self) -> dict[str, float | None]:
        """Optional: for values the last step produced and the state, the magnitude of the
        terms that produced each (``xbn.reference.numerics``), recorded as the observation's ``scale``:
        the tolerance's floor where terms cancel. Only the reference knows its terms."""
        return {}


# ---------------------------------------------------------------------------------------
# layout helpers shared by adapters


def to_channels_first(x: Array, layout: str) -> Array:
    axis = channel_axis(layout)
    return x if axis == 1 else np.moveaxis(x, axis, 1)


def from_channels_first(x: Array, layout: str) -> Array:
    axis = channel_axis(layout)
    return x if axis == 1 else np.moveaxis(x, 1, axis)


def to_channels_last(x: Array, layout: str) -> Array:
    axis = channel_axis(layout)
    return x if axis == x.ndim - 1 else np.moveaxis(x, axis, -1)


def from_channels_last(x: Array, layout: str) -> Array:
    axis = channel_axis(layout)
    return x if axis == x.ndim - 1 else np.moveaxis(x, -1, axis)


def batches(n: int, batch_size: int | None) -> list[slice]:
    """Unshuffled mini-batches in order; the last one may be smaller (as in Keras and torch)."""
    size = batch_size or n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ---------------------------------------------------------------------------------------
# the driver loop

def _as_record(value) -> tuple[list | float | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, tuple):
        arr, dtype = value
    else:
        arr = np.asarray(value)
        dtype = arr.dtype.name
    arr = np.asarray(arr, dtype=np.float64)
    return arr.tolist(), dtype


def run_scenario(adapter: Adapter, scenario: Scenario) -> Iterator[Observation]:
    """Walk the scenario's steps; yield one observation per quantity after each step: what
    the step records (``primary_quantities``), then the state."""
    layer = scenario.layer
    own = adapter_modules(adapter)

    def record(step: Step, quantity: str, status: Status, value=None, message=None, origin=None,
               scale=None, rep=None) -> Observation:
        values, dtype = _as_record(value) if status == OK else (None, None)
        obs: Observation = {"scenario": scenario.name, "step": step.index, "op": step.op,
                            "framework": adapter.framework_id, "quantity": quantity,
                            "status": status, "value": values, "dtype": dtype, "message": message}
        if rep is not None:  # a traced step's repetition; untraced observations have no "rep"
            obs["rep"] = rep
        if scale is not None:
            obs["scale"] = scale
        if status == ERROR:
            obs["origin"] = origin or "unknown"
        return obs

    try:
        if layer.replicas:
            adapter = adapter.replicated()
            own = own | adapter_modules(adapter)
        for feature in layer.features_used():
            if feature not in adapter.layer_features:
                raise NotApplicable(f"{adapter.framework_id}'s BatchNorm has no "
                                    f"{feature.replace('_', ' ')}")
        adapter.build(layer)
    except Exception as exc:  # every step reports why the layer could not be built
        status: Status = NOT_APPLICABLE if isinstance(exc, NotApplicable) else ERROR
        message = str(exc) if status == NOT_APPLICABLE else describe_exception(exc)
        origin = exception_origin(exc, own) if status == ERROR else None
        for step, rep in ((s, r) for s in scenario.steps for r in _reps(s)):
            for q in primary_quantities(step.op):
                yield record(step, q, status, message=f"layer not built: {message}",
                             origin=origin, rep=rep)
        return

    last_optimizer: dict | None = None
    # every step's output, for later steps whose input is "@N" (this framework's own output)
    outputs: dict[int, np.ndarray] = {}
    state_quantities = STATE_QUANTITIES + ((COUNTER,) if scenario.observes_counter else ()) + \
        (REPLICA_QUANTITIES if scenario.replicated else ()) + \
        (RENORM_QUANTITIES if scenario.observes_renorm else ())
    for step, rep in ((s, r) for s in scenario.steps for r in _reps(s)):
        produced: dict = {}
        status, message, origin = OK, None, None
        try:  # a traced step runs one repetition at a time, observed after each
            run = step if rep is None else replace(step, repeat=1)
            produced = _run_step(adapter, scenario, run, last_optimizer, outputs)
            if step.op == "fit":
                last_optimizer = asdict(step.optimizer)
            if step.op == "set" and step.trainable is not None:
                last_optimizer = None  # Keras must recompile after trainable changes: fresh state
        except NotApplicable as exc:
            status, message = NOT_APPLICABLE, str(exc)
        except Exception as exc:
            status, message = ERROR, describe_exception(exc)
            origin = exception_origin(exc, own)
            if not isinstance(exc, (ValueError, RuntimeError, TypeError)):
                message += " | " + traceback.format_exc(limit=2).strip().splitlines()[-1]
        output = produced.get("output") if status == OK else None
        if output is not None:  # a framework's output is in the dtype already; the reference's
            # float64 output is rounded as the frameworks' are, and as every input is
            outputs[step.index] = round_to(np.asarray(
                output[0] if isinstance(output, tuple) else output, np.float64), layer.dtype)
        scales = adapter.magnitudes()
        for q in primary_quantities(step.op):
            if status != OK:
                yield record(step, q, status, message=message, origin=origin, rep=rep)
            elif q == STEP:
                yield record(step, q, OK, rep=rep)
            elif q in produced and produced[q] is not None:
                yield record(step, q, OK, produced[q], scale=scales.get(q), rep=rep)
            elif q in ("grad_gamma", "grad_beta"):
                if not _exists(layer, q.removeprefix("grad_")):
                    continue  # a parameter the layer does not have has no gradient either
                yield record(step, q, NOT_APPLICABLE, rep=rep, message=produced.get(
                    f"{q}_reason", "no such parameter"))
        try:
            state = adapter.state()
            if scenario.observes_counter:
                state[COUNTER] = adapter.batches_tracked()
        except Exception as exc:
            for q in state_quantities:
                yield record(step, q, ERROR, message=f"reading state: {describe_exception(exc)}",
                             origin=exception_origin(exc, own), rep=rep)
            continue
        for q in state_quantities:
            if state.get(q) is not None:
                yield record(step, q, OK, state[q], scale=scales.get(q), rep=rep)
            elif not _exists(layer, q):
                continue
            else:
                yield record(step, q, NOT_APPLICABLE, rep=rep,
                             message=f"{adapter.framework_id} exposes no {q}")


def _reps(step: Step) -> range | tuple[None]:
    """Each repetition of a traced step, run and observed alone (a failed one too), else None."""
    return range(step.repeat) if step.trace else (None,)


def _exists(layer: Layer, quantity: str) -> bool:
    if quantity in RENORM_QUANTITIES:
        return layer.renorm is not None and layer.track_running_stats
    if quantity == "gamma":
        return layer.scale
    if quantity == "beta":
        return layer.center
    return layer.track_running_stats  # the running statistics, their replicas' copies, the count


def _input(scenario: Scenario, step: Step, outputs: dict) -> np.ndarray:
    """The step's input: a named array, or for "@N" this framework's own output of step N
    (float64 holding values of the layer's dtype, as every input is)."""
    n = chained(step.input)
    if n is None:
        return scenario.inputs[step.input]
    if outputs.get(n) is None:
        raise NotApplicable(f"input {step.input}: step {n} produced no output in this "
                            "framework (it was error or n/a), so there is nothing to chain")
    return outputs[n]


def _run_step(adapter: Adapter, scenario: Scenario, step: Step, last_optimizer,
              outputs: dict | None = None) -> dict:
    inputs = scenario.inputs
    op = step.op
    result: dict = {}
    if op == "reset":
        adapter.reset()
        return result
    if op == "set":
        if step.trainable is not None:
            adapter.set_trainable(step.trainable)
        if step.mode is not None:
            adapter.set_mode(step.mode)
        if step.momentum is not None or step.epsilon is not None:
            adapter.set_hyper(step.momentum, step.epsilon)
        return result
    if op == "set_weights":
        adapter.set_weights({k: np.asarray(v, dtype=np.float64) for k, v in step.values.items()})
        return result
    x = _input(scenario, step, outputs or {})
    mask = None if step.mask is None else inputs[step.mask]
    if mask is not None and step.mask_channels:  # over the channel axis too (ElementMask)
        mask = np.asarray(mask).view(ElementMask)
    for _ in range(step.repeat):
        if op == "call":
            result = {"output": adapter.call(x, step.training) if mask is None
                      else adapter.call_masked(x, step.training, mask)}
        elif op == "predict":
            result = {"output": adapter.predict(x) if mask is None
                      else adapter.predict_masked(x, mask)}
        elif op == "fit":
            fresh = last_optimizer != asdict(step.optimizer)
            result = {"loss": adapter.fit(x, inputs[step.target], step, fresh) if mask is None
                      else adapter.fit_masked(x, inputs[step.target], step, fresh, mask)}
            last_optimizer = asdict(step.optimizer)
        elif op == "grad":
            result = adapter.grad(x, step.training, inputs[step.weights]) if mask is None \
                else adapter.grad_masked(x, step.training, inputs[step.weights], mask)
        else:  # pragma: no cover - the loader rejects unknown ops
            raise AssertionError(op)
    return result
