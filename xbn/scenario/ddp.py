"""``[layer.native.torch]`` keys that configure DistributedDataParallel, not the BatchNorm.

With ``replicas``, the torch engine (``xbn.adapters.torch.replicas``) wraps the layer in
``DistributedDataParallel``; these keys are passed to DDP's constructor as written (torch 2.13
deprecates ``broadcast_buffers`` for ``forward_sync_buffers``: both are accepted, and DDP
itself warns or refuses, torch/nn/parallel/distributed.py: DistributedDataParallel.__init__).
They mean nothing to a single-process module, so the loader refuses them without replicas
(the single-process adapter would otherwise pass them to ``nn.BatchNorm*d``). A ground-floor
module: it imports nothing from xbn but ``xbn.scenario.model``.
"""

from __future__ import annotations

from .model import Layer

DDP_OPTIONS = ("broadcast_buffers", "forward_sync_buffers")


def ddp_options(layer: Layer) -> dict:
    """The DDP keywords the layer's ``[layer.native.torch]`` gives (only those given)."""
    native = layer.native.get("torch", {})
    return {k: native[k] for k in DDP_OPTIONS if k in native}


def without_ddp_options(native: dict) -> dict:
    """``layer.native`` without the DDP keywords: what the BatchNorm module is built from."""
    out = {fid: dict(kwargs) for fid, kwargs in native.items()}
    for key in DDP_OPTIONS:
        out.get("torch", {}).pop(key, None)
    return out


def check_ddp_options(c, layer: Layer) -> None:
    """Loader check (call after the additions' layer keys are parsed): booleans, and only
    with ``replicas``."""
    for key in DDP_OPTIONS:
        if key not in layer.native.get("torch", {}):
            continue
        where = f"layer.native.torch.{key}"
        c.boolean(layer.native["torch"][key], where)
        if not layer.replicas:
            c.fail("a DistributedDataParallel option: only meaningful with replicas", where)
