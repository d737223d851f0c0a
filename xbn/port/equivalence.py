"""``assert_bn_equivalent``: prove in your own test suite that a BatchNorm port behaves the same
(public as ``xbn.testing``, ``xbn verify`` on the command line).

    from xbn.testing import assert_bn_equivalent
    assert_bn_equivalent(keras_model, torch_model, x_nhwc, layout_a="NHWC", layout_b="NCHW")

``a`` and ``b`` are live models: a ``torch.nn.Module`` (TorchScript too), a Keras 3 or tf-keras
model or layer, a ``(flax.linen module, variables)`` tuple (optionally ``(module, variables,
"train_arg")`` naming the call argument that selects the mode), or an ``nnx.Module``. Neither
is modified: torch/NNX models are copied, linen variables are immutable, Keras weights are
restored afterwards.

Inputs are numpy arrays in ``a``'s layout (one array, or a list: one per step). ``b`` gets them
transposed by ``transpose_b`` (a permutation), or by the permutation from ``layout_a`` to
``layout_b`` (``"NHWC"`` -> ``"NCHW"``); ``b``'s outputs of the input's rank are transposed
back before comparing.

Modes:

- ``eval``: inference outputs for every input must agree within ``xbn.comparison.diffs.measure``'s
  tolerance: ``k * eps(float32) * max|reference|``. ``k`` defaults to 16 for two single BN
  layers and to 64 for whole models (a few convolutions and a dense layer reorder float32
  sums differently per framework; 64 eps is still ~8e-6 relative to the output's scale).
- ``train``: ``steps`` training-mode forward passes (no optimizer step). Outputs must agree;
  then every BN layer's running mean and variance. A running-variance difference that is
  exactly torch's unbiased update (batch variance x n/(n-1), recomputed from the batch
  statistics recorded on the torch side) is labelled ``expected`` and passes. A momentum or
  epsilon mismatch between paired layers is named in the explanation and fails.

A failure raises ``AssertionError`` whose message is the diff table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

WHOLE_MODEL_K = 64.0
LAYER_K = 16.0
PASSING = ("same", "expected")


@dataclass
class EquivalenceReport:
    rows: list[dict] = field(default_factory=list)
    a: str = "a"
    b: str = "b"
    k: float = LAYER_K

    @property
    def ok(self) -> bool:
        return all(r["verdict"] in PASSING for r in self.rows)

    def max_abs(self, mode: str | None = None, quantity: str | None = None) -> float:
        values = [r["max_abs"] for r in self.rows if (mode is None or r["mode"] == mode)
                  and (quantity is None or r["quantity"] == quantity)
                  and r["max_abs"] is not None]
        return float(max(values)) if values else 0.0

    def to_text(self) -> str:
        cols = ["mode", "step", "quantity", "layer", "max_abs", "tolerance", "verdict"]
        rows = [[r["mode"], str(r["step"]), r["quantity"], r["layer"] or "",
                 _num(r["max_abs"]), _num(r["tolerance"]), r["verdict"]] for r in self.rows]
        widths = [max(len(c), *(len(x[i]) for x in rows)) if rows else len(c)
                  for i, c in enumerate(cols)]
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [f"a = {self.a}, b = {self.b}, tolerance k = {self.k:g} eps(float32) x max|a|",
               line.format(*cols).rstrip()]
        for r, cells in zip(self.rows, rows, strict=True):
            out.append(line.format(*cells).rstrip())
            if r["explanation"]:
                out.append(f"    {r['explanation']}")
        bad = sum(r["verdict"] not in PASSING for r in self.rows)
        out.append(f"{len(self.rows)} comparison(s), {bad} failing")
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "k": self.k, "ok": self.ok, "rows": self.rows}


def _num(v) -> str:
    return "" if v is None else f"{v:.3g}"


def permutation(layout_a: str, layout_b: str) -> tuple[int, ...]:
    """Axes of an ``layout_a`` array in the order ``layout_b`` wants them."""
    if sorted(layout_a) != sorted(layout_b) or len(set(layout_a)) != len(layout_a):
        raise ValueError(f"layouts {layout_a!r} and {layout_b!r} do not name the same axes")
    return tuple(layout_a.index(c) for c in layout_b)


def compare_bn(a, b, inputs, *, modes: Sequence[str] = ("eval", "train"), steps: int = 3,
               layout_a: str | None = None, layout_b: str | None = None,
               transpose_b: Sequence[int] | None = None, k: float | None = None,
               dtype: str = "float32") -> EquivalenceReport:
    """Run both models and return the diff table (no assertion)."""
    from ..adapters.live import runner_for

    arrays = [np.asarray(x, dtype=dtype) for x in (inputs if isinstance(inputs, list | tuple)
                                                   else [inputs])]
    if not arrays:
        raise ValueError("no inputs")
    perm = tuple(transpose_b) if transpose_b is not None else (
        permutation(layout_a, layout_b) if layout_a and layout_b else None)
    bad_modes = [m for m in modes if m not in ("eval", "train")]
    if bad_modes:
        raise ValueError(f"unknown mode(s) {bad_modes}; use 'eval' and/or 'train'")
    to_b = (lambda x: np.ascontiguousarray(np.transpose(x, perm))) if perm else (lambda x: x)
    back = _inverse(perm)
    ra = runner_for(a, arrays[0])
    rb = runner_for(b, to_b(arrays[0]))
    k = k if k is not None else (LAYER_K if ra.single_layer and rb.single_layer else WHOLE_MODEL_K)
    report = EquivalenceReport(a=ra.framework, b=rb.framework, k=k)
    try:
        mismatch = _config_mismatches(ra.infos(), rb.infos())
        if "eval" in modes:
            for i, x in enumerate(arrays):
                ya, yb = ra.eval(x), _from_b(rb.eval(to_b(x)), back, x.ndim)
                report.rows.append(_row("eval", i, "output", None, ya, yb, k, mismatch["output"]))
        if "train" in modes:
            for j in range(steps):
                x = arrays[j % len(arrays)]
                ya, yb = ra.train(x), _from_b(rb.train(to_b(x)), back, x.ndim)
                report.rows.append(_row("train", j, "output", None, ya, yb, k, mismatch["output"]))
            batch = min(arrays[j % len(arrays)].shape[0] for j in range(steps))
            _stat_rows(report, ra, rb, k, mismatch, batch)
    finally:
        ra.close()
        rb.close()
    return report


def assert_bn_equivalent(a, b, inputs, modes: Sequence[str] = ("eval", "train"), steps: int = 3,
                         **kwargs) -> EquivalenceReport:
    """Raise AssertionError with the diff table unless ``a`` and ``b`` agree (see module doc)."""
    report = compare_bn(a, b, inputs, modes=modes, steps=steps, **kwargs)
    if not report.ok:
        raise AssertionError("BatchNorm port is not equivalent:\n" + report.to_text())
    return report


def _inverse(perm):
    if perm is None:
        return None
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _from_b(y, back, ndim):
    return np.transpose(y, back) if back is not None and y.ndim == ndim else y


def _dtype_name(*arrays) -> str:
    from ..comparison.diffs import less_precise

    names = [str(np.asarray(x).dtype) for x in arrays]
    return less_precise(*(n if n in ("float16", "float32", "float64") else "float32"
                          for n in names))


def _row(mode, step, quantity, layer, ya, yb, k, explanation=None) -> dict:
    from ..comparison.diffs import measure

    row = {"mode": mode, "step": step, "quantity": quantity, "layer": layer, "max_abs": None,
           "tolerance": None, "verdict": "differs", "explanation": None}
    if ya is None or yb is None:
        row["explanation"] = "no running statistics on " + ("a" if ya is None else "b")
        row["verdict"] = "same" if ya is None and yb is None else "differs"
        return row
    m = measure(yb, ya, _dtype_name(ya, yb), k)
    row.update(max_abs=None if np.isnan(m["max_abs"]) else m["max_abs"],
               tolerance=None if np.isnan(m["tolerance"]) else m["tolerance"],
               verdict="same" if m["within"] else "differs")
    if m["note"]:
        row["explanation"] = m["note"] + " (pass layout_a/layout_b or transpose_b?)"
    elif not m["within"] and explanation:
        row["explanation"] = explanation
    return row


def _config_mismatches(ia, ib) -> dict[str, str | None]:
    """Momentum / epsilon differences between paired BN layers, in words."""
    out: dict[str, str | None] = {"output": None, "mean": None, "count": None}
    if len(ia) != len(ib):
        out["count"] = f"a has {len(ia)} BN layer(s), b has {len(ib)}"
        return out
    eps, mom = [], []
    for x, y in zip(ia, ib, strict=True):
        if x.epsilon is not None and y.epsilon is not None and not np.isclose(x.epsilon, y.epsilon):
            eps.append(f"{x.name}/{y.name}: {x.epsilon:g} vs {y.epsilon:g}")
        if x.cumulative != y.cumulative or (x.decay is not None and y.decay is not None
                                            and not np.isclose(x.decay, y.decay)):
            da = "cumulative" if x.cumulative else f"{x.decay:g}"
            db = "cumulative" if y.cumulative else f"{y.decay:g}"
            mom.append(f"{x.name}/{y.name}: keeps {da} vs {db} of the old value")
    if eps:
        out["output"] = "epsilon mismatch: " + "; ".join(eps)
    if mom:
        out["mean"] = ("momentum mismatch (torch momentum must be 1 - Keras/Flax momentum): "
                       + "; ".join(mom))
    return out


def _stat_rows(report: EquivalenceReport, ra, rb, k: float, mismatch: dict, batch: int) -> None:
    sa, sb = ra.stats(), rb.stats()
    if len(sa) != len(sb):
        report.rows.append({"mode": "train", "step": "end", "quantity": "layers", "layer": None,
                            "max_abs": None, "tolerance": None, "verdict": "differs",
                            "explanation": mismatch["count"]})
        return
    for idx, ((na, ma, va), (nb, mb, vb)) in enumerate(zip(sa, sb, strict=True)):
        layer = na if na == nb else f"{na} / {nb}"
        report.rows.append(_row("train", "end", "running_mean", layer, ma, mb, k,
                                mismatch["mean"]))
        row = _row("train", "end", "running_var", layer, va, vb, k, mismatch["mean"])
        if (row["verdict"] == "differs" and va is not None and vb is not None
                and not mismatch["mean"]):
            explained = _unbiased(ra, rb, idx, va, vb, k) or _unbiased_bound(ra, rb, va, vb,
                                                                              k, batch)
            if explained:
                row["verdict"], row["explanation"] = explained
        report.rows.append(row)


def _unbiased(ra, rb, idx, va, vb, k):
    """('expected', why) when the var difference is exactly torch's n/(n-1) update."""
    from ..comparison.diffs import measure
    from ..profiles.facts import profile_fact
    from ..reference.batchnorm import running_variance

    pairs = [(ra, rb, va, vb), (rb, ra, vb, va)]
    for torch_side, other, v_torch, v_other in pairs:
        if torch_side.framework != "torch" or not torch_side.batch_stats:
            continue
        if profile_fact(other.framework, "variance_update").value != "biased":
            continue
        info = torch_side.infos()[idx]
        if info.cumulative or info.momentum is None:
            return None
        variances, counts = zip(*(step[idx] for step in torch_side.batch_stats), strict=True)
        keep = 1.0 - float(info.momentum)  # torch's momentum is the batch's weight
        # what the n/(n-1) factor added to torch's running_var (the EMA is linear, so the
        # running variance it started from cancels out)
        excess = (running_variance(variances, counts, keep, "unbiased", initial=0.0)
                  - running_variance(variances, counts, keep, "biased", initial=0.0))
        ns = set(counts)
        predicted = np.asarray(v_torch, dtype=np.float64) - excess
        m = measure(v_other, predicted, "float32", k)
        if m["within"]:
            nn = ", ".join(str(n) for n in sorted(ns))
            return ("expected", f"torch feeds the unbiased batch variance (x n/(n-1), n={nn}) "
                    f"into running_var, the other side the biased one; with that removed they "
                    f"agree (max_abs {m['max_abs']:.3g})")
    return None


def _unbiased_bound(ra, rb, va, vb, k, batch: int):
    """Without hooks (TorchScript): the torch side may exceed the biased side by at most
    1/(n-1) <= 1/(batch-1) relative (every step adds f*s^2/(n-1) to an EMA of f*s^2)."""
    from ..comparison.diffs import measure
    from ..profiles.facts import profile_fact

    for torch_side, other, v_torch, v_other in ((ra, rb, va, vb), (rb, ra, vb, va)):
        if torch_side.framework != "torch" or torch_side.batch_stats or batch < 2:
            continue
        if profile_fact(other.framework, "variance_update").value != "biased":
            continue
        vt, vo = np.asarray(v_torch, np.float64), np.asarray(v_other, np.float64)
        tol = measure(vo, vt, "float32", k)["tolerance"]
        if np.all(vt >= vo - tol) and np.all(vt - vo <= vo / (batch - 1) + tol):
            return ("expected", "torch feeds the unbiased batch variance into running_var: "
                    f"its excess is within the bound 1/(n-1) <= 1/{batch - 1} (bound check "
                    "only: TorchScript modules take no hooks)")
    return None
