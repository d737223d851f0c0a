"""Hypothesis strategies over scenario documents (the decoded TOML that ``scenario.parse``
validates), aimed at where BatchNorm implementations crack: large means over tiny spreads,
constant channels, extreme magnitudes, batches of one to three, and step sequences that mix
training flags, freezing, set_weights, fit and grad.

Inputs are drawn as generator tables (``normal = {mean, std}``, ``constant``), not as arrays:
a shrunk scenario stays a few readable lines, and Hypothesis shrinks a mean of 1e6 towards the
first entry of its list (0) one choice at a time. Every list is ordered simplest first, because
that is the direction Hypothesis shrinks in.
"""

from __future__ import annotations

from hypothesis import strategies as st

# simplest first: shrinking moves towards the head of each list
MEANS = (0.0, 1.0, -3.0, 100.0, 1e3, 1e4, 1e5, 1e6, -1e5, 1e8)
STDS = (1.0, 0.1, 1e-2, 1e-3, 1e-5, 0.0, 10.0, 1e3)
LARGE = (1e3, 1e4, 1e5, -1e4, 1e6)
SMALL = (1.0, 0.1, 1e-2, 1e-3)
MOMENTA = (0.9, 0.99, 0.5, 0.0, 0.999)
EPSILONS = (1e-3, 1e-5, 1e-8)
LAYOUTS = ("NC", "NLC", "NCL", "NHWC", "NCHW")
DTYPES = ("float32", "float32", "float32", "float64")  # float64: a quarter


def _shape(layout: str, batch: int, features: int, spatial: int) -> list[int]:
    if layout == "NC":
        return [batch, features]
    rest = [spatial] * (len(layout) - 2)
    return [batch, *rest, features] if layout.endswith("C") else [batch, features, *rest]


@st.composite
def input_table(draw, shape: list[int]) -> dict:
    """One input: constant channels, or a normal draw with a (possibly huge) mean and a
    (possibly tiny) spread, which is where a one-pass variance cancels."""
    seed = draw(st.integers(0, 3))
    kind = draw(st.sampled_from(("normal", "ill_conditioned", "constant")))
    if kind == "constant":  # every value equal: a variance of exactly 0
        return {"constant": draw(st.sampled_from(MEANS)), "shape": shape, "seed": seed}
    if kind == "ill_conditioned":  # a mean far larger than the spread: one-pass moments cancel
        normal = {"mean": draw(st.sampled_from(LARGE)), "std": draw(st.sampled_from(SMALL))}
    else:
        normal = {"mean": draw(st.sampled_from(MEANS)), "std": draw(st.sampled_from(STDS))}
    return {"normal": normal, "shape": shape, "seed": seed}


@st.composite
def step_table(draw, inputs: list[str]) -> dict:
    """One step; ``call`` with training=true first (what a shrunk sequence falls back to)."""
    # fit compiles a training loop in Keras (a tenth of a second or more): drawn least often
    op = draw(st.sampled_from(("call", "call", "call", "predict", "set", "set_weights", "grad",
                               "call", "call", "call", "predict", "fit")))
    x = draw(st.sampled_from(inputs))
    if op == "call":
        step = {"op": "call", "input": x, "training": draw(st.sampled_from((True, False)))}
        repeat = draw(st.sampled_from((1, 2, 10, 100, 1000)))
        return {**step, "repeat": repeat} if repeat > 1 else step
    if op == "predict":
        return {"op": "predict", "input": x}
    if op == "set":
        return {"op": "set", "trainable": draw(st.booleans())}
    if op == "set_weights":
        key = draw(st.sampled_from(("moving_mean", "moving_variance", "gamma", "beta")))
        value = draw(st.sampled_from((1.0, 0.0, 1e4, 1e-6) if key == "moving_variance"
                                     else (0.0, 1.0, 1e4, -1e4)))
        return {"op": "set_weights", key: value}
    if op == "fit":
        return {"op": "fit", "input": x, "target": x,
                "optimizer": {"name": draw(st.sampled_from(("sgd", "adam"))), "lr": 0.01}}
    return {"op": "grad", "input": x, "training": draw(st.booleans()), "weights": x}


@st.composite
def scenario_document(draw, name: str = "fuzz") -> dict:
    """A whole scenario document, valid by construction (``scenario.parse`` still checks)."""
    layout = draw(st.sampled_from(LAYOUTS))
    features = draw(st.integers(1, 3))
    batch = draw(st.integers(2, 8) | st.integers(1, 3))
    spatial = draw(st.integers(1, 2))
    layer: dict = {"features": features, "layout": layout}
    momentum = draw(st.sampled_from(MOMENTA))
    if momentum != 0.99:
        layer["momentum"] = momentum
    epsilon = draw(st.sampled_from(EPSILONS))
    if epsilon != 1e-3:
        layer["epsilon"] = epsilon
    dtype = draw(st.sampled_from(DTYPES))
    if dtype != "float32":
        layer["dtype"] = dtype
    if not draw(st.booleans()) and draw(st.booleans()):
        layer["center"] = layer["scale"] = False
    shape = _shape(layout, batch, features, spatial)
    inputs = {"x": draw(input_table(shape))}
    names = ["x"]
    if draw(st.booleans()):
        inputs["y"] = draw(input_table(_shape(layout, batch, features, spatial)))
        names.append("y")
    steps = draw(st.lists(step_table(names), min_size=1, max_size=5))
    return {"schema": 1, "name": name, "layer": layer, "inputs": inputs, "steps": steps}


def batches(size: int):
    """A batch of scenario documents for one round trip to each worker (shrinks to one)."""
    return st.lists(scenario_document(), min_size=1, max_size=size)
