"""Learn torch+compile's float program from its own bits (the source of xbn/profiles/mode_facts.py).

Runs torch.compile(BatchNorm1d(3, momentum=0.1, eps=1e-3)) (inductor, default options) on 30
batches 16x3 of N(U(-50, 50), U(0.1, 5)) with a random weight and bias, in train and eval mode,
and counts how many of the 1440 outputs each candidate float32 formula reproduces bit for bit.
Measured on torch 2.13 CPU: ((x - mean) * (1/sqrt(var + eps))) * w + b with two-pass statistics
reproduces 1440/1440 in train and in eval. Run: python benchmarks/torch_compile_bits.py.
"""

from __future__ import annotations

import numpy as np
import torch

F32, F64 = np.float32, np.float64


def formulas(x, mean, var, g, b) -> dict[str, np.ndarray]:
    out = {}
    for name, inv in (("rsqrt", (1 / np.sqrt((var + F32(1e-3)).astype(F64))).astype(F32)),
                      ("1/sqrt", (F32(1) / np.sqrt(var + F32(1e-3))).astype(F32))):
        d = (x - mean).astype(F32)
        out[f"((x-m)*r)*g+b {name}"] = (((d * inv).astype(F32) * g).astype(F32) + b).astype(F32)
        out[f"fma((x-m)*r,g,b) {name}"] = ((d * inv).astype(F32).astype(F64) * g + b).astype(F32)
        out[f"(x-m)*(r*g)+b {name}"] = ((d * (inv * g).astype(F32)).astype(F32) + b).astype(F32)
    return out


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(5)
    bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-3)
    compiled = torch.compile(bn)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(rng.normal(1, 0.5, 3), dtype=torch.float32))
        bn.bias.copy_(torch.tensor(rng.normal(0, 2, 3), dtype=torch.float32))
    g, b = bn.weight.detach().numpy().copy(), bn.bias.detach().numpy().copy()
    counts: dict[str, int] = {}
    for _ in range(30):
        x = rng.normal(rng.uniform(-50, 50), rng.uniform(0.1, 5), (16, 3)).astype(F32)
        bn.train()
        with torch.no_grad():
            y = compiled(torch.from_numpy(x)).numpy()
        mean = (x.sum(0, dtype=F32) / F32(16)).astype(F32)
        var = (((x - mean) ** 2).sum(0, dtype=F32) / F32(16)).astype(F32)
        for name, want in formulas(x, mean, var, g, b).items():
            counts[f"train {name}"] = counts.get(f"train {name}", 0) + int((want == y).sum())
        bn.eval()
        with torch.no_grad():
            y = compiled(torch.from_numpy(x)).numpy()
        rm, rv = bn.running_mean.numpy(), bn.running_var.numpy()
        for name, want in formulas(x, rm, rv, g, b).items():
            counts[f"eval {name}"] = counts.get(f"eval {name}", 0) + int((want == y).sum())
    print(f"torch {torch.__version__}")
    for name, count in counts.items():
        print(f"{name}: {count}/1440 bit-exact")


if __name__ == "__main__":
    main()
