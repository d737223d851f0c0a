"""Each framework's value for the cross-replica switches (``xbn.reference.semantics.REPLICA_SWITCHES``),
with the source it was read from; ``xbn.profiles.facts`` merges them into its tables.

Kept apart from ``xbn.profiles.facts`` so that each stays small enough to read whole. Entries are
(value, source) pairs, keyed like ``profiles.SEMANTICS`` (one table per implementation); the
Keras 3 backends share one semantics table, so a backend that departs from it is keyed by its
``profiles.NUMERICS`` table name in ``BY_BACKEND``. Paths are in the installed packages.
"""

from __future__ import annotations

KERAS3 = "keras/src/layers/normalization/batch_normalization.py"
TFK = "tf_keras/src/layers/normalization/batch_normalization.py"
BIASED = "the running variance is fed the biased variance: no count is used"
ISSUE = "issue 12 ground truth, measured by hand (MirroredStrategy over 2 logical CPUs)"


def _table(sync: str, sync_source: str, count: str, count_source: str, readback: str,
           readback_source: str, unsync: str = "local",
           unsync_source: str = "each replica's moments of its own rows") -> dict:
    return {"synchronized_statistics": (sync, sync_source),
            "unsynchronized_statistics": (unsync, unsync_source),
            "replica_variance_count": (count, count_source),
            "replica_readback": (readback, readback_source)}


_PMEAN_READBACK = ("every device keeps its own copy of the statistics; users read device 0's "
                   "(flax.jax_utils.unreplicate: x[0])")

REPLICAS: dict[str, dict[str, tuple[object, str]]] = {
    "keras3": _table(
        "global", "keras/src/backend/tensorflow/nn.py:1515-1544 _compute_moments_sync: "
        "all_reduce SUM of sums, squared sums and counts (count-weighted); " + ISSUE,
        "global", BIASED,
        "first_replica", f"{KERAS3}:262-275 moving_mean/moving_variance: add_weight with the "
        "default aggregation; unsynchronized Keras 3 reads back replica 0's diverged copy: "
        + ISSUE),
    "tf_keras": _table(
        "global", f"{TFK}:1124-1130 _calculate_mean_and_var -> _sync_calculate_mean_and_var: "
        "all_reduce SUM of local sums, squared sums and batch sizes; " + ISSUE,
        "global", f"{BIASED} ({TFK}:205-207: fused=True is refused with synchronized=True)",
        "mean_of_replicas", f"{TFK}:468-481 moving_mean/moving_variance: synchronization "
        "ON_READ, aggregation MEAN: a read outside the replicas is the mean of their copies; "
        + ISSUE),
    "torch": _table(
        "global", "torch/nn/modules/_functions.py:61-115 SyncBatchNorm.forward: all_gather of "
        "mean, invstd and count, batch_norm_gather_stats_with_counts (count-weighted)",
        "global", "torch/nn/modules/_functions.py:103-115 batch_norm_gather_stats_with_counts "
        "gets every rank's count: the running variance's n/(n-1) uses the global count",
        "broadcast_from_first", "torch/nn/parallel/distributed.py:1781-1782 _pre_forward -> "
        "_sync_buffers: with broadcast_buffers=True (the default) rank 0's buffers overwrite "
        "every rank's before a forward; checkpoints save rank 0's state_dict"),
    "flax_linen": _table(
        "equal_weight", "flax/linen/normalization.py:119-149 _compute_stats "
        "maybe_distributed_mean: lax.pmean of the local mean and mean of squares (pad + mask: "
        "every replica weighs alike); " + ISSUE.replace("MirroredStrategy", "shard_map"),
        "global", BIASED, "first_replica", _PMEAN_READBACK),
    "flax_nnx": _table(
        "equal_weight", "flax/nnx/nn/normalization.py:101-125 _compute_stats "
        "maybe_distributed_mean: lax.pmean of the local mean and mean of squares",
        "global", BIASED, "first_replica", _PMEAN_READBACK),
    "haiku": _table(
        "equal_weight", "haiku/_src/batch_norm.py:169-180: jax.lax.pmean of mean and "
        "mean_of_squares over cross_replica_axis, var = mean_of_squares - mean^2",
        "global", BIASED, "first_replica",
        "haiku state is per device under pmap/shard_map; users read device 0's"),
    "equinox": _table(
        "equal_weight", "equinox/nn/_batch_norm.py:210-216 _stats: lax.pmean of the mean, then "
        "of mean((y - mean)^2): the mean of the replicas' E[x^2] minus mean^2",
        "global", BIASED, "first_replica",
        "eqx.nn.State is per device under pmap/shard_map; users read device 0's"),
}

# Keras 3 on another backend (keyed by profiles.NUMERICS table): synchronized=True is refused
# off TensorFlow (the framework's own error); unsynchronized runs through
# keras.distribution.DataParallel (JAX only).
_OFF_TF = ("error", f"{KERAS3}:184-188 __init__: `if synchronized and backend.backend() != "
           "'tensorflow'`: ValueError")
BY_BACKEND: dict[str, dict[str, tuple[object, str]]] = {
    "keras3-torch": {
        "synchronized_statistics": _OFF_TF,
        "unsynchronized_statistics": (
            "error", "keras/src/backend/__init__.py: distribution_lib = None for torch, so "
            "keras.distribution.list_devices() (DataParallel's first step) raises")},
    # measured (tests/adapters/test_replicas_keras.py): [4, 4] on 2 host devices gives the
    # moving mean 0.1 * the global mean and the biased global variance, on both devices
    "keras3-jax": {
        "synchronized_statistics": _OFF_TF,
        "unsynchronized_statistics": (
            "global", "keras.distribution.DataParallel: one jit over the batch sharded across "
            "devices; ops.moments reduces over all of it, so nothing needs synchronized=True"),
        "replica_readback": (
            "global", "keras.distribution.DataParallel replicates each variable: one value, "
            "the same on every device"),
    },
}


def facts(semantics: str, numerics: str | None) -> dict[str, tuple[object, str]]:
    """The replica switches' (value, source) for a profile's tables (``registry.Profile``)."""
    return {**REPLICAS.get(semantics, {}), **BY_BACKEND.get(numerics or "", {})}


# Refusals (profiles.ERRORS; profiles.REFUSING has synchronized_statistics = "error"): per
# semantics table what is raised, as (exception type, message fragment, source)
ERRORS: dict[str, dict[str, tuple[str, str, str]]] = {
    "reference": {"synchronized_statistics": (
        "ValueError", "cross-replica statistics (synchronized=True) are refused",
        "xbn/reference/replicas.py ReplicatedReference.__init__"),
        "unsynchronized_statistics": (
        "ValueError", "data parallelism (replicas) is refused",
        "xbn/reference/replicas.py ReplicatedReference.__init__")},
    "keras3": {"synchronized_statistics": (  # only its non-TensorFlow backends refuse
        "ValueError", "synchronized=True is only supported with the TensorFlow backend",
        f"{KERAS3}:184-188 BatchNormalization.__init__"),
        "unsynchronized_statistics": (  # only keras-torch declares "error"
        "AttributeError", "list_devices",
        "keras/src/distribution/distribution_lib.py list_devices -> "
        "distribution_lib.list_devices on torch's None")},
    # torch's profile declares SyncBatchNorm's semantics ("global"); on CPU DDP refuses it
    # (a device limit, not semantics: a known divergence), which this names when explained
    "torch": {"synchronized_statistics": (
        "ValueError", "SyncBatchNorm layers only work with GPU modules",
        "torch/nn/parallel/distributed.py:2453-2460 _passing_sync_batchnorm_handle: "
        "`if self.device_type == 'cpu'`")},
}
