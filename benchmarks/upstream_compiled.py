"""Standalone checks of the upstream reports on compiled BatchNorm (issue 23), at the installed
versions: framework + numpy only, no xbn, so that each can be pasted into a tracker as is.

    python benchmarks/upstream_compiled.py                 # every check
    python benchmarks/upstream_compiled.py torch-194504    # one check

Each check prints one line: the report, "reproduces" or "does not reproduce", and the numbers
behind that. The reproducers follow each report's own (looked up in the trackers); where a
report's text was cut off in what we could read, the completion is marked in its docstring.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import numpy as np  # noqa: E402


def _line(name: str, reproduces: bool | None, detail: str) -> str:
    verdict = {True: "reproduces", False: "does not reproduce", None: "not checked"}[reproduces]
    return f"{name}: {verdict}: {detail}"


def torch_181696() -> str:
    """pytorch/pytorch#181696: eval-mode BatchNorm1d -> ELU -> GroupNorm -> log(clamp) differs
    from eager under inductor by max_diff >= 1 (1.288699 in the PT2 repro agent's runs, CUDA).
    The report's last line was cut off in what we read: ``torch.log(t.clamp(min=1e-6))`` here."""
    import torch
    import torch.nn as nn

    bn = nn.BatchNorm1d(10).eval()
    elu = nn.ELU()
    gn = nn.GroupNorm(10, 10).eval()

    def model():
        x = torch.ones([6, 10, 12])
        t = gn(elu(bn(x)))
        return torch.log(t.clamp(min=1e-6))

    with torch.no_grad():
        eager = model()
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="inductor")()
    diff = (eager - compiled).abs().max().item()
    # and the BatchNorm alone, the part xbn models: eval-mode folding of the running statistics
    torch._dynamo.reset()
    x = torch.ones([6, 10, 12])
    with torch.no_grad():
        bn_diff = (bn(x) - torch.compile(bn)(x)).abs().max().item()
    return _line("pytorch/pytorch#181696", diff >= 1.0,
                 f"max|eager - compiled| = {diff:.6g} for the whole chain (report: >= 1); "
                 f"BatchNorm1d alone in eval: {bn_diff:.3g}")


def torch_141317() -> str:
    """pytorch/pytorch#141317: Conv2d + BatchNorm2d in training mode + global average pool,
    compiled vs eager: torch.allclose False (outputs ~1e-9, means of normalized values)."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, kernel_size=3, padding=2, dilation=2, groups=1)
            self.bn = nn.BatchNorm2d(16)
            self.pool = nn.AdaptiveAvgPool2d((1, 1))

        def forward(self, x):
            return self.pool(self.bn(self.conv(x)))

    m = Model()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = m(x)
        torch._dynamo.reset()
        c_out = torch.compile(m)(x)
        # the BatchNorm output itself, before the pool averages it to ~0
        bn_in = m.conv(x)
        torch._dynamo.reset()
        bn_eager, bn_comp = m.bn(bn_in), torch.compile(m.bn)(bn_in)
    close = torch.allclose(out, c_out)
    diff = (out - c_out).abs().max().item()
    bn_diff = (bn_eager - bn_comp).abs().max().item()
    return _line("pytorch/pytorch#141317", not close,
                 f"allclose={close}, max|diff| of pooled output {diff:.3g} (values "
                 f"{out.abs().max().item():.3g}: means of a normalized map, ~0); BatchNorm2d "
                 f"output itself: max|diff| {bn_diff:.3g} "
                 f"({bn_diff / np.finfo(np.float32).eps:.1f} eps at scale 1)")


def torch_100970() -> str:
    """pytorch/pytorch#100970: not found in the stored issue corpus (searched for inductor
    BatchNorm accuracy reports of 2023); its symptom is not known here, so nothing is run."""
    return _line("pytorch/pytorch#100970", None,
                 "report text not found by the issue search; no reproducer run")


def torch_194504() -> str:
    """pytorch/pytorch#194504: BatchNorm1d(momentum=None) in training fails under
    torch.compile(fullgraph=True): the cumulative average reads num_batches_tracked as a
    Python scalar (GuardOnDataDependentSymNode in the report)."""
    import torch
    import torch.nn as nn

    torch._dynamo.reset()
    bn = nn.BatchNorm1d(4, momentum=None)
    x = torch.randn(8, 4)
    try:
        torch.compile(bn, fullgraph=True)(x)
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        message = str(exc).strip().splitlines()[0][:120]
        full = (f"fullgraph=True raises {type(exc).__name__}: {message}")
        failed = True
    else:
        full, failed = "fullgraph=True runs", False
    # without fullgraph: does the graph break keep the cumulative average right?
    torch._dynamo.reset()
    eager, comp = nn.BatchNorm1d(4, momentum=None), nn.BatchNorm1d(4, momentum=None)
    compiled = torch.compile(comp)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = torch.randn(8, 4, generator=gen) * 2 + 3
        eager(batch)
        compiled(batch)
    diff = (eager.running_mean - comp.running_mean).abs().max().item()
    return _line("pytorch/pytorch#194504", failed,
                 f"{full}; default torch.compile: running_mean after 3 batches within "
                 f"{diff:.3g} of eager, num_batches_tracked {int(comp.num_batches_tracked)}")


def tf_118701() -> str:
    """tensorflow/tensorflow#118701: FusedBatchNormV3 (is_training=True) under
    jit_compile=True gives NaN at a large offset (one-pass variance in XLA's
    BatchNormExpander); NCHW with 3 channels from offset 1e4 in the report (GPU nightly)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    results = []
    for offset in (1e4, 1e5, 1e6, 1e7):
        for fmt, shape, c in (("NCHW", (2, 3, 8, 8), 3), ("NHWC", (2, 8, 8, 8), 8)):
            x = (offset + rng.standard_normal(shape)).astype(np.float32)
            scale, offset_t = np.ones(c, np.float32), np.zeros(c, np.float32)

            def bn(x, fmt=fmt, scale=scale, offset_t=offset_t):
                return tf.raw_ops.FusedBatchNormV3(
                    x=x, scale=scale, offset=offset_t, mean=tf.zeros([0]),
                    variance=tf.zeros([0]), epsilon=1e-3, data_format=fmt,
                    is_training=True)

            try:
                eager = bn(tf.constant(x))
                xla = tf.function(bn, jit_compile=True)(tf.constant(x))
            except Exception as exc:  # noqa: BLE001 - NCHW may be refused on CPU eagerly
                results.append((offset, fmt, f"{type(exc).__name__}", None, None))
                continue
            results.append((offset, fmt, None, int(np.isnan(xla[0].numpy()).sum()),
                            float(np.min(xla[2].numpy()))))
            _ = eager
    nan = [r for r in results if r[3]]
    detail = "; ".join(f"{fmt}@{off:.0e}: " + (err or f"NaN {n}, batch var min {v:.3g}")
                       for off, fmt, err, n, v in results)
    return _line("tensorflow/tensorflow#118701", bool(nan), detail)


CHECKS = {"torch-181696": torch_181696, "torch-141317": torch_141317,
          "torch-100970": torch_100970, "torch-194504": torch_194504, "tf-118701": tf_118701}


def main(names: list[str]) -> int:
    for name in names or list(CHECKS):
        start = time.perf_counter()
        line = CHECKS[name]()
        print(f"{line} ({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
