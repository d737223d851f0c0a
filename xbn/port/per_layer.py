"""``xbn verify A B --per-layer``: the first BatchNorm where two models part, and why.

A whole model's output says *that* a port is wrong, not *where*: after the first wrong BN
every later layer differs too. This runs both models on the same inputs, once in inference
mode and once in training mode (the training pass on copies: the caller's models are not
changed), captures at every BN its input, its output, its state before the call and its
running statistics after it (``xbn.adapters.captures``), pairs the BNs of the two models, and
names the first BN whose output or running statistics differ while its *input* still agrees:
that layer, not one before it, moved the numbers. ``xbn.port.layer_cause`` then says why
(its state, its configuration, and the one-layer scenario run through both frameworks and
the reference).

Pairing: by execution order; by name when both models name their BNs alike; ``name_map``
(``{A's BN: B's BN}``) fixes pairs by hand. Unpaired BNs or a channel count that does not
match are bad input (``PortError``, exit 2), naming the layers.

Verdicts per quantity: ``same`` (within ``k * eps(float32) * max|A|``), ``expected`` (torch's
running variance, which takes the unbiased batch variance: recomputed from the captured input,
the difference is exactly that), ``differs``.
"""

from __future__ import annotations

import numpy as np

from ..adapters.captures import Capture, channels_last
from ..adapters.port_errors import PortError
from .per_layer_model import Check, LayerPair, PerLayerReport

DEFAULT_K = 64.0
MODES = ("eval", "train")
QUANTITIES = ("input", "output", "running_mean", "running_var")


def match(ca: list[Capture], cb: list[Capture], name_map: dict[str, str] | None = None
          ) -> list[tuple[Capture, Capture]]:
    """Pair the BN calls of A and B (see the module doc); PortError names what does not pair."""
    name_map = dict(name_map or {})
    by_a = {c.name: c for c in ca}
    by_b = {c.name: c for c in cb}
    unknown = [n for n in name_map if n not in by_a] + [n for n in name_map.values()
                                                      if n not in by_b]
    if unknown:
        raise PortError(f"--map names BN layer(s) the models do not have: {', '.join(unknown)}")
    if not name_map and {c.name for c in ca} == {c.name for c in cb} and len(by_a) == len(ca):
        name_map = {c.name: c.name for c in ca}
    fixed_b = set(name_map.values())
    rest_b = [c for c in cb if c.name not in fixed_b]
    pairs, left_a = [], []
    for c in ca:
        if c.name in name_map:
            pairs.append((c, by_b[name_map[c.name]]))
        elif rest_b:
            pairs.append((c, rest_b.pop(0)))
        else:
            left_a.append(c.name)
    if left_a or rest_b:
        raise PortError(f"the models' BatchNorms do not pair: A has {len(ca)}, B has {len(cb)}; "
                        f"unmatched in A: {', '.join(left_a) or 'none'}; unmatched in B: "
                        f"{', '.join(c.name for c in rest_b) or 'none'} (fix pairs with --map)")
    wrong = [f"{x.name} ({x.features}) / {y.name} ({y.features})" for x, y in pairs
             if x.features != y.features]
    if wrong:
        raise PortError("paired BatchNorms have different channel counts: " + "; ".join(wrong)
                        + " (fix pairs with --map)")
    return pairs


def _measure(a, b, k: float) -> tuple[float | None, float | None, bool, str | None]:
    from ..comparison.diffs import measure

    if a is None or b is None:
        return None, None, a is None and b is None, None if a is None and b is None else (
            "no running statistics on " + ("A" if a is None else "B"))
    m = measure(b, a, "float32", k)
    if m["note"]:
        return None, None, False, m["note"]
    return m["max_abs"], m["tolerance"], m["within"], None


def compare_pair(pair: LayerPair, mode: str, x: Capture, y: Capture, k: float) -> None:
    """Append ``pair``'s checks for one mode: input, output and (training) running stats."""
    for quantity, va, vb in (("input", channels_last(x.input, x.axis),
                              channels_last(y.input, y.axis)),
                             ("output", channels_last(x.output, x.axis),
                              channels_last(y.output, y.axis))):
        mx, tol, ok, note = _measure(va, vb, k)
        pair.checks.append(Check(mode, quantity, mx, tol, "same" if ok else "differs", note))
    if mode != "train":
        return
    for quantity, key in (("running_mean", "moving_mean"), ("running_var", "moving_variance")):
        va, vb = x.after.get(key), y.after.get(key)
        mx, tol, ok, note = _measure(va, vb, k)
        check = Check(mode, quantity, mx, tol, "same" if ok else "differs", note)
        if not ok and quantity == "running_var" and note is None:
            why = unbiased_explains(x, y, k)
            if why:
                check.verdict, check.note = "expected", why
        pair.checks.append(check)


def unbiased_explains(x: Capture, y: Capture, k: float) -> str | None:
    """Why two running variances differ, when it is only torch's n/(n-1): each side's unbiased
    excess (its batch weight x (s2 n/(n-1) - s2), s2 and n from its captured input) removed,
    they agree."""
    from ..profiles.facts import PROFILES, profile_fact

    adjusted, sides, ns = [], [], set()
    for c in (x, y):
        v = np.asarray(c.after["moving_variance"], dtype=np.float64)
        fid = c.info.framework if c.info else None
        unbiased = (fid in PROFILES and profile_fact(fid, "variance_update").value == "unbiased")
        if unbiased:
            decay = c.info.decay
            if decay is None:
                return None
            _, var, n = c.batch_statistics()
            if n < 2:
                return None
            v = v - (1.0 - decay) * var / (n - 1)  # w * (var * n/(n-1) - var)
            sides.append(fid)
            ns.add(n)
        adjusted.append(v)
    if len(sides) != 1:
        return None
    mx, _, ok, _ = _measure(adjusted[0], adjusted[1], k)
    if not ok:
        return None
    return (f"{sides[0]} feeds the unbiased batch variance (x n/(n-1), n={min(ns)}) into its "
            f"running variance; with that removed they agree (max_abs {mx:.3g})")


def compare_captures(pairs_by_mode: dict[str, list[tuple[Capture, Capture]]], k: float
                     ) -> list[LayerPair]:
    """One LayerPair per BN pair, with its checks in each captured mode."""
    layers: list[LayerPair] = []
    for mode in MODES:
        for i, (x, y) in enumerate(pairs_by_mode.get(mode, [])):
            if i == len(layers):
                layers.append(LayerPair(i, x.name, y.name, x.features))
            compare_pair(layers[i], mode, x, y, k)
    return layers


def first_divergence(layers: list[LayerPair]) -> tuple[int | None, bool]:
    """(index of the first BN whose own results differ, whether its input differs already)."""
    for i, pair in enumerate(layers):
        if pair.diverges():
            return i, not pair.input_agrees()
    return None, False


def to_b(x: np.ndarray, perm) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, perm)) if perm else x


def verify_per_layer(a, b, x: np.ndarray, *, transpose_b=None, k: float | None = None,
                     name_map: dict[str, str] | None = None, explain: bool = True,
                     captures_a: dict | None = None, save_a: str | None = None
                     ) -> PerLayerReport:
    """Capture both models in both modes, pair and compare their BNs, explain the first that
    diverges. ``captures_a``: A's captures read from a snapshot (``xbn.port.capture_files``)
    instead of running A (the across-versions use; ``a`` is then a label); ``save_a``: a file
    to keep A's captures in for that use."""
    import time

    from ..adapters.captures import capture

    start = time.perf_counter()
    k = DEFAULT_K if k is None else k
    x = np.asarray(x, dtype=np.float32)
    pairs: dict[str, list] = {}
    raw_a: dict[str, list] = {}
    fid_a = fid_b = None
    for mode in MODES:
        if captures_a is not None:
            fid_a, ca = captures_a["framework"], captures_a[mode]
        else:
            fid_a, ca = capture(a, x, mode == "train")
        fid_b, cb = capture(b, to_b(x, transpose_b), mode == "train")
        if not ca or not cb:
            raise PortError(f"no BatchNorm ran in {'A' if not ca else 'B'} ({mode} pass)")
        raw_a[mode] = ca
        pairs[mode] = match(ca, cb, name_map)
    if save_a:
        from .capture_files import save

        save(save_a, fid_a, raw_a, x)
    report = PerLayerReport(fid_a, fid_b, k, compare_captures(pairs, k))
    report.first, report.starts_before = first_divergence(report.layers)
    if report.first is not None and explain:
        from .layer_cause import explain_layer

        i = report.first
        report.cause = explain_layer(pairs, i, report.layers[i], report.starts_before,
                                     same_framework=captures_a is not None)
    report.seconds = time.perf_counter() - start
    return report
