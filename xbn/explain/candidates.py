"""The settings an explanation tries, smallest change first: single switches, native
rounding, the framework's declared profile, pairs, a switch with native rounding; and which
switches can matter in a scenario at all (``relevant_switches``, which prunes the search).
"""

from __future__ import annotations

import itertools

from ..frameworks.devices import run_id
from ..profiles.facts import PROFILES, differences
from ..reference.batchnorm import NUMERIC_SWITCH_VALUES, SWITCH_VALUES, Semantics
from ..reference.edges import relevant_edges
from ..reference.semantics import GATED_SWITCHES
from ..scenario.loader import Scenario
from .reruns import Setting, setting_key

NATIVE: Setting = {"precision": "native"}


def relevant_switches(scenario: Scenario) -> set[str]:
    """Semantic switches that can change anything in this scenario (prunes the search)."""
    layer, steps = scenario.layer, scenario.steps
    training = [s for s in steps if s.op == "fit" or (s.op in ("call", "grad") and s.training is not False)]
    found = set()
    if training:
        found |= {"variance_update", "ema", "training_normalization", "batch_of_one"}
    if any(s.op == "call" and s.training is not False for s in steps):
        found.add("exported_training")  # a training call of an exported layer
    if any(s.op in ("fit", "grad") for s in steps):
        found.add("trainer")  # an inference-only backend: fit and grad n/a
    if layer.track_running_stats:
        found.add("initial_variance")
    if any(s.op == "set" and s.trainable is False for s in steps):
        found.add("frozen_means_inference")
    if any(s.op in ("call", "grad") and s.training is None for s in steps) or \
            any(s.op == "set" and s.mode for s in steps):
        found.add("bare_call")
    if any(s.op == "fit" and s.optimizer.name == "adam" for s in steps):
        found.add("adam_form")
    if any(s.op == "fit" for s in steps) and (
            any(s.op == "set" and s.trainable is False for s in steps)
            or not (layer.center or layer.scale)):
        found.add("frozen_fit")
    if any(s.op == "reset" for s in steps):
        found.add("reset")
    if not layer.defaults and layer.epsilon == 0:
        found.add("zero_epsilon")
    if layer.defaults:
        found |= {"default_momentum", "default_epsilon"}
    elif not layer.cumulative:
        found.add("momentum_convention")
    found |= relevant_edges(scenario) | ({"mask"} if any(s.mask for s in steps) else set())
    if layer.replicas:  # elsewhere the replica switches change nothing: never tried
        found.add("replica_readback")
        if training:
            found |= {"synchronized_statistics", "replica_variance_count"} \
                if layer.synchronized else {"unsynchronized_statistics"}
    return found


def declared_profile(framework: str | None, only: set[str] | None = None) -> list[Setting]:
    """The framework's declared profile: its semantic switches, then with its arithmetic;
    ``semantics.GATED_SWITCHES`` only where ``only`` (``relevant_switches``) names them."""
    framework = run_id(framework) if framework else framework  # torch+compile@cuda: its mode's
    if framework not in PROFILES:
        return []
    declared = {k: v for k, v in differences(framework).items()
                if k not in GATED_SWITCHES or (only is not None and k in only)}
    return [{k: v for k, v in declared.items() if k in SWITCH_VALUES}, declared]


def _flips(values: dict[str, tuple], only: set[str] | None = None) -> list[Setting]:
    base = Semantics()
    return [{name: v} for name, options in values.items() for v in options
            if getattr(base, name) != v and (only is None or name in only)]


def candidates(framework: str | None = None, only: set[str] | None = None) -> list[Setting]:
    """Switch settings to try, smallest change first (the upgrade guard's order: single
    switches, native rounding, the declared profile, pairs, a switch with native rounding)."""
    singles = _flips(SWITCH_VALUES, only)
    native = [NATIVE] + [{**NATIVE, **f} for f in _flips(NUMERIC_SWITCH_VALUES)]
    profile = declared_profile(framework, only)
    numeric = {k: v for k, v in profile[-1].items() if k not in SWITCH_VALUES} if profile else {}
    pairs = [{**a, **b} for a, b in itertools.combinations(singles, 2) if set(a).isdisjoint(b)]
    mixed = [{**s, **n} for s in singles for n in ([NATIVE, numeric] if numeric else [NATIVE])]
    return unique(singles + native + profile + pairs + mixed)


def explanation_order(framework: str | None, only: set[str] | None = None) -> list[Setting]:
    """``candidates`` with the framework's declared profile first: among settings that
    reproduce every row, the framework's own (the part of it that matters) is the cause."""
    return unique(declared_profile(framework, only) + candidates(framework, only))


def unique(changes: list[dict]) -> list[Setting]:
    unique = {setting_key(c): c for c in reversed(changes) if c}  # the first occurrence's position
    return [unique[k] for k in dict.fromkeys(setting_key(c) for c in changes if c)]
