"""Why the first diverging BatchNorm diverges: its state, its configuration, and the one-layer
scenario that shows which semantic rule moved it.

Three looks, cheapest first, all reported:

1. **State**: gamma, beta and the running statistics each BN held before the call, A against
   B. A converter slip (gamma and beta written in each other's place) shows here and nowhere
   else: no configuration and no semantic switch differs.
2. **Configuration**: epsilon, momentum (both in the Keras convention, the weight of the old
   value), and freezing (Keras ``trainable=False`` against torch's ``requires_grad``).
3. **The one-layer scenario**: the layer's captured input (A's layout; spatial axes cut to
   ``CROP`` so the search stays fast), A's state loaded with ``set_weights``, A's configuration
   as the scenario's layer and B's differing constructor values as ``[layer.native.B]``; an
   inference call, a training call, an inference call (with ``set trainable = false`` first
   when either side is frozen). It runs in this process through both frameworks' real layers
   and the float64 reference (``xbn.adapters.base.run_scenario``), and ``xbn.explain.search``
   names, per framework, the semantic switches that reproduce it. The switches on which the
   two frameworks differ are the rule (``momentum_convention=torch``,
   ``frozen_means_inference=false``, ``variance_update=unbiased``...). A side the switches do
   not explain is re-run with its own configuration value as the scenario's (an epsilon left
   at the framework's default is a configuration, not a semantic rule).
"""

from __future__ import annotations

import re

import numpy as np

from ..adapters.captures import STATE, Capture
from .per_layer_model import LayerPair

CROP = 8
LAYOUTS = {(2, 1): "NC", (2, -1): "NC", (3, 1): "NCL", (3, -1): "NLC", (4, 1): "NCHW",
           (4, -1): "NHWC", (5, 1): "NCDHW", (5, -1): "NDHWC"}
EPS_KEY = {"torch": "eps"}
SWITCH = re.compile(r"\b([a-z_]+)=([A-Za-z0-9_.+-]+)")
EXPECTED_SWITCHES = ("variance_update", "precision")  # framework arithmetic, not a port mistake


def explain_layer(pairs: dict, i: int, pair: LayerPair, starts_before: bool,
                  same_framework: bool = False) -> dict:
    """The cause of the first divergence at layer ``i`` (see the module doc), as data."""
    xa, xb = pairs["eval"][i]
    ta, tb = pairs["train"][i]
    out: dict = {"layer_a": pair.a, "layer_b": pair.b, "state": state_diffs(xa, xb),
                 "config": config_diffs(xa, xb), "switches": {}, "scenario": None,
                 "explained": False}
    if starts_before:
        out["summary"] = (f"{pair.a} / {pair.b} receives an input that already differs: the "
                          "divergence starts in a layer that is not a BatchNorm before it")
        return out
    if not same_framework and xa.info and xb.info:
        out["scenario"] = scenario_explanation(xa, xb, ta)
        out["switches"] = out["scenario"]["differ"]
    out["explained"] = bool(out["state"]["differs"] or out["config"] or out["switches"])
    out["summary"] = summary(out)
    return out


def state_diffs(x: Capture, y: Capture) -> dict:
    """Which of gamma, beta and the running statistics differ before the call; swaps named."""
    from ..comparison.diffs import measure

    differs, swapped = [], []
    for key in STATE:
        va, vb = x.before.get(key), y.before.get(key)
        if va is None or vb is None:
            continue
        if not measure(vb, va, "float32", 16)["within"]:
            differs.append(key)
    for p, q in (("gamma", "beta"), ("moving_mean", "moving_variance")):
        if p in differs and q in differs and all(
                x.before.get(s) is not None and y.before.get(t) is not None for s, t in
                ((p, q), (q, p))) and np.allclose(x.before[p], y.before[q]) and np.allclose(
                x.before[q], y.before[p]):
            swapped.append(f"{p}/{q}")
    return {"differs": differs, "swapped": swapped}


def config_diffs(x: Capture, y: Capture) -> list[dict]:
    """Epsilon, momentum (Keras convention) and freezing, where the two layers differ."""
    a, b = x.info, y.info
    if a is None or b is None:
        return []
    out = []
    if a.epsilon is not None and b.epsilon is not None and not np.isclose(a.epsilon, b.epsilon):
        out.append({"key": "epsilon", "a": a.epsilon, "b": b.epsilon})
    if a.cumulative != b.cumulative or (a.decay is not None and b.decay is not None
                                        and not np.isclose(a.decay, b.decay)):
        out.append({"key": "momentum", "a": "cumulative" if a.cumulative else a.decay,
                    "b": "cumulative" if b.cumulative else b.decay,
                    "native_a": a.momentum, "native_b": b.momentum})
    if a.trainable is not None and b.trainable is not None and (not a.trainable or
                                                                not b.trainable):
        out.append({"key": "frozen", "a": not a.trainable, "b": not b.trainable,
                    "how_a": _freeze_word(a.framework), "how_b": _freeze_word(b.framework)})
    return out


def _freeze_word(fid: str) -> str:
    return "requires_grad_(False)" if fid.startswith("torch") else "trainable=False"


def _layout(c: Capture) -> str:
    rank = c.input.ndim
    return LAYOUTS[(rank, 1 if c.axis == 1 and rank > 2 else (1 if rank == 2 else -1))]


def _crop(x: np.ndarray, axis: int) -> np.ndarray:
    index = tuple(slice(None) if d in (0, axis) else slice(0, CROP) for d in range(x.ndim))
    return np.asarray(x[index], dtype=np.float64)


def build_scenario(x: Capture, y: Capture, native_b: dict | None = None, layer_from_b=()):
    """The one-layer scenario of the module doc (``layer_from_b``: configuration keys the
    scenario's layer takes from B instead of A, for the configuration re-run)."""
    from ..scenario.model import Layer, Scenario, Step

    a, b = x.info, y.info
    src = {k: (b if k in layer_from_b else a) for k in ("epsilon", "momentum")}
    momentum = "cumulative" if src["momentum"].cumulative else float(src["momentum"].decay)
    native = {} if native_b is None else {b.framework: native_b}
    layer = Layer(x.features, layout=_layout(x), momentum=momentum,
                  epsilon=float(src["epsilon"].epsilon), center=bool(a.center),
                  scale=bool(a.scale), native=native)
    values = {k: [float(v) for v in np.ravel(x.before[k])] for k in STATE
              if x.before.get(k) is not None}
    steps = [Step(0, "set_weights", values=values)]
    if a.trainable is False or b.trainable is False:
        steps.append(Step(len(steps), "set", trainable=False))
    for training in (False, True, False):
        steps.append(Step(len(steps), "call", input="x", training=training))
    return Scenario("per-layer", layer, {"x": _crop(x.input, x.axis)}, steps,
                    title=f"one-layer scenario of {a.name} / {b.name}")


def native_of(x: Capture, y: Capture) -> dict:
    """B's constructor values that differ from A's, as B's framework spells them."""
    a, b = x.info, y.info
    native = {}
    if a.epsilon is not None and b.epsilon is not None and not np.isclose(a.epsilon, b.epsilon):
        native[EPS_KEY.get(b.framework, "epsilon")] = b.epsilon
    if b.momentum is not None and (a.decay is None or b.decay is None
                                   or not np.isclose(a.decay, b.decay)):
        native["momentum"] = b.momentum
    return native


def run_explained(scenario, frameworks: list[str]) -> dict[str, dict]:
    """Each framework's differing rows against the reference and the switches that explain
    them: {fid: {"switches": {name: value}, "unexplained": n, "rows": n}}."""
    from ..adapters.base import run_scenario
    from ..comparison.diffs import DEFAULT_K, diff_table, observations_frame
    from ..explain.search import explain_diffs
    from ..frameworks.registry import load_adapter

    records = []
    for fid in [*frameworks, "numpy"]:
        records += list(run_scenario(load_adapter(fid), scenario))
    obs = observations_frame(records)
    diffs = explain_diffs(diff_table(obs, "numpy", DEFAULT_K), obs, [scenario], "numpy",
                          DEFAULT_K)
    out = {}
    for fid in frameworks:
        rows = diffs[(diffs["framework"] == fid) & (diffs["verdict"] != "same")]
        switches: dict[str, str] = {}
        unexplained = 0
        for text in rows["explanation"].fillna(""):
            if not text or text.startswith("unexplained"):
                unexplained += 1
            switches.update(dict(SWITCH.findall(text)))
        out[fid] = {"switches": switches, "unexplained": unexplained, "rows": int(len(rows))}
    return out


def scenario_explanation(x: Capture, y: Capture, train_x: Capture) -> dict:
    """Run the one-layer scenario; name the switches on which A and B differ."""
    fa, fb = x.info.framework, y.info.framework
    scenario = build_scenario(x, y, native_of(x, y))
    found = run_explained(scenario, [fa, fb])
    differ = {}
    for name in sorted(set(found[fa]["switches"]) | set(found[fb]["switches"])):
        va, vb = found[fa]["switches"].get(name), found[fb]["switches"].get(name)
        if va != vb:
            differ[name] = {"a": va or "reference", "b": vb or "reference",
                            "expected": name in EXPECTED_SWITCHES}
    reruns = []
    for side, fid in (("b", fb), ("a", fa)):
        if not found[fid]["unexplained"]:
            continue
        for key in ("epsilon", "momentum"):
            variant = build_scenario(x, y, None, layer_from_b=(key,) if side == "b" else ())
            again = run_explained(variant, [fb])[fb] if side == "b" else None
            if again is not None and not again["unexplained"]:
                reruns.append({"side": side, "framework": fid, "key": key})
                break
    shape = list(scenario.inputs["x"].shape)
    return {"frameworks": found, "differ": {k: v for k, v in differ.items()
                                            if not v["expected"]},
            "expected": {k: v for k, v in differ.items() if v["expected"]},
            "configuration": reruns, "input_shape": shape,
            "cropped": shape != list(x.input.shape)}


def summary(cause: dict) -> str:
    """One line: what moved the layer."""
    parts = []
    st = cause["state"]
    if st["swapped"]:
        parts.append("state: " + ", ".join(f"{s} swapped (B's {s.split('/')[0]} holds A's "
                                           f"{s.split('/')[1]})" for s in st["swapped"]))
    elif st["differs"]:
        parts.append("state: " + ", ".join(st["differs"]) + " differ before the call")
    for c in cause["config"]:
        if c["key"] == "frozen":
            parts.append(f"frozen: A {c['how_a'] if c['a'] else 'not frozen'}, "
                         f"B {c['how_b'] if c['b'] else 'not frozen'}")
        else:
            parts.append(f"{c['key']}: A {_fmt(c['a'])}, B {_fmt(c['b'])}")
    sc = cause.get("scenario") or {}
    for name, v in (sc.get("differ") or {}).items():
        parts.append(f"switch {name}: A {v['a']}, B {v['b']}")
    for r in sc.get("configuration") or []:
        parts.append(f"the reference with {r['framework']}'s own {r['key']} reproduces it")
    return "; ".join(parts) or "no cause found"


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)

