"""Adapters that misbehave on purpose, to prove a bad worker costs only its own rows."""

from __future__ import annotations

import os
import time

from xbn.adapters.numpy.adapter import NumpyAdapter


class Crashing(NumpyAdapter):
    def call(self, x, training):
        os._exit(3)  # a hard crash, as a segfaulting native library would do


class Hanging(NumpyAdapter):
    def call(self, x, training):
        time.sleep(3600)


class Raising(NumpyAdapter):
    def call(self, x, training):
        raise RuntimeError("boom from the framework")


def make_adapter(framework_id: str):
    return {"crash": Crashing, "hang": Hanging, "raise": Raising}[framework_id](framework_id)
