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


def _keyerror_torch():
    """torch whose batch-of-one refusal is replaced by an adapter bug: a KeyError raised in
    this module (a dict lookup gone wrong) before torch sees the batch, where torch itself
    raises ValueError. It must not pass for torch's answer."""
    from xbn.adapters.torch.adapter import TorchAdapter

    class KeyErrorTorch(TorchAdapter):
        def call(self, x, training):
            if training is not False and x.shape[0] == 1:
                return {}["batch"]
            return super().call(x, training)

    return KeyErrorTorch


def make_adapter(framework_id: str):
    if framework_id == "torch-keyerror":
        return _keyerror_torch()(framework_id)
    return {"crash": Crashing, "hang": Hanging, "raise": Raising}[framework_id](framework_id)
