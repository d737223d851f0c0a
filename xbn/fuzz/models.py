"""Small models for the fuzzer: a Hypothesis strategy over model *specs* (plain data), their
weights from a seed, and the lookup of each family's model builder.

A single-layer scenario cannot show what users meet when they port a network: a BatchNorm fed
by a dense layer or a convolution, a second BN after an activation, a residual add, a frozen BN
in the middle. A spec is the JSON-able description of such a chain, written the way users write
them::

    {"schema": 1, "layout": "NCHW", "batch": 4, "features": 3, "spatial": 2,
     "input": {"normal": {"mean": 1e4, "std": 1e-3}, "seed": 0}, "seed": 7,
     "blocks": [{"op": "conv3x3", "bn": {"momentum": 0.1, "eps": 1e-5}, "act": "relu",
                 "bn2": null, "residual": false, "frozen": false}, ...]}

Momentum and epsilon are torch's (``momentum`` the weight of the *new* batch statistic): the
builders map them by the port's conventions (Keras and Flax take ``1 - momentum``, the weight of
the old value; epsilon is passed as is, never left at Keras' 1e-3 or Flax's 1e-5). ``layout``
is the other frameworks' layout: torch always runs NCHW (its only layout); ``NHWC`` models are
fed the transposed input and normalize the last axis, ``NCHW`` ones keep torch's layout with
``axis=1`` BNs (Keras and Flax convolutions are channels-last only on CPU, so their ports
transpose around each convolution, as hand ports that keep NCHW do).

Every block maps ``features`` channels to ``features`` channels, so a residual add is always
legal and the shapes come from a small fixed set (``SHAPES``): frameworks that cache compiled
kernels reuse them. Lists are ordered simplest first, the direction Hypothesis shrinks in.

The builders (``xbn/adapters/<family>/model_builder.py``: ``build(spec, weights, framework)``
and ``forward(model, x)``) are found by family name through the registry, as the repro
templates are (``xbn.fuzz.repro.template_module``); families never import each other.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .strategies import LARGE, MEANS, SMALL, STDS

SCHEMA = 1
OPS = ("dense", "conv1x1", "conv3x3")  # dense: NC models only; convs: NCHW/NHWC models
# (batch, features, spatial): batch 1 only with spatial extent (torch refuses a training BN
# over one value per channel, which is no porting question)
SHAPES = ((4, 3, 2), (2, 2, 2), (8, 2, 2), (1, 3, 2), (6, 4, 2), (3, 2, 2))
LAYOUTS = ("NC", "NCHW", "NHWC")
MOMENTA = (0.1, 0.01, 0.5, 0.0, 0.9)  # torch's convention: the new batch's weight
EPSILONS = (1e-5, 1e-3, 1e-8)
ACTS = ("relu", "none")


def input_shape(spec: dict) -> list[int]:
    """The input's shape in torch's layout (NC or NCHW)."""
    if spec["layout"] == "NC":
        return [spec["batch"], spec["features"]]
    return [spec["batch"], spec["features"], spec["spatial"], spec["spatial"]]


def transpose_b(spec: dict) -> tuple[int, ...] | None:
    """The axes that turn torch's input into the other frameworks' (None: the same)."""
    return (0, 2, 3, 1) if spec["layout"] == "NHWC" else None


def bn_names(spec: dict) -> list[str]:
    """Every BN of the model in execution order, named alike in every framework."""
    out = []
    for i, block in enumerate(spec["blocks"]):
        out.append(f"b{i}_bn1")
        if block.get("bn2"):
            out.append(f"b{i}_bn2")
    return out


def make_input(spec: dict) -> np.ndarray:
    """The float32 input (torch's layout), from the spec's generator table."""
    table, shape = spec["input"], input_shape(spec)
    rng = np.random.default_rng(table.get("seed", 0))
    if "constant" in table:
        return np.full(shape, table["constant"], dtype=np.float32)
    normal = table["normal"]
    return rng.normal(normal["mean"], normal["std"], shape).astype(np.float32)


def make_weights(spec: dict) -> dict[str, np.ndarray]:
    """Every weight in torch's convention, from the spec's seed: ``b{i}.kernel`` ((out, in) for
    dense, OIHW for convolutions), ``b{i}.bias``, and per BN ``{name}.gamma/beta/mean/var``
    (gamma and beta away from 1 and 0, running statistics away from 0 and 1, so that a swap or
    a wrong initial state shows)."""
    rng = np.random.default_rng(spec["seed"])
    c = spec["features"]
    out: dict[str, np.ndarray] = {}
    for i, block in enumerate(spec["blocks"]):
        shape = {"dense": (c, c), "conv1x1": (c, c, 1, 1), "conv3x3": (c, c, 3, 3)}[block["op"]]
        fan_in = int(np.prod(shape[1:]))
        out[f"b{i}.kernel"] = (rng.normal(0, 1, shape) / np.sqrt(fan_in)).astype(np.float32)
        out[f"b{i}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
    for name in bn_names(spec):
        out[f"{name}.gamma"] = (1 + 0.2 * rng.normal(0, 1, c)).astype(np.float32)
        out[f"{name}.beta"] = (0.2 * rng.normal(0, 1, c)).astype(np.float32)
        out[f"{name}.mean"] = (0.5 * rng.normal(0, 1, c)).astype(np.float32)
        out[f"{name}.var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return out


def frozen_bn(spec: dict) -> str | None:
    """The name of the frozen BN (the first BN of the block marked ``frozen``), or None."""
    for i, block in enumerate(spec["blocks"]):
        if block.get("frozen"):
            return f"b{i}_bn1"
    return None


@st.composite
def input_spec(draw) -> dict:
    """Constant channels, a normal draw, or a large mean over a tiny spread."""
    seed = draw(st.integers(0, 3))
    kind = draw(st.sampled_from(("normal", "ill_conditioned", "constant")))
    if kind == "constant":
        return {"constant": draw(st.sampled_from(MEANS)), "seed": seed}
    if kind == "ill_conditioned":
        return {"normal": {"mean": draw(st.sampled_from(LARGE)),
                           "std": draw(st.sampled_from(SMALL))}, "seed": seed}
    return {"normal": {"mean": draw(st.sampled_from(MEANS)),
                       "std": draw(st.sampled_from(STDS[:5]))}, "seed": seed}


@st.composite
def bn_spec(draw) -> dict:
    return {"momentum": draw(st.sampled_from(MOMENTA)), "eps": draw(st.sampled_from(EPSILONS))}


@st.composite
def block_spec(draw, layout: str, index: int, blocks: int) -> dict:
    op = "dense" if layout == "NC" else draw(st.sampled_from(OPS[1:]))
    second = draw(st.integers(0, 2)) == 2  # a third of the blocks: BN -> act -> BN
    return {"op": op, "bn": draw(bn_spec()), "act": draw(st.sampled_from(ACTS)),
            "bn2": draw(bn_spec()) if second else None,
            "residual": draw(st.integers(0, 2)) == 2,
            # a BN in the middle: never the first block's (its input is the model's)
            "frozen": 0 < index < blocks - 1 and draw(st.integers(0, 2)) == 2}


@st.composite
def model_spec(draw) -> dict:
    """A whole model spec (see the module doc), simplest first: NC, two dense blocks."""
    layout = draw(st.sampled_from(LAYOUTS))
    batch, features, spatial = draw(st.sampled_from(SHAPES))
    count = draw(st.integers(2, 5))
    return {"schema": SCHEMA, "layout": layout, "batch": batch, "features": features,
            "spatial": spatial, "input": draw(input_spec()), "seed": draw(st.integers(0, 3)),
            "blocks": [draw(block_spec(layout, i, count)) for i in range(count)]}


def builder(framework: str):
    """The model builder of ``framework``'s family (``xbn.adapters.<family>.model_builder``);
    ValueError where the family has none."""
    from ..frameworks.registry import family_module, family_of

    family = family_of(framework)
    if family is None:
        raise ValueError(f"{framework}: not a framework xbn knows")
    try:
        module = family_module(family.id, "model_builder")
    except ModuleNotFoundError:
        raise ValueError(f"{framework}: no model builder for the {family.id} family "
                         f"(xbn/adapters/{family.id}/model_builder.py)") from None
    if framework not in module.FRAMEWORKS:
        raise ValueError(f"{framework}: the {family.id} model builder builds "
                         f"{', '.join(module.FRAMEWORKS)} only")
    return module
