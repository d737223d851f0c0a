"""Where an exception in a worker came from, and how it is worded in an ``error`` row.

An exception raised by xbn's own code (an adapter, the driver) is a defect of xbn, never the
framework's answer: the origin tells them apart (``xbn.adapters.base`` re-exports these).
"""

from __future__ import annotations

from collections.abc import Iterable

# Keras wraps an exception raised inside a layer's call in one whose first line only says so
# (keras/src/utils/traceback_utils.py:193, tf_keras/src/utils/traceback_utils.py:134); the cause is
# the next non-empty line, which an error row must keep (e.g. tf-keras' "[Op:Reshape]")
KERAS_WRAPPER = "Exception encountered when calling"


class NotApplicable(Exception):
    """The framework cannot express this layer or step; the message says why (a row ``n/a``,
    never an ``error``)."""


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message`` (with the cause for Keras' call wrapper)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first.startswith(KERAS_WRAPPER) and len(lines) > 1:
        first = f"{first} {lines[1]}"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


XBN = "xbn"  # the origin of an exception raised by xbn's own code (an adapter, the driver)
REFERENCE = "reference"  # xbn/reference/, which raises where it models a framework's refusal
REFERENCE_PACKAGE = "xbn.reference"


def _innermost_frame(exc: BaseException):
    tb = exc.__traceback__
    # JAX hides its own frames from tracebacks that cross a transformation (jit, grad) and
    # keeps the whole one on the cause it attaches (jax._src.traceback_util)
    cause = exc.__cause__
    if cause is not None and type(cause).__name__ == "UnfilteredStackTrace" and \
            cause.__traceback__ is not None:
        tb = cause.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return None if last is None else last.tb_frame


def exception_origin(exc: BaseException, own: Iterable[str] = ()) -> str:
    """Where ``exc`` was raised: the top-level package of the innermost traceback frame
    ("torch", "keras", "jax", "flax", ...), "reference" for xbn/reference/ and "xbn" for the
    rest of xbn and for the modules in ``own`` (an adapter's own code, plugins included). An
    exception from xbn's code is a defect of the adapter, never the framework's answer.
    An exception re-raised from another process (a distributed rank) carries the origin
    found there as ``xbn_origin``."""
    remote = getattr(exc, "xbn_origin", None)
    if remote:
        return remote
    frame = _innermost_frame(exc)
    if frame is None:
        return "unknown"
    module = frame.f_globals.get("__name__") or ""
    if module == REFERENCE_PACKAGE or module.startswith(REFERENCE_PACKAGE + "."):
        return REFERENCE
    if module in set(own) or module == XBN or module.startswith(XBN + "."):
        return XBN
    return module.split(".")[0] or "unknown"


def adapter_modules(adapter: object) -> set[str]:
    """The modules that define the adapter's class and its bases (its own code)."""
    return {cls.__module__ for cls in type(adapter).__mro__}
