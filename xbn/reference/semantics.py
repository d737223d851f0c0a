"""The switches on which BatchNorm implementations differ (``Semantics``) and their values.

A ground-floor module of plain data: the reference (``xbn.reference.batchnorm``) runs under a
``Semantics``, the profiles (``xbn.profiles.facts``) declare one per framework, and the explanation
search walks ``SWITCH_VALUES`` and ``NUMERIC_SWITCH_VALUES``. Kept apart from the reference's
arithmetic so that each stays small enough to read whole; ``xbn.reference.batchnorm`` re-exports all
of it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Semantics:
    """The switches on which BatchNorm implementations differ. Defaults: Keras 3."""

    # running variance fed with the biased (/n) or Bessel-corrected (/(n-1)) batch variance
    # ("fused": unbiased for 4-D/5-D inputs that are not float64, tf-keras' fused kernel)
    variance_update: str = "biased"  # biased | unbiased | fused
    # trainable=False forces inference mode (Keras, tf-keras V2) or only freezes parameters
    frozen_means_inference: bool = True
    # a call without `training`: inference (Keras); the module's mode, which starts as train and
    # which an explicit flag also sets (torch); a module attribute that only train()/eval()
    # change (flax NNX, equinox); or an error (flax linen, haiku need the flag)
    bare_call: str = "inference"  # inference | module_mode | module_attribute | error
    # one value per channel in training: raise (torch), normalize with variance 0, or return
    # the input unchanged and leave the statistics alone ("identity": Paddle's kernel)
    batch_of_one: str = "zero_variance"  # zero_variance | error | identity
    # running averages: plain EMA from the initial values; zero-debiased hidden/(1 - m^t)
    # (haiku, equinox mode="batch"); or seeded with the first batch (equinox mode="ema")
    ema: str = "plain"  # plain | debiased | seeded
    # moving variance of a fresh layer (haiku and equinox "ema" start from 0)
    initial_variance: float = 1.0
    # training outputs normalized with the batch statistics, or with the running statistics
    # just updated (equinox mode="ema")
    training_normalization: str = "batch"  # batch | running
    # fit with nothing trainable: runs (Keras warns; JAX optimizers apply zero updates) or
    # raises after the forward pass has moved the running statistics (a torch loop's backward()),
    # or raises before any forward pass (MLX's nn.value_and_grad over no trainable parameters)
    frozen_fit: str = "runs"  # runs | error | error_before
    # how Adam applies epsilon: Keras' eps-hat form or the paper's (torch, optax)
    # ("optax": the paper's form with optax's float32 operation order; differs from "paper" only
    # in rounding)
    adam_form: str = "eps_hat"  # eps_hat | paper | optax
    # where RMSprop adds epsilon (xbn.reference.optimizers): inside the square root, lr * g /
    # sqrt(v + eps) (Keras 3, tf-keras, optax.rmsprop's eps_in_sqrt=True), or outside it,
    # lr * g / (sqrt(v) + eps) (torch)
    rmsprop_form: str = "eps_in_sqrt"  # eps_in_sqrt | eps_outside
    # how a momentum value is read: Keras/Flax convention (weight of the old value) or torch's
    # (weight of the batch value): "torch" reproduces a Keras momentum copied verbatim into torch
    momentum_convention: str = "keras"  # keras | torch
    # arithmetic: exact float64, or the scenario's dtype (float32 for 16-bit inputs, as the
    # frameworks upcast) with the operation order the switches below describe
    precision: str = "float64"  # float64 | native
    # batch variance: mean of squared deviations, or E[x^2] - E[x]^2 (clamped at 0 or not)
    variance_algorithm: str = "two_pass"  # two_pass | fast | fast_clamped
    # running-statistic update: old*m + batch*(1-m) (Keras 3, torch, flax) or
    # old - (old - batch)*(1-m) (tf-keras' non-fused path), or fma(1-m, batch, old*m) (torch CPU),
    # or the weighted sum with m stored in the arithmetic's dtype and 1-m computed from that
    # stored value (Paddle's `float momentum` attribute and `(1. - momentum)`), not from the
    # float64 momentum: 1 - float32(0.99) is 0.00999999046, float32(1 - 0.99) is 0.00999999977
    update_form: str = "weighted_sum"  # weighted_sum | decrement | fma | weighted_sum_stored
    # normalization: x*inv + (beta - mean*inv) (TensorFlow, JAX backends of Keras),
    # (x - mean)*inv + beta (flax, Keras' torch backend), or torch's fused multiply-adds;
    # inv = rsqrt(var + eps) * gamma
    inference_form: str = "folded"  # folded | centered | folded_fma
    # epsilon = 0 with batch statistics: accepted (sqrt(var) alone), or refused (torch's
    # F.batch_norm raises "eps must be positive during training"), or refused by the
    # constructor, so every step errs (MLX's BatchNorm.__init__)
    zero_epsilon: str = "accepted"  # accepted | error | constructor
    # op = "reset": the framework's own reset of the running statistics (torch
    # reset_running_stats(): mean 0, variance 1, the batch count 0), or none (Keras, Flax,
    # Haiku, Equinox: re-initialize or assign). Not Keras 3's: the reference performs every op
    # some framework has, so that the frameworks that have it are compared
    reset: str = "running_stats"  # running_stats | none
    # a step's mask (xbn.reference.mask): moments of the valid positions, a fully masked batch
    # giving 0 and 0 (Keras 3) or NaN (flax); tf-keras ignores it where its fused kernel runs;
    # "none": the BatchNorm takes no mask (torch, haiku, equinox)
    mask: str = "weighted"  # weighted | weighted_nan | weighted_unfused | none
    # a NaN or an infinity at a masked position: picked out before any arithmetic ("select":
    # Keras 3.15+ ops.where, so the statistics and a masked position's gradient, its output's
    # own term, stay finite), averaged out after an elementwise step ("where_mean": Flax
    # mean(x**2, where=mask): the statistics stay finite, but the masked position's gradient is
    # 0 * d(x**2)/dx = NaN), or multiplied by its 0 weight ("multiply": tf-keras'
    # tf.nn.weighted_moments, Keras 3 before 3.15: 0 * NaN = 0 * inf = NaN, the channel's
    # mean and variance are NaN)
    masked_nonfinite: str = "select"  # select | where_mean | multiply
    # replicas (data parallel; xbn.reference.replicas): the batch statistics of a replica with
    # synchronized = true: count-weighted over every replica's rows ("global"), the mean of the
    # replicas' means and E[x^2] (what a pmean of local moments gives: "equal_weight"), or its
    # own rows ("local": the flag ignored), or refused ("error": Keras 3 off TensorFlow); with
    # synchronized = false: "local", or "global" (an engine that computes over the global batch
    # anyway, a jit over a sharded array)
    synchronized_statistics: str = "global"  # global | equal_weight | local | error
    unsynchronized_statistics: str = "local"  # local | global | error (no data parallelism)
    # the n of Bessel's correction (variance_update unbiased) with cross-replica statistics
    replica_variance_count: str = "global"  # global | local
    # a mask on synchronized replicas: the synchronized statistics of the valid elements
    # ("synchronized": tf-keras all-reduces the mask-weighted sums and counts, Flax pmeans the
    # local masked moments), or each replica's own valid elements ("local": Keras 3's masked
    # _moments never reaches the synchronized ops.moments)
    synchronized_mask: str = "synchronized"  # synchronized | local
    # what the host reads: replica 0's copy, the mean of the copies (tf ON_READ MEAN), replica
    # 0's copy broadcast to every replica before each forward (DDP broadcast_buffers), or one
    # copy for all (every replica's copy set to their mean after each training step)
    replica_readback: str = "first_replica"  # first_replica | mean_of_replicas | broadcast_from_first | global
    # a training batch of no rows (xbn.reference.edges): its mean and variance are NaN and
    # become the running statistics ("nan": Keras, Flax, Haiku, Equinox), or the update is
    # skipped while the batch is still counted ("skip": torch's kernel returns early);
    # grad_gamma on it: a sum over no rows ("zero": torch, Equinox), or that sum times the
    # batch statistics' NaN factor ("nan": Keras, Flax, Haiku); predict on it runs or is
    # refused ("error": tf-keras' data handler)
    empty_batch: str = "nan"  # nan | skip
    empty_gradient: str = "zero"  # zero | nan
    empty_predict: str = "runs"  # runs | error
    # tf-keras' ghost batches (virtual_batch_size N, xbn.reference.renorm) on a training batch of
    # B rows that N does not divide: ceil(B/N) strided ghost batches of at most N rows
    # ("uneven": row b in ghost batch b % ceil(B/N), tf-keras' layout where N divides B), or
    # refused ("error": tf-keras' reshape to [N, -1, ...] fails)
    ghost_batch_remainder: str = "uneven"  # uneven | error
    # momentum/epsilon changed by `set` (xbn.reference.edges): every operation uses the new
    # values ("none"), or predict and fit keep the values their functions were traced with
    # until the next compile, a fit with a fresh optimizer, or a new batch shape retraces:
    # tf.function's one relaxed trace after the first shape (Keras 3 on TF, tf-keras) or
    # jax.jit's trace per shape (Keras 3 on JAX)
    traced_functions: str = "none"  # none | until_compile | until_compile_per_shape
    # a training call of a layer exported at the step (the export ids, xbn.frameworks.modes):
    # the framework's own training forward ("framework": no export, or Keras' exports, which
    # leave training in Keras); the runtime's inference, the module left in eval mode
    # ("inference": OpenVINO's converter calls eval() and traces); the exporter traces the
    # framework's training forward (its checks raise: a batch of one) but writes an inference
    # node and the statistics do not move ("traced_inference": torch.export + onnxscript's
    # torchlib, which sets training = False); or the trace's forward updates the statistics by
    # the framework's rule and the runtime's training-mode node normalizes with the batch
    # statistics and updates them again with the population variance ("traced_update": the
    # TorchScript exporter's trace, then ONNX's opset-15 training mode); or no training call
    # at all ("none": the step is n/a and the statistics stay, Keras 3 on OpenVINO, an
    # inference-only backend, xbn.adapters.keras.inference_backends)
    exported_training: str = "framework"  # framework | inference | traced_inference | traced_update | none
    # whether the framework trains at all: "runs", or "none" for an inference-only backend
    # (Keras 3 on numpy and OpenVINO: no trainer, no autodiff): fit and grad are n/a and the
    # statistics and parameters stay where the calls left them
    trainer: str = "runs"  # runs | none
    # constructor defaults used when a scenario sets defaults = true
    default_momentum: float | None = 0.99
    default_epsilon: float = 1e-3
    # not switches (never searched, in no profile): every batch mean and variance moved by
    # this many times its rounding-error bound (xbn.reference.numerics) in the framework's arithmetic,
    # for the formula variance_algorithm names: the endpoints of an interval
    mean_error: float = 0.0
    variance_error: float = 0.0

    def switches(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in INTERVAL_FIELDS}

    def with_(self, **changes) -> Semantics:
        return replace(self, **changes)


INTERVAL_FIELDS = ("mean_error", "variance_error")  # Semantics fields, not switches

SWITCH_VALUES: dict[str, tuple] = {
    "variance_update": ("biased", "unbiased", "fused"),
    "frozen_means_inference": (True, False),
    "bare_call": ("inference", "module_mode", "module_attribute", "error"),
    "batch_of_one": ("zero_variance", "error", "identity"),
    "ema": ("plain", "debiased", "seeded"),
    "initial_variance": (1.0, 0.0),
    "training_normalization": ("batch", "running"),
    "adam_form": ("eps_hat", "paper", "optax"),
    "rmsprop_form": ("eps_in_sqrt", "eps_outside"),
    "frozen_fit": ("runs", "error", "error_before"),
    "momentum_convention": ("keras", "torch"),
    "reset": ("running_stats", "none"),
    "mask": ("weighted", "weighted_nan", "weighted_unfused", "none"),
    "masked_nonfinite": ("select", "where_mean", "multiply"),
    "synchronized_statistics": ("global", "equal_weight", "local", "error"),
    "unsynchronized_statistics": ("local", "global", "error"),
    "replica_variance_count": ("global", "local"),
    "synchronized_mask": ("synchronized", "local"),
    "replica_readback": ("first_replica", "mean_of_replicas", "broadcast_from_first", "global"),
    "zero_epsilon": ("accepted", "error", "constructor"),
    "empty_batch": ("nan", "skip"),
    "empty_gradient": ("zero", "nan"),
    "empty_predict": ("runs", "error"),
    "ghost_batch_remainder": ("uneven", "error"),
    "traced_functions": ("none", "until_compile", "until_compile_per_shape"),
    "exported_training": ("framework", "inference", "traced_inference", "traced_update",
                          "none"),
    "trainer": ("runs", "none"),
    "default_momentum": (0.99, 0.9),
    "default_epsilon": (1e-3, 1e-5),
}

# Switches that matter only in scenarios with replicas: the explanation search tries them
# (single, or in a declared profile) only there (xbn.explain.candidates.relevant_switches)
REPLICA_SWITCHES = ("synchronized_statistics", "unsynchronized_statistics",
                    "replica_variance_count", "replica_readback")

# Switches that matter only in scenarios with an empty input, a `set` of momentum/epsilon, or
# ghost batches (virtual_batch_size): tried, alone or in a declared profile, only there
# (xbn.explain.candidates.relevant_switches, xbn.reference.edges.relevant_edges)
EDGE_SWITCHES = ("empty_batch", "empty_gradient", "empty_predict", "traced_functions",
                 "ghost_batch_remainder")

# Switches that only change rounding: tried together with precision="native".
NUMERIC_SWITCH_VALUES: dict[str, tuple] = {
    "variance_algorithm": ("two_pass", "fast", "fast_clamped"),
    "update_form": ("weighted_sum", "decrement", "fma", "weighted_sum_stored"),
    "inference_form": ("folded", "centered", "folded_fma"),
}

# Switches tried, alone or in a declared profile, only where the scenario can show them
# (``xbn.explain.candidates.relevant_switches`` names them): anywhere else each would cost a
# minimization rerun and change nothing. ``masked_nonfinite``: only where a step's mask covers
# a NaN or an infinity; ``synchronized_mask``: only where a synchronized layer's step has a
# mask (``xbn.reference.edges.relevant_edges``); ``exported_training``: only where a call
# trains (a framework's declared profile names it for its export ids alone)
GATED_SWITCHES = (*REPLICA_SWITCHES, *EDGE_SWITCHES, "mask", "masked_nonfinite",
                  "synchronized_mask", "exported_training", "trainer")
