"""Each framework's value for the edge switches (``xbn.reference.semantics.EDGE_SWITCHES``: a batch of no
rows, momentum/epsilon changed after Keras traced its functions, ghost batches that do not divide
the batch), with the source it was read from or the experiment that measured it;
``xbn.profiles.facts`` merges them into its tables.

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

# ghost batches (virtual_batch_size) are tf-keras' alone: a scenario with them is n/a elsewhere
# (each adapter's layer_features), where the reference's own default is recorded
NO_GHOSTS = "has no virtual_batch_size (ghost batches): its adapter reports such a scenario n/a"


def _table(batch: tuple, gradient: tuple, predict: tuple, traced: tuple,
           ghost: tuple | None = None, where: str = "") -> dict:
    return {"empty_batch": batch, "empty_gradient": gradient, "empty_predict": predict,
            "traced_functions": traced,
            "ghost_batch_remainder": ghost or ("uneven", f"{where} {NO_GHOSTS}".strip())}


EDGES: dict[str, dict[str, tuple[object, str]]] = {
    "torch": _table(
        ("skip", "aten/src/ATen/native/Normalization.cpp _batch_norm_impl_index: an input "
         "with numel() == 0 returns input * weight + bias without touching running_mean/var; "
         "torch/nn/modules/batchnorm.py forward has already added 1 to num_batches_tracked "
         "(measured: 0, 1 and count 1 after a [0, 3] training call)"),
        ("zero", "the empty-input branch's output is input * weight[0]: grad 0 (measured)"),
        ("runs", "eval() + no_grad forward of a [0, 3] input: an empty output (measured)"),
        ("none", f"torch/nn/modules/batchnorm.py forward passes self.momentum/self.eps to "
         f"F.batch_norm on every call; {EAGER}"),
        where="torch/nn/modules/batchnorm.py:153-170 _BatchNorm.__init__"),
    "keras3": _table(
        ("nan", f"{KERAS3} call(): ops.moments over the batch axis; {NAN} (measured NaN on "
         "the TensorFlow, JAX and torch backends)"),
        ("nan", f"keras/src/backend/*/nn.py batch_normalization: {FOLDED} (measured NaN on "
         "all three backends)"),
        ("runs", "Keras 3 predict on no rows fails in its own loop (UnboundLocalError "
         "'batch_outputs'): a bug, xbn/profiles/divergences.toml, not a refusal"),
        ("until_compile", "keras/src/backend/tensorflow/trainer.py:254-300 make_*_function: "
         f"tf.function(reduce_retracing=True), a relaxed retrace at the second shape: "
         f"{TRACED}"),
        where=f"{KERAS3} __init__ (Keras 3 dropped tf-keras' argument)"),
    "tf_keras": _table(
        ("nan", f"{TFK} _moments (tf.nn.moments): {NAN} (measured)"),
        ("nan", f"tensorflow nn_impl.py batch_normalization: {FOLDED} (measured)"),
        ("error", "tf_keras/src/engine/data_adapter.py:1275,1986-1990 DataHandler: "
         "batch_size 0 (xbn predicts with batch_size=len(x)) raises 'Expected batch_size to "
         "be positive'; a positive batch_size over no rows raises 'Expected input data to be "
         "non-empty' (:1330-1331)"),
        ("until_compile", "tf_keras/src/engine/training.py:848-851 _reset_compile_cache "
         f"(called by compile, :821); tf.function(reduce_retracing=True): {TRACED}"),
        ("error", f"{TFK}:559-590 call() reshapes a training batch to [virtual_batch_size, -1, "
         "...] ('Will cause errors if virtual_batch_size does not divide the batch size'; "
         ":125 'Must divide the actual batch size during execution'): TensorFlow's reshape "
         "fails (measured: tf 2.21, a batch of 5 with virtual_batch_size 2, in a call, a "
         "gradient and fit); inference reshapes to [-1, 1, ...] and runs")),
    "flax_linen": _table(
        ("nan", f"flax/linen/normalization.py _compute_stats: {NAN} (measured)"),
        ("nan", f"flax/linen/normalization.py:205-223 _normalize: {FOLDED} (measured)"),
        ("runs", "flax has no predict: apply with use_running_average=True"),
        ("none", f"module.clone(...) is a new module; {EAGER}"),
        where="flax/linen/normalization.py:247 BatchNorm"),
    "flax_nnx": _table(
        ("nan", f"flax/nnx/nn/normalization.py _compute_stats: {NAN} (measured)"),
        ("nan", f"flax/nnx/nn/normalization.py:170-180 _normalize: {FOLDED} (measured)"),
        ("runs", "nnx has no predict: a call with use_running_average=True"),
        ("none", f"static attributes are part of the graphdef: a change retraces; {EAGER}"),
        where="flax/nnx/nn/normalization.py:201 BatchNorm"),
    "haiku": _table(
        ("nan", f"haiku/_src/batch_norm.py:170-181: {NAN} (measured)"),
        ("nan", f"haiku/_src/batch_norm.py:196-205 inv = scale * rsqrt(var + eps): {FOLDED} "
         "(measured)"),
        ("runs", "haiku has no predict: apply with is_training=False"),
        ("none", f"a new hk.transform_with_state per change; {EAGER}"),
        where="haiku/_src/batch_norm.py:64 BatchNorm.__init__"),
    "equinox": _table(
        ("nan", f"equinox/nn/_batch_norm.py:210-239: {NAN} (measured)"),
        ("zero", f"equinox/nn/_batch_norm.py: out = weight * x_hat + bias per row: {ZERO} "
         "(measured)"),
        ("runs", "equinox has no predict: a call with inference=True"),
        ("none", f"momentum/eps are static fields: filter_jit retraces; {EAGER}"),
        where="equinox/nn/_batch_norm.py:97 BatchNorm.__init__"),
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
REFUSING = {"empty_predict": "error", "ghost_batch_remainder": "error"}
ERRORS: dict[str, dict[str, tuple[str, str, str]]] = {
    "reference": {"empty_predict": ("ValueError", "predict on an empty batch is refused",
                                    "xbn/reference/edges.py refuse_empty_predict"),
                  "ghost_batch_remainder": (
                      "ValueError", "ghost batches refused",
                      "xbn/reference/renorm.py ghost_groups")},
    "tf_keras": {"empty_predict": (
        "ValueError", "Expected batch_size to be positive",
        "tf_keras/src/engine/data_adapter.py:1275 DataHandler.__init__ -> :1986-1990 "
        "_check_positive (xbn's adapter predicts with batch_size=len(x) = 0)"),
        # TensorFlow's reshape fails where the shape is known: an eager call or gradient raises
        # InvalidArgumentError; fit raises ValueError while tracing a batch whose size the trace
        # knows (xbn's row keeps the first line, "in user code:"; the cause, "Dimension size
        # must be evenly divisible by 4 but is 10", is on a later line), or InvalidArgumentError
        # running a trace made for a batch it divided (measured, tf 2.21: batch_size 4 on 5 rows)
        "ghost_batch_remainder": (
            "InvalidArgumentError", "Input to reshape is a tensor with",
            f"{TFK}:559-590 call(): tf.reshape(inputs, [virtual_batch_size, -1, ...]) -> "
            "tensorflow/python/ops/array_ops.py:65 reshape (an eager op: [Op:Reshape])",
            (("InvalidArgumentError", "batch_normalization/Reshape"),
             ("ValueError", "in user code")))},
}
