"""Where a switch value makes a framework refuse (an ``error`` observation), the exception it
raises: the reference models *that* a framework refuses, these tables *how*; and the
conformance suite's rule for errors (``error_problems``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..frameworks import registry
from ..scenario.observation import ERROR
from . import edges as profiles_edges
from . import replicas as profiles_replicas
from .facts import FLAX, HK


@dataclass(frozen=True)
class Raises:
    """The exception a framework raises where one of its switch values refuses a step."""

    type: str  # the exception class's name, as an error observation's message starts
    fragment: str  # a piece of the message (after "Type: ") that it always contains
    source: str
    # other (type, fragment) forms of the same refusal, where the exception depends on where
    # the framework meets it (TensorFlow: an eager op, a function being traced, a traced one)
    also: tuple[tuple[str, str], ...] = ()

    def forms(self) -> tuple[tuple[str, str], ...]:
        return ((self.type, self.fragment), *self.also)


# Switch -> the values of it that make a framework refuse (frozen_fit refuses after the forward
# pass, "error", or before it, "error_before": one exception either way).
REFUSING: dict[str, tuple[str, ...]] = {
    "batch_of_one": ("error",), "bare_call": ("error",), "frozen_fit": ("error", "error_before"),
    "zero_epsilon": ("error",), "synchronized_statistics": ("error",),
    "unsynchronized_statistics": ("error",),
    **{switch: (value,) for switch, value in profiles_edges.REFUSING.items()}}

# Per implementation (the keys of SEMANTICS): switch -> what is raised.
ERRORS: dict[str, dict[str, Raises]] = {
    "reference": {  # xbn/reference/batchnorm.py models each refusal with the exception torch/haiku use
        "batch_of_one": Raises("ValueError", "Expected more than 1 value per channel",
                               "xbn/reference/batchnorm.py ReferenceBatchNorm._batch_stats"),
        "bare_call": Raises("TypeError", "a call without the training flag is refused",
                            "xbn/reference/batchnorm.py ReferenceBatchNorm.effective_training"),
        "frozen_fit": Raises("RuntimeError", "does not require grad",
                             "xbn/reference/batchnorm.py ReferenceBatchNorm.fit"),
        "zero_epsilon": Raises("ValueError", "eps must be positive during training",
                               "xbn/reference/batchnorm.py ReferenceBatchNorm._batch_stats"),
    },
    "torch": {
        "batch_of_one": Raises("ValueError", "Expected more than 1 value per channel when training",
                               "torch/nn/functional.py:2840-2856 _verify_batch_size"),
        "zero_epsilon": Raises("ValueError", "batch_norm eps must be positive during training",
                               "torch/nn/functional.py:2891-2894 batch_norm"),
        "frozen_fit": Raises("RuntimeError", "does not require grad and does not have a grad_fn",
                             "torch/csrc/autograd/autograd.cpp run_backward (TORCH_CHECK), "
                             "reached from loss.backward() through torch/autograd/graph.py:966-979 "
                             "_engine_run_backward"),
    },
    "flax_linen": {
        "bare_call": Raises("ValueError", 'Parameter "use_running_average" must be passed',
                            "flax/linen/module.py:2952-2955 merge_param, called by "
                            f"{FLAX}:351 BatchNorm.__call__"),
    },
    "haiku": {
        "bare_call": Raises("TypeError", "missing 1 required positional argument: 'is_training'",
                            f"{HK}:127-130 __call__(self, inputs, is_training, ...): "
                            "is_training has no default"),
    },
}
# MLX: mlx/nn/layers/normalization.py raises these itself; its zero_epsilon refusal is
# the constructor's, so every step of such a layer is "layer not built: ValueError: ..."
ERRORS["mlx"] = {
    "batch_of_one": Raises("ValueError", "BatchNorm training requires more than one value per "
                           "channel", "mlx/nn/layers/normalization.py:393-400 __call__"),
    "zero_epsilon": Raises("ValueError", "'eps' must be positive",
                           "mlx/nn/layers/normalization.py:329-330 BatchNorm.__init__"),
    "frozen_fit": Raises("ValueError", "[grad] Must specify at least one argument",
                         "mlx/nn/utils.py:35 value_and_grad over an empty trainable_parameters()"
                         " -> mx.value_and_grad"),
}
for _table, _raises in (*profiles_replicas.ERRORS.items(), *profiles_edges.ERRORS.items()):
    ERRORS.setdefault(_table, {}).update({k: Raises(*v) for k, v in _raises.items()})


def declared_error(framework_id: str, switch: str) -> Raises | None:
    """What ``framework_id`` raises where its ``switch`` value refuses (None: undeclared)."""
    info = registry.FRAMEWORKS.get(framework_id)
    table = info.profile.semantics if info is not None and info.profile else None
    return ERRORS.get(table or "", {}).get(switch)


def _exception(message: str | None) -> tuple[str, str]:
    """('ValueError', 'text') from an error observation's message ('ValueError: text'), past
    the driver's prefixes ('layer not built: ', 'reading state: ')."""
    text = message or ""
    for prefix in ("layer not built: ", "reading state: "):
        text = text.removeprefix(prefix)
    kind, _, rest = text.partition(":")
    return kind.strip(), rest.strip()


def declared_refusal(framework_id: str, observation: dict) -> str | None:
    """The switch whose declared refusal an error ``observation`` of ``framework_id`` (any mode
    or device of a registry id) is: raised by the framework itself (not xbn's code), of the
    type and with the message fragment its profile declares (keras-torch's replicas: Keras 3
    has no torch distribution backend). None when it is no declared refusal."""
    from ..frameworks.devices import base_id

    if observation.get("status") != ERROR or observation.get("origin") == "xbn":
        return None
    kind, text = _exception(observation.get("message"))
    for switch in REFUSING:
        declared = declared_error(base_id(framework_id), switch)
        if declared and any(kind == t and f in text for t, f in declared.forms()):
            return switch
    return None


def refusing_switch(reference_message: str | None) -> str | None:
    """The switch whose refusal the reference's error message is (None: none of them)."""
    kind, text = _exception(reference_message)
    for switch, raises in ERRORS["reference"].items():
        if kind == raises.type and raises.fragment in text:
            return switch
    return None


def error_mismatch(framework_id: str, got: dict, expected: dict) -> str | None:
    """Why ``got``, an error observation of ``framework_id``, is not the refusal that its
    profile declares where the reference (run with that profile) raised ``expected``; None
    when it is: raised by the framework (not by xbn's code), of the declared exception type,
    with the declared fragment in its message."""
    if got.get("origin") == "xbn":
        return f"raised by xbn's own code (origin xbn), a defect: {got['message']}"
    switch = refusing_switch(expected.get("message"))
    if switch is None:
        return f"the reference's error is no declared refusal: {expected.get('message')}"
    declared = declared_error(framework_id, switch)
    setting = f"{switch}={REFUSING[switch][0]}"
    if declared is None:
        return f"{framework_id} declares no exception for {setting} (xbn/profiles/refusals.py ERRORS)"
    kind, text = _exception(got.get("message"))
    forms = declared.forms()
    if all(kind != t for t, _ in forms):
        types = " or ".join(dict.fromkeys(t for t, _ in forms))
        return (f"{kind or 'an exception'} where {framework_id}'s profile declares "
                f"{types} for {setting} ({declared.source}): {got.get('message')}")
    if all(kind != t or f not in text for t, f in forms):
        fragments = " or ".join(repr(f) for t, f in forms if t == kind)
        return (f"{kind} without {fragments}, which {framework_id}'s profile "
                f"declares for {setting} ({declared.source}): {got.get('message')}")
    return None


def error_problems(framework_id: str, observed: dict, expected: dict) -> list[str]:
    """The conformance suite's rule for errors, over ``observed`` (key -> observation of
    ``framework_id``) and ``expected`` (the same keys -> the reference run with its profile):
    every error raised by xbn's own code is a defect, and where both raised, the framework's
    exception must be the one its profile declares (``error_mismatch``)."""
    problems = []
    for key, got in observed.items():
        if got.get("status") != ERROR:
            continue
        want = expected.get(key)
        if got.get("origin") == "xbn":
            problems.append(f"{key}: raised by xbn's own code (origin xbn), a defect of the "
                            f"adapter, not {framework_id}'s answer: {got['message']}")
        elif want is not None and want.get("status") == ERROR:
            why = error_mismatch(framework_id, got, want)
            if why:
                problems.append(f"{key}: {why}")
    return problems


