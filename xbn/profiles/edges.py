"""Each framework's value for the edge switches (``xbn.reference.semantics.EDGE_SWITCHES``: a batch of no
rows, momentum/epsilon changed after Keras traced its functions), with the source it was read
from or the experiment that measured it; ``xbn.profiles.facts`` merges them into its tables.

Kept apart from ``xbn.profiles.facts`` so that each stays small enough to read whole. Entries are
(value, source) pairs keyed like ``profiles.SEMANTICS``; a Keras 3 backend that departs from
the shared ``keras3`` table is keyed by its ``profiles.NUMERICS`` table in ``BY_BACKEND``.
Measured by hand (pinned versions) on a [0, 3] float32 batch: tests/test_reference_edges.py.
"""

from __future__ import annotations

from . import replicas as profiles_replicas

KERAS3 = "keras/src/layers/normalization/batch_normalization.py"
TFK = "tf_keras/src/layers/normalization/batch_normalization.py"
NAN = "the mean and variance of no rows are NaN and are averaged into the running statistics"
ZERO = "gamma multiplies each row's x_hat: grad_gamma is a sum over no rows, 0"
FOLDED = ("gamma enters as the per-channel factor gamma * rsqrt(var + eps) times the row sum: "
          "0 * NaN = NaN")
RUNS = "predict on an empty batch returns an empty output"
EAGER = "no traced function outlives a change: each call reads the layer's current values"
TRACED = ("predict_function/train_function are traced once with layer.momentum/epsilon as "
          "Python floats and kept until compile() sets them to None "
          "(keras/src/trainers/trainer.py:223-225); measured on set-momentum-midrun")


def _table(batch: tuple, gradient: tuple, predict: tuple, traced: tuple) -> dict:
    return {"empty_batch": batch, "empty_gradient": gradient, "empty_predict": predict,
            "traced_functions": traced}


EDGES: dict[str, dict[str, tuple[object, str]]] = {
    "torch": _table(
        ("skip", "aten/src/ATen/native/Normalization.cpp _batch_norm_impl_index: an input "
         "with numel() == 0 returns input * weight + bias without touching running_mean/var; "
         "torch/nn/modules/batchnorm.py forward has already added 1 to num_batches_tracked "
         "(measured: 0, 1 and count 1 after a [0, 3] training call)"),
        ("zero", "the empty-input branch's output is input * weight[0]: grad 0 (measured)"),
        ("runs", "eval() + no_grad forward of a [0, 3] input: an empty output (measured)"),
        ("none", f"torch/nn/modules/batchnorm.py forward passes self.momentum/self.eps to "
         f"F.batch_norm on every call; {EAGER}")),
    "keras3": _table(
        ("nan", f"{KERAS3} call(): ops.moments over the batch axis; {NAN} (measured NaN on "
         "the TensorFlow, JAX and torch backends)"),
        ("nan", f"keras/src/backend/*/nn.py batch_normalization: {FOLDED} (measured NaN on "
         "all three backends)"),
        ("runs", "Keras 3 predict on no rows fails in its own loop (UnboundLocalError "
         "'batch_outputs'): a bug, xbn/profiles/divergences.toml, not a refusal"),
        ("until_compile", "keras/src/backend/tensorflow/trainer.py:254-300 make_*_function: "
         f"tf.function(reduce_retracing=True), a relaxed retrace at the second shape: "
         f"{TRACED}")),
    "tf_keras": _table(
        ("nan", f"{TFK} _moments (tf.nn.moments): {NAN} (measured)"),
        ("nan", f"tensorflow nn_impl.py batch_normalization: {FOLDED} (measured)"),
        ("error", "tf_keras/src/engine/data_adapter.py:1275,1986-1990 DataHandler: "
         "batch_size 0 (xbn predicts with batch_size=len(x)) raises 'Expected batch_size to "
         "be positive'; a positive batch_size over no rows raises 'Expected input data to be "
         "non-empty' (:1330-1331)"),
        ("until_compile", "tf_keras/src/engine/training.py:848-851 _reset_compile_cache "
         f"(called by compile, :821); tf.function(reduce_retracing=True): {TRACED}")),
    "flax_linen": _table(
        ("nan", f"flax/linen/normalization.py _compute_stats: {NAN} (measured)"),
        ("nan", f"flax/linen/normalization.py:205-223 _normalize: {FOLDED} (measured)"),
        ("runs", "flax has no predict: apply with use_running_average=True"),
        ("none", f"module.clone(...) is a new module; {EAGER}")),
    "flax_nnx": _table(
        ("nan", f"flax/nnx/nn/normalization.py _compute_stats: {NAN} (measured)"),
        ("nan", f"flax/nnx/nn/normalization.py:170-180 _normalize: {FOLDED} (measured)"),
        ("runs", "nnx has no predict: a call with use_running_average=True"),
        ("none", f"static attributes are part of the graphdef: a change retraces; {EAGER}")),
    "haiku": _table(
        ("nan", f"haiku/_src/batch_norm.py:170-181: {NAN} (measured)"),
        ("nan", f"haiku/_src/batch_norm.py:196-205 inv = scale * rsqrt(var + eps): {FOLDED} "
         "(measured)"),
        ("runs", "haiku has no predict: apply with is_training=False"),
        ("none", f"a new hk.transform_with_state per change; {EAGER}")),
    "equinox": _table(
        ("nan", f"equinox/nn/_batch_norm.py:210-239: {NAN} (measured)"),
        ("zero", f"equinox/nn/_batch_norm.py: out = weight * x_hat + bias per row: {ZERO} "
         "(measured)"),
        ("runs", "equinox has no predict: a call with inference=True"),
        ("none", f"momentum/eps are static fields: filter_jit retraces; {EAGER}")),
}

BY_BACKEND: dict[str, dict[str, tuple[object, str]]] = {
    "keras3-jax": {"traced_functions": (
        "until_compile_per_shape", "keras/src/backend/jax/trainer.py:261-335 make_*_function "
        f"wrap the steps in jax.jit, traced once per batch shape: {TRACED}")},
    "keras3-torch": {"traced_functions": (
        "none", "keras/src/backend/torch/trainer.py:112-160 make_train_function/"
        f"make_predict_function run the steps eagerly (no tracing); {EAGER} (measured)")},
}


def facts(semantics: str, numerics: str | None) -> dict[str, tuple[object, str]]:
    """The edge switches' (value, source) for a profile's tables (``registry.Profile``)."""
    return {**EDGES.get(semantics, {}), **BY_BACKEND.get(numerics or "", {})}


def outside_facts(semantics: str, numerics: str | None) -> dict[str, tuple[object, str]]:
    """Every (value, source) kept outside ``xbn.profiles.facts``: the replica switches'
    (``xbn.profiles.replicas``) and the edge switches' (here), for one profile."""
    return {**profiles_replicas.facts(semantics, numerics), **facts(semantics, numerics)}


# Refusals (merged into profiles.REFUSING and profiles.ERRORS): per semantics table what is
# raised, as (exception type, message fragment, source)
REFUSING = {"empty_predict": "error"}
ERRORS: dict[str, dict[str, tuple[str, str, str]]] = {
    "reference": {"empty_predict": ("ValueError", "predict on an empty batch is refused",
                                    "xbn/reference/edges.py refuse_empty_predict")},
    "tf_keras": {"empty_predict": (
        "ValueError", "Expected batch_size to be positive",
        "tf_keras/src/engine/data_adapter.py:1275 DataHandler.__init__ -> :1986-1990 "
        "_check_positive (xbn's adapter predicts with batch_size=len(x) = 0)")},
}
