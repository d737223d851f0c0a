"""``torch+compile``: the module as ``torch.compile(module)`` (inductor, default options) runs it.

Users compile the model once and then call it for inference, in their training loop and
under autograd; so does xbn: call, predict, fit and grad all go through the one compiled
wrapper (``OptimizedModule`` shares the module's parameters and buffers, and ``train()`` /
``eval()`` on either reach both). A ``set`` of momentum or epsilon assigns the module's
attribute as in eager code; dynamo guards on it and recompiles (measured on torch 2.13: the
next call uses the new value), which the note records as a recompile.

Compile time is part of what a mode costs, so it is measured, never hidden: the first call of
each program dynamo builds (per train/eval, grad on/off, shape, dtype and hyperparameters)
against the later calls of the same program, one note per scenario
(``Adapter.notes``). ``torch._dynamo.reset()`` at each build: a fresh module in a long-lived
worker would otherwise accumulate guards on the shared ``BatchNorm.forward`` code object until
dynamo's recompile limit silently falls back to eager; a reset is what a fresh user process
has (inductor's on-disk caches stay, as they do for users).
"""

from __future__ import annotations

import torch

from ..compile_time import CompileTimer


class Forward:
    """The callable every op uses: the module itself (eager, plain) or its compiled wrapper."""

    def __init__(self, module: torch.nn.Module, mode: str | None, framework: str,
                 notes: list[str]):
        self.module = module
        self.compiled = mode == "compile"
        if self.compiled:
            torch._dynamo.reset()
            self.run = torch.compile(module)
            self.timer = CompileTimer(f"{framework}+compile", "torch.compile (inductor)", notes)
        else:
            self.run = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compiled:
            return self.run(x)
        m = self.module
        key = (m.training, torch.is_grad_enabled(), tuple(x.shape), x.dtype, m.momentum, m.eps,
               any(p.requires_grad for p in m.parameters()))
        return self.timer(key, self.run, x)
