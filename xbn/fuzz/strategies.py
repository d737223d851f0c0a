"""Hypothesis strategies over scenario documents (the decoded TOML that ``scenario.parse``
validates), aimed at where BatchNorm implementations crack: large means over tiny spreads,
constant channels, extreme magnitudes, batches of one to three, and step sequences that mix
training flags, freezing, set_weights, fit and grad, and the scenario language's additions:
masks, Batch Renormalization, ghost batches, ``reset``, ``set`` of momentum/epsilon mid-run,
traced repeats, ``@N`` chains (the layer fed its own output of an earlier step: a small model
of stacked BatchNorms), replicas and ``param_dtype``.

Inputs are drawn as generator tables (``normal = {mean, std}``, ``constant``), not as arrays:
a shrunk scenario stays a few readable lines, and Hypothesis shrinks a mean of 1e6 towards the
first entry of its list (0) one choice at a time. Every list is ordered simplest (and
cheapest) first, because that is the direction Hypothesis shrinks in.

Throughput (``benchmarks/fuzz_throughput.py``): shapes come from a small fixed set (``SHAPES``)
so that a jitted framework compiles each shape once per campaign, not once per example (Flax:
16 ms an example on a seen shape, 210 ms on a new one); repeats stop at 30 (a ``repeat =
1000`` step cost every framework and every reference rerun a thousand forward passes, and left
shrunk findings with steps nobody wants to read); ``fit`` and ``predict``, which trace a new
function per layer in Keras, are drawn least; the additions that need a layer option are
drawn as a minority, so that most examples stay plain calls.
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
# (batch, features, spatial extent): a fixed few, so compiled kernels are reused
SHAPES = ((4, 2, 2), (2, 1, 1), (8, 3, 2), (1, 2, 1), (3, 1, 2), (6, 2, 1))
REPEATS = (1, 1, 1, 2, 3, 10, 10, 30)
RENORMS = ({"momentum": 0.99, "rmax": 3.0, "rmin": 1 / 3, "dmax": 5.0},
           {"momentum": 0.5, "rmax": 1.5, "rmin": 0.5, "dmax": 0.5},
           {"momentum": 0.9, "rmax": 1.0, "rmin": 1.0, "dmax": 0.0})


def _shape(layout: str, batch: int, features: int, spatial: int) -> list[int]:
    if layout == "NC":
        return [batch, features]
    rest = [spatial] * (len(layout) - 2)
    return [batch, *rest, features] if layout.endswith("C") else [batch, features, *rest]


def _mask_shape(layout: str, shape: list[int]) -> list[int]:
    """The input's shape without its channel axis (what a step's ``mask`` has)."""
    axis = len(shape) - 1 if layout.endswith("C") and layout != "NC" else 1
    return [n for i, n in enumerate(shape) if i != axis]


def _fits(values: tuple, dtype: str) -> tuple:
    """The values a float16 input can hold (its largest finite value is 65504)."""
    return tuple(v for v in values if abs(v) <= 1e4) if dtype == "float16" else values


@st.composite
def input_table(draw, shape: list[int], dtype: str = "float32") -> dict:
    """One input: constant channels, or a normal draw with a (possibly huge) mean and a
    (possibly tiny) spread, which is where a one-pass variance cancels."""
    seed = draw(st.integers(0, 3))
    kind = draw(st.sampled_from(("normal", "ill_conditioned", "constant")))
    means, large, stds = _fits(MEANS, dtype), _fits(LARGE, dtype), _fits(STDS, dtype)
    if kind == "constant":  # every value equal: a variance of exactly 0
        return {"constant": draw(st.sampled_from(means)), "shape": shape, "seed": seed}
    if kind == "ill_conditioned":  # a mean far larger than the spread: one-pass moments cancel
        normal = {"mean": draw(st.sampled_from(large)), "std": draw(st.sampled_from(SMALL))}
    else:
        normal = {"mean": draw(st.sampled_from(means)), "std": draw(st.sampled_from(stds))}
    return {"normal": normal, "shape": shape, "seed": seed}


@st.composite
def mask_table(draw, shape: list[int]):
    """A 0/1 literal of ``shape``; shrinks towards every position valid (1)."""
    count = 1
    for n in shape:
        count *= n
    flat = [0 if masked else 1 for masked in draw(st.lists(st.booleans(), min_size=count,
                                                           max_size=count))]

    def nest(values: list[int], dims: list[int]):
        if len(dims) == 1:
            return values
        step = len(values) // dims[0]
        return [nest(values[i * step:(i + 1) * step], dims[1:]) for i in range(dims[0])]

    return nest(flat, shape)


@st.composite
def step_table(draw, inputs: list[str], index: int, outputs: list[int], masks: bool,
               replicated: bool) -> dict:
    """Step ``index``; ``call`` with training=true first (what a shrunk sequence falls back
    to). ``outputs``: earlier steps whose output may feed this one (``@N``)."""
    # fit compiles a training loop in Keras (a tenth of a second or more): drawn least often
    # (Keras: a call 5 ms, a grad 50 ms, predict 130 ms, fit 450 ms: a new layer's traced
    # predict and train functions); shrinking moves towards the head: call
    ops = ["call", "call", "call", "predict", "set", "set_weights", "grad", "call", "call",
           "reset", "set_param", "call", "call", "predict", "call", "fit"]
    if replicated:  # fit and grad are refused on replicas
        ops = [op for op in ops if op not in ("fit", "grad")]
    op = draw(st.sampled_from(ops))
    x = draw(st.sampled_from(inputs + [f"@{n}" for n in outputs]))
    mask = {"mask": "m"} if masks and draw(st.booleans()) else {}
    if op == "call":
        step = {"op": "call", "input": x, "training": draw(st.sampled_from((True, False))),
                **mask}
        repeat = draw(st.sampled_from(REPEATS))
        if repeat > 1:
            step["repeat"] = repeat
            if repeat <= 10 and draw(st.booleans()):
                step["trace"] = True
        return step
    if op == "predict":
        return {"op": "predict", "input": x, **mask}
    if op == "set":
        return {"op": "set", "trainable": draw(st.booleans())}
    if op == "set_param":  # the layer changed after construction, as its users do
        key = draw(st.sampled_from(("momentum", "epsilon")))
        return {"op": "set", key: draw(st.sampled_from(MOMENTA[1:] if key == "momentum"
                                                       else EPSILONS[1:] + (0.1,)))}
    if op == "reset":
        return {"op": "reset"}
    if op == "set_weights":
        key = draw(st.sampled_from(("moving_mean", "moving_variance", "gamma", "beta")))
        value = draw(st.sampled_from((1.0, 0.0, 1e4, 1e-6) if key == "moving_variance"
                                     else (0.0, 1.0, 1e4, -1e4)))
        return {"op": "set_weights", key: value}
    x = draw(st.sampled_from(inputs))  # fit and grad: drawn inputs only (a target's shape)
    if op == "fit":
        return {"op": "fit", "input": x, "target": x,
                "optimizer": {"name": draw(st.sampled_from(("sgd", "adam"))), "lr": 0.01}}
    return {"op": "grad", "input": x, "training": draw(st.booleans()), "weights": x, **mask}


@st.composite
def layer_table(draw, layout: str, batch: int, features: int) -> dict:
    """The layer: plain options, and a minority of the additions' layer keys."""
    layer: dict = {"features": features, "layout": layout}
    momentum = draw(st.sampled_from(MOMENTA))
    if momentum != 0.99:
        layer["momentum"] = momentum
    epsilon = draw(st.sampled_from(EPSILONS))
    if epsilon != 1e-3:
        layer["epsilon"] = epsilon
    dtype = draw(st.sampled_from(DTYPES + ("float16",)))
    if dtype != "float32":
        layer["dtype"] = dtype
    if dtype == "float16" and draw(st.booleans()):
        layer["param_dtype"] = "float32"  # mixed precision
    if not draw(st.booleans()) and draw(st.booleans()):
        layer["center"] = layer["scale"] = False
    extra = draw(st.sampled_from(("none", "none", "none", "none", "renorm", "ghost",
                                  "replicas")))
    if extra == "renorm":
        layer["renorm"] = dict(draw(st.sampled_from(RENORMS)))
    elif extra == "ghost" and batch > 1:
        layer["virtual_batch_size"] = draw(st.sampled_from(
            [d for d in range(1, batch) if batch % d == 0] or [1]))
    elif extra == "replicas" and batch > 1:
        first = draw(st.integers(1, batch - 1))
        layer["replicas"] = [first, batch - first]
        layer["synchronized"] = draw(st.booleans())
    return layer


@st.composite
def scenario_document(draw, name: str = "fuzz") -> dict:
    """A whole scenario document, valid by construction (``scenario.parse`` still checks)."""
    layout = draw(st.sampled_from(LAYOUTS))
    batch, features, spatial = draw(st.sampled_from(SHAPES))
    layer = draw(layer_table(layout, batch, features))
    shape = _shape(layout, batch, features, spatial)
    dtype = layer.get("dtype", "float32")
    inputs = {"x": draw(input_table(shape, dtype))}
    names = ["x"]
    if draw(st.booleans()):
        inputs["y"] = draw(input_table(shape, dtype))
        names.append("y")
    masks = draw(st.integers(0, 3)) == 0  # a quarter of the scenarios pass masks
    if masks:
        inputs["m"] = draw(mask_table(_mask_shape(layout, shape)))
    count = draw(st.integers(1, 4))
    steps: list[dict] = []
    for index in range(count):
        outputs = [i for i, s in enumerate(steps) if s["op"] in ("call", "predict")]
        steps.append(draw(step_table(names, index, outputs, masks, "replicas" in layer)))
    if masks and not any("mask" in s for s in steps):
        del inputs["m"]  # a mask no step names would be an ordinary input
    return {"schema": 1, "name": name, "layer": layer, "inputs": inputs, "steps": steps}


def batches(size: int):
    """A batch of scenario documents for one round trip to each worker (shrinks to one)."""
    return st.lists(scenario_document(), min_size=1, max_size=size)
