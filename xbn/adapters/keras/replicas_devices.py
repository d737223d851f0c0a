"""TensorFlow's logical CPU devices for the replicated Keras engines, configured when the
adapter is made: TensorFlow fixes its devices when its runtime starts (the first op), and
``tf.config.set_logical_device_configuration`` refuses afterwards."""

from __future__ import annotations

import os

from ...scenario.model import REPLICAS_ENV


def requested_replicas() -> int:
    """How many replicas the worker's request needs at most (0: none)."""
    try:
        return int(os.environ.get(REPLICAS_ENV, "0"))
    except ValueError:
        return 0


def configure_logical_devices() -> str | None:
    """Split TensorFlow's CPU into ``XBN_REPLICAS`` logical devices, before its runtime
    starts (``tf.config.set_logical_device_configuration`` refuses afterwards). Called by
    ``make_adapter`` of the TensorFlow Keras adapters; nothing happens without the variable.
    Returns a note when the runtime had already started (the engine then finds too few
    devices and says so), else None."""
    count = requested_replicas()
    if count < 2:
        return None
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as exc:  # the runtime was initialized before make_adapter
        return f"could not configure {count} logical CPU devices: {exc}"
    return None
