"""Each framework's value for every semantic switch, with the source it was verified against.

The tables here are named after the implementation they describe (``keras3``, ``flax_linen``);
each framework's entry in ``xbn.frameworks.registry`` names its tables (``Profile``), so the registry is
the one place that ties a framework id to its facts and ``PROFILES`` is derived from it.

Profiles are data: the reference run with a framework's profile must reproduce that
framework on the conformance suite (tests/test_conformance.py), so a release that changes
behaviour fails that test naming the switch. Sources are paths in the installed packages
(versions in constraints.txt) unless they name an experiment.

Switches marked numeric only change float32 rounding; the float64 reference records them for
the report but does not emulate them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..frameworks import registry
from ..frameworks.devices import base_id, mode_of, run_id
from ..frameworks.modes import modes_of
from ..reference.batchnorm import Semantics
from . import edges as profiles_edges
from .mode_facts import PLAIN_FACTS, mode_facts


@dataclass(frozen=True)
class Fact:
    value: object
    source: str


KERAS3 = "keras/src/layers/normalization/batch_normalization.py"
TFK = "tf_keras/src/layers/normalization/batch_normalization.py"
FLAX = "flax/linen/normalization.py"
NNX = "flax/nnx/nn/normalization.py"
HK = "haiku/_src/batch_norm.py"
EQX = "equinox/nn/_batch_norm.py"
TORCH = "torch/nn/modules/batchnorm.py"
OPTAX = "optax/_src/transform.py:300 (scale_by_adam: eps outside the square root)"
OPTAX_RMS = ("optax/_src/alias.py rmsprop(eps_in_sqrt=True, initial_scale=0.0) -> optax/_src/transform.py "
             "scale_by_rms: updates * rsqrt(nu + eps)")
NO_MASK = "takes no mask (mask = none): a masked step is n/a, the value is the reference's default"

_keras3 = {
    "variance_update": Fact("biased", f"{KERAS3} call(): the batch variance from ops.moments feeds the update"),
    "frozen_means_inference": Fact(True, f"{KERAS3} call(): `if training and self.trainable`"),
    "bare_call": Fact("inference", f"{KERAS3} call(training=None): None is falsy"),
    "batch_of_one": Fact("zero_variance", f"{KERAS3}: no batch-size check"),
    "ema": Fact("plain", f"{KERAS3} call(): moving*momentum + batch*(1-momentum)"),
    "initial_variance": Fact(1.0, f"{KERAS3}: moving_variance_initializer='ones'"),
    "training_normalization": Fact("batch", f"{KERAS3} call(): mean, variance = self._moments(...)"),
    "adam_form": Fact("eps_hat", "keras/src/optimizers/adam.py update_step: alpha = lr*sqrt(1-b2^t)/(1-b1^t)"),
    "rmsprop_form": Fact("eps_in_sqrt", "keras/src/optimizers/rmsprop.py update_step: increment = lr * gradient / sqrt(velocity + epsilon) (not centered, momentum 0)"),
    "momentum_convention": Fact("keras", f"{KERAS3} call(): moving*momentum + batch*(1-momentum)"),
    "frozen_fit": Fact("runs", "keras/src/backend/tensorflow/trainer.py:86 warns 'The model does not have any trainable weights' and trains nothing"),
    "reset": Fact("none", f"{KERAS3}: BatchNormalization defines no reset; users assign the variables"),
    "mask": Fact("weighted", f"{KERAS3}:434-466 _moments: sum over valid / (count + backend.epsilon()): a fully masked batch gives 0, 0"),
    "masked_nonfinite": Fact("select", f"{KERAS3}:442-462 _moments: ops.where(mask, inputs, 0) and ops.where(mask, inputs - mean, 0) before any arithmetic (keras-team/keras#22392, Keras 3.15.0; before it mask * inputs: 'multiply'); measured on mask-nan-padding: finite statistics, and a masked NaN's gradient is its output's own term, on all three backends"),
    "synchronized_mask": Fact("local", f"{KERAS3}:434-441 _moments: ops.moments(synchronized=self.synchronized) only when mask is None; the masked branch sums its replica's own values (measured: MirroredStrategy, synchronized=True, replicas-mask: each replica its own masked moments)"),
    "zero_epsilon": Fact("accepted", f"{KERAS3}:192 self.epsilon = float(epsilon), unchecked"),
    "default_momentum": Fact(0.99, f"{KERAS3} __init__"),
    "default_epsilon": Fact(1e-3, f"{KERAS3} __init__"),
}

_flax_common = {
    "variance_update": Fact("biased", f"{FLAX}:124-145 _compute_stats"),
    "frozen_means_inference": Fact(False, "flax has no trainable flag; xbn freezes parameters in the optax optimizer"),
    "batch_of_one": Fact("zero_variance", f"{FLAX}: no batch-size check"),
    "ema": Fact("plain", f"{FLAX}:402-404 ra = m*ra + (1-m)*batch"),
    "initial_variance": Fact(1.0, f"{FLAX}: var initialized with ones"),
    "training_normalization": Fact("batch", f"{FLAX}:205-223 _normalize with batch stats"),
    "adam_form": Fact("optax", OPTAX),
    "rmsprop_form": Fact("eps_in_sqrt", OPTAX_RMS),
    "momentum_convention": Fact("keras", f"{FLAX}:402-404"),
    "frozen_fit": Fact("runs", "optax.set_to_zero(): zero updates, batch statistics still move"),
    "reset": Fact("none", "flax has no reset: the statistics are the 'batch_stats' collection, re-initialized by init()"),
    "mask": Fact("weighted_nan", f"{FLAX}:119-122 x.mean(axes, where=mask): 0/0 = NaN for a fully masked batch"),
    "masked_nonfinite": Fact("where_mean", f"{FLAX}:119-145 mean(x, where=mask) and mean(_abs_sq(x), where=mask): masked values are left out of the statistics (flax tests/linen/linen_test.py::NormalizationTest::test_batch_norm pads with NaN), but _abs_sq runs on every value, so a masked NaN or inf gets the gradient 0 * 2x = NaN (measured on mask-nan-padding)"),
    "synchronized_mask": Fact("synchronized", f"{FLAX}:119-135 maybe_distributed_mean: lax.pmean of the masked local means (where=mask) over axis_name"),
    "zero_epsilon": Fact("accepted", f"{FLAX}: epsilon is added to the variance unchecked (rsqrt(var + epsilon))"),
    "default_momentum": Fact(0.99, f"{FLAX}:310"),
    "default_epsilon": Fact(1e-5, f"{FLAX}:311"),
}

# Behaviour, per implementation (several framework ids may share one).
SEMANTICS: dict[str, dict[str, Fact]] = {
    "reference": {k: Fact(v, "xbn/reference/batchnorm.py Semantics defaults (Keras 3)")
                  for k, v in Semantics().switches().items()},
    "torch": {
        "variance_update": Fact("unbiased", f"{TORCH}:321-324 docstring; torch/_decomp/decompositions.py:2109-2115 (n = numel/C); ratio n/(n-1) measured for NC..NCDHW"),
        "frozen_means_inference": Fact(False, f"{TORCH}:187-203: only self.training selects batch statistics (pytorch/pytorch#86590)"),
        "bare_call": Fact("module_mode", f"{TORCH}:200-203 (self.training; modules start in train mode)"),
        "batch_of_one": Fact("error", "torch/nn/functional.py:2840-2856 _verify_batch_size"),
        "ema": Fact("plain", f"{TORCH}:182-194"),
        "initial_variance": Fact(1.0, f"{TORCH}:99-104 reset_running_stats"),
        "training_normalization": Fact("batch", "torch/nn/functional.py batch_norm(training=True)"),
        "adam_form": Fact("paper", "torch/optim/adam.py:530-545 denom = sqrt(v)/sqrt(bc2) + eps"),
        "rmsprop_form": Fact("eps_outside", "torch/optim/rmsprop.py:325-339 _single_tensor_rmsprop: avg = square_avg.sqrt().add_(eps); param.addcdiv_(grad, avg, value=-lr)"),
        "frozen_fit": Fact("error", "torch/autograd: backward() raises 'element 0 of tensors does not require grad' after the forward pass updated the running statistics"),
        "momentum_convention": Fact("keras", "xbn maps the scenario's Keras-convention momentum m to torch's 1 - m; a native torch momentum is read in torch's convention (momentum_convention=torch)"),
        "reset": Fact("running_stats", f"{TORCH}:91-97 reset_running_stats(): running_mean 0, running_var 1, num_batches_tracked 0"),
        "mask": Fact("none", f"{TORCH}:176 forward(self, input): no mask argument"),
        "masked_nonfinite": Fact("select", NO_MASK),
        "synchronized_mask": Fact("synchronized", NO_MASK),
        "zero_epsilon": Fact("error", "torch/nn/functional.py:2891-2894 batch_norm: `if training and eps <= 0.0: raise ValueError` (training: batch statistics, also eval without running statistics)"),
        "default_momentum": Fact(0.9, f"{TORCH}:41-42 momentum=0.1 (torch convention)"),
        "default_epsilon": Fact(1e-5, f"{TORCH}:41-42"),
    },
    "keras3": _keras3,
    "tf_keras": {
        **_keras3,
        "variance_update": Fact("fused", f"{TFK}:243,948 _bessels_correction_test_only keeps the fused kernel's n/(n-1) variance; fused only for 4-D/5-D float16/bfloat16/float32 inputs ({TFK}:296,357-392)"),
        "frozen_means_inference": Fact(True, f"{TFK}:1316-1319 _get_training_value"),
        "bare_call": Fact("inference", f"{TFK}:1312 backend.learning_phase() is 0 in eager mode"),
        "adam_form": Fact("eps_hat", "tf_keras/src/optimizers/adam.py:179,213"),
        "rmsprop_form": Fact("eps_in_sqrt", "tf_keras/src/optimizers/rmsprop.py update_step (dense): increment = lr * gradient * tf.math.rsqrt(velocity + epsilon)"),
        "reset": Fact("none", f"{TFK}: BatchNormalizationBase defines no reset"),
        "mask": Fact("weighted_unfused", f"{TFK}:1132-1149 tf.nn.weighted_moments (div_no_nan); {TFK}:896-905 the fused kernel warns and ignores the mask"),
        "masked_nonfinite": Fact("multiply", f"{TFK}:1132-1149 tf.nn.weighted_moments: reduce_sum(frequency_weights * x), 0 * NaN = NaN (measured: NaN padding gives NaN statistics, outputs and moving statistics; the fused kernel ignores the mask, so every value enters)"),
        "synchronized_mask": Fact("synchronized", f"{TFK}:1152-1200 _sync_calculate_mean_and_var(mask): all-reduces the mask-weighted sums, squared sums and counts (divide_no_nan); synchronized forces fused=False (:205-211)"),
        "zero_epsilon": Fact("accepted", f"{TFK}:214 self.epsilon = epsilon, unchecked; tf.compat.v1.nn.fused_batch_norm accepts 0 on CPU (experiment)"),
        "default_momentum": Fact(0.99, f"{TFK}:1462"),
        "default_epsilon": Fact(1e-3, f"{TFK}:1463"),
    },
    "flax_linen": {**_flax_common,
                   "bare_call": Fact("error", "flax/linen/module.py:2952 merge_param: use_running_average must be passed")},
    "flax_nnx": {**_flax_common,
                 "variance_update": Fact("biased", f"{NNX}:99-125"),
                 "bare_call": Fact("module_attribute", f"{NNX}:293,364 use_running_average=False by default, changed only by .train()/.eval()"),
                 "default_epsilon": Fact(1e-5, f"{NNX}:296")},
    "haiku": {
        "variance_update": Fact("biased", f"{HK}:170-181"),
        "frozen_means_inference": Fact(False, "haiku has no trainable flag; xbn freezes parameters in the optax optimizer"),
        "bare_call": Fact("error", f"{HK}:130 is_training is a required argument"),
        "batch_of_one": Fact("zero_variance", f"{HK}: no batch-size check"),
        "ema": Fact("debiased", "haiku/_src/moving_averages.py:123-132 average = hidden/(1-decay^t)"),
        "initial_variance": Fact(0.0, "haiku/_src/moving_averages.py: hidden and average start at zeros (init with a zero batch)"),
        "training_normalization": Fact("batch", f"{HK}:181-205"),
        "adam_form": Fact("optax", OPTAX),
        "rmsprop_form": Fact("eps_in_sqrt", OPTAX_RMS),
        "frozen_fit": Fact("runs", "optax.set_to_zero(): zero updates, batch statistics still move"),
        "momentum_convention": Fact("keras", "haiku/_src/moving_averages.py: hidden*decay + value*(1-decay)"),
        "reset": Fact("none", f"{HK}: no reset; the statistics are haiku state, re-initialized by init()"),
        "mask": Fact("none", f"{HK}:127-134 __call__(inputs, is_training, test_local_stats, scale, offset): no mask"),
        "masked_nonfinite": Fact("select", NO_MASK),
        "synchronized_mask": Fact("synchronized", NO_MASK),
        "zero_epsilon": Fact("accepted", f"{HK}: eps is added to the variance unchecked"),
        "default_momentum": Fact(None, f"{HK}:68 decay_rate has no default"),
        "default_epsilon": Fact(1e-5, f"{HK}:69"),
    },
    "equinox": {
        "variance_update": Fact("biased", f"{EQX}:210-216 _stats"),
        "frozen_means_inference": Fact(False, "equinox has no trainable flag; xbn freezes parameters in the optax optimizer"),
        "bare_call": Fact("module_attribute", f"{EQX}:207-208 inference=None uses self.inference (default False)"),
        "batch_of_one": Fact("zero_variance", f"{EQX}: no batch-size check"),
        "ema": Fact("seeded", f"{EQX}:226-239 mode='ema' (the default via 'legacy'): first batch seeds the running statistics"),
        "initial_variance": Fact(0.0, f"{EQX}: EMA buffers start as jnp.empty (zeros)"),
        "training_normalization": Fact("running", f"{EQX}:232-239 training outputs use the just-updated running statistics"),
        "adam_form": Fact("optax", OPTAX),
        "rmsprop_form": Fact("eps_in_sqrt", OPTAX_RMS),
        "frozen_fit": Fact("runs", "optax.set_to_zero(): zero updates, batch statistics still move"),
        "momentum_convention": Fact("keras", f"{EQX}:235-236 (1-m)*batch + m*running"),
        "reset": Fact("none", f"{EQX}: no reset; the statistics are eqx.nn.State, re-made by make_with_state()"),
        "mask": Fact("none", f"{EQX}:174-181 __call__(x, state, *, key, inference): no mask"),
        "masked_nonfinite": Fact("select", NO_MASK),
        "synchronized_mask": Fact("synchronized", NO_MASK),
        "zero_epsilon": Fact("accepted", f"{EQX}: eps is added to the variance unchecked"),
        "default_momentum": Fact(0.99, f"{EQX}:101"),
        "default_epsilon": Fact(1e-5, f"{EQX}:102"),
    },
}

def _numeric(variance: str, update: str, form: str, source: str) -> dict[str, Fact]:
    """How a framework rounds in float32 (precision="native" reproduces it)."""
    return {"precision": Fact("native", "frameworks compute in the input dtype (float32 for 16-bit inputs)"),
            "variance_algorithm": Fact(variance, source),
            "update_form": Fact(update, source),
            "inference_form": Fact(form, source)}


# Float32 rounding, per implementation and backend.
NUMERICS: dict[str, dict[str, Fact]] = {
    "torch": _numeric("two_pass", "fma", "folded_fma",
                      "experiment: 1000 updates of running_mean/var bit-exact with fma(m, batch, (1-m)*old); outputs 300/300 bit-exact; stored aten cpu/batch_norm_kernel.cpp"),
    "keras3-tensorflow": _numeric("two_pass", "weighted_sum", "folded",
                                  f"{KERAS3} call(); keras/src/backend/tensorflow/nn.py moments, batch_normalization -> tf.nn.batch_normalization"),
    "keras3-jax": _numeric("two_pass", "weighted_sum", "folded",
                           f"{KERAS3} call(); keras/src/backend/jax/nn.py moments (jnp.var), batch_normalization (x*inv + (-mean*inv + offset))"),
    "keras3-torch": _numeric("fast", "weighted_sum", "centered",
                             f"{KERAS3} call(); keras/src/backend/torch/nn.py moments (E[x^2]-E[x]^2, no clamp), batch_normalization ((x-mean)*inv + offset)"),
    "keras3-numpy": _numeric("fast", "weighted_sum", "folded",
                             f"{KERAS3} call(); keras/src/backend/numpy/nn.py:947-951 moments (E[x^2]-E[x]^2, no clamp), :967-985 batch_normalization (x*inv + (-mean*inv + offset))"),
    "keras3-openvino": _numeric("fast", "weighted_sum", "folded",
                                f"{KERAS3} call(); keras/src/backend/openvino/nn.py:1015-1029 moments (E[x^2]-E[x]^2, clamped only for float16), :1034 batch_normalization -> opset BatchNormInference"),
    "tf_keras": _numeric("two_pass", "decrement", "folded",
                         f"{TFK}:868-881 var -= (var - value)*(1-m) and tensorflow nn_impl.py batch_normalization (non-fused path; the fused 4-D/5-D kernel uses a weighted sum and (x-mean)*inv + beta)"),
    "flax_linen": _numeric("fast_clamped", "weighted_sum", "centered", f"{FLAX}:142 (use_fast_variance=True), :205-223"),
    "flax_nnx": _numeric("fast_clamped", "weighted_sum", "centered", f"{NNX}:122, :170-180"),
    "haiku": _numeric("fast", "weighted_sum", "centered",
                      f"{HK}:170-181 (no clamp), :203-205; the averages as XLA compiles "
                      "haiku/_src/moving_averages.py:123-127 (fma(hidden, decay, value*(1-decay)), "
                      "1 - decay and decay**t in float32), which the reference rounds alike for "
                      "ema=debiased under precision=native (experiment: 1000 steps bit-exact)"),
    "equinox": _numeric("two_pass", "weighted_sum", "centered", f"{EQX}:210-222 (clamped >= 0; divides by sqrt(v+eps))"),
}


# -- PaddlePaddle and MLX: every switch here, replica and edge ones included, since
# xbn/profiles/replicas.py and edges.py keep no tables for them. Paths: the installed wheels,
# except PDK (the C++ kernel, read in PaddlePaddle/Paddle: the wheel ships it compiled).
PD = "paddle/nn/layer/norm.py"
PDF = "paddle/nn/functional/norm.py"
PDK = "paddle/phi/kernels/cpu/batch_norm_kernel.cc (PaddlePaddle/Paddle@0b3b64e)"
MLXN = "mlx/nn/layers/normalization.py"
MLXO = "mlx/optimizers/optimizers.py"
NOT_WIRED = "not measured: replicas are n/a for {} in xbn (no engine wired); reference default"


def _no_replicas(fid: str) -> dict[str, Fact]:
    why = NOT_WIRED.format(fid)
    return {k: Fact(v, why) for k, v in (
        ("synchronized_statistics", "global"), ("unsynchronized_statistics", "local"),
        ("replica_variance_count", "global"), ("replica_readback", "first_replica"))}


SEMANTICS["paddle"] = {
    "variance_update": Fact("biased", f"{PDK}:116-146 saved_variance_e /= N * sample_size feeds running_var (Paddle#68159; measured: running variance 0.9 + 0.1 * biased variance)"),
    "frozen_means_inference": Fact(False, f"{PD}:879-900: only self.training selects batch statistics; stop_gradient freezes parameters alone"),
    "bare_call": Fact("module_mode", "paddle/nn/layer/layers.py:454 self.training = True; train()/eval() set it"),
    "batch_of_one": Fact("identity", f"{PDK}:109-114 `if ((N * sample_size) == 1)` copies x to y and returns before the update (deliberate: Paddle#11445, PR #11578; undocumented, the API docs give the normalization formula); measured: output x, statistics unchanged, grad of x = dy, of weight and bias 0"),
    "ema": Fact("plain", f"{PDK}:151-154 running*momentum + saved*(1-momentum)"),
    "initial_variance": Fact(1.0, f"{PD}:825-835 _variance initializer Constant(1.0)"),
    "training_normalization": Fact("batch", f"{PDF}:236-239 use_global_stats = not training (None: batch statistics in training)"),
    "adam_form": Fact("paper", "measured on fit-sgd-adam: adam_form=paper reproduces Paddle's beta, eps_hat does not; the docstring's form (paddle/optimizer/adam.py:73-78, lr_t*m/(sqrt(v) + eps)) is Keras' eps-hat, but the CPU kernel (paddle/phi/kernels/funcs/adam_functors.h) scales eps by sqrt(1-b2^t), which is the paper's lr*m_hat/(sqrt(v_hat) + eps)"),
    "rmsprop_form": Fact("eps_in_sqrt", "paddle/optimizer/rmsprop.py:62 w - lr/sqrt(r + eps) * grad"),
    "frozen_fit": Fact("runs", "measured: stop_gradient on weight and bias, loss.backward() and SGD.step() run; the statistics move"),
    "momentum_convention": Fact("keras", f"{PD}:1240-1241 moving = moving*momentum + batch*(1-momentum)"),
    "reset": Fact("none", f"{PD}: _BatchNormBase defines no reset; users set_value the statistics"),
    "mask": Fact("none", f"{PD}:879 forward(self, input): no mask argument"),
    "masked_nonfinite": Fact("select", NO_MASK),
    "synchronized_mask": Fact("synchronized", NO_MASK),
    "zero_epsilon": Fact("accepted", f"{PD}:869 self._epsilon = epsilon, unchecked; {PDK}:161,165 (var + epsilon) (measured: epsilon=0 trains)"),
    "empty_batch": Fact("skip", "measured: a [0, 3] training call returns an empty output and leaves running mean 0 and variance 1"),
    "empty_gradient": Fact("zero", "measured: grad of weight on a [0, 3] batch is 0"),
    "empty_predict": Fact("runs", "measured: eval() forward of a [0, 3] input returns an empty output"),
    "traced_functions": Fact("none", f"dygraph: forward reads self._momentum/self._epsilon at every call ({PD}:889-900)"),
    "ghost_batch_remainder": Fact("uneven", f"{PD}:759 _BatchNormBase has no virtual_batch_size: n/a"),
    **_no_replicas("paddle"),
    "default_momentum": Fact(0.9, f"{PD}:770 momentum=0.9 (Keras' direction)"),
    "default_epsilon": Fact(1e-5, f"{PD}:771 epsilon=1e-05"),
}
SEMANTICS["mlx"] = {
    "variance_update": Fact("unbiased", f"{MLXN}:405-409 running_var from _calc_stats(x, ddof=1) (mx.var ddof=1), a second variance beside the biased one that normalizes"),
    "frozen_means_inference": Fact(False, f"{MLXN}:393-414: only self.training selects batch statistics; freeze() only removes parameters from trainable_parameters"),
    "bare_call": Fact("module_mode", "mlx/nn/layers/base.py Module.training: True for a fresh module; train()/eval() set it"),
    "batch_of_one": Fact("error", f"{MLXN}:393-400 ValueError when training with one value per channel"),
    "ema": Fact("plain", f"{MLXN}:408-409 (1 - mu)*running + mu*batch"),
    "initial_variance": Fact(1.0, f"{MLXN}:343 running_var = mx.ones"),
    "training_normalization": Fact("batch", f"{MLXN}:404-414 mean, var of the batch normalize in training"),
    "adam_form": Fact("paper", f"{MLXO}:542-547 (bias_correction=True, which xbn passes) (sqrt(v)*rsqrt(1-b2^t) + eps)"),
    "rmsprop_form": Fact("eps_outside", f"{MLXO}:351-354 parameter - lr*g/(sqrt(v) + eps)"),
    "frozen_fit": Fact("error_before", "mlx/nn/utils.py:35 nn.value_and_grad over no trainable parameters: mx.value_and_grad raises '[grad] Must specify at least one argument' before the forward pass"),
    "momentum_convention": Fact("keras", "xbn maps the scenario's Keras-convention momentum m to MLX's 1 - m (torch's direction)"),
    "reset": Fact("none", f"{MLXN}: BatchNorm defines no reset; users assign running_mean/running_var"),
    "mask": Fact("none", f"{MLXN}:378 __call__(self, x): no mask argument"),
    "masked_nonfinite": Fact("select", NO_MASK),
    "synchronized_mask": Fact("synchronized", NO_MASK),
    "zero_epsilon": Fact("constructor", f"{MLXN}:329-330 __init__: `if eps <= 0.0: raise ValueError` (at construction, so inference steps are refused too)"),
    "empty_batch": Fact("nan", f"{MLXN}:373-374 mean/var of no rows are NaN and enter the running statistics (measured)"),
    "empty_gradient": Fact("zero", f"{MLXN}:415 weight * x + bias per row: a sum over no rows (measured)"),
    "empty_predict": Fact("runs", "MLX has no predict: eval() and a call return an empty output (measured)"),
    "traced_functions": Fact("none", f"{MLXN}:406-414 reads self.momentum/self.eps at every call; nothing is compiled"),
    "ghost_batch_remainder": Fact("uneven", f"{MLXN}:320 BatchNorm has no virtual_batch_size: n/a"),
    **_no_replicas("mlx"),
    "default_momentum": Fact(0.9, f"{MLXN}:324 momentum=0.1 (torch's direction)"),
    "default_epsilon": Fact(1e-5, f"{MLXN}:323 eps=1e-5"),
}
NUMERICS["paddle"] = _numeric("two_pass", "weighted_sum_stored", "folded",
                              f"{PDK}:116-146 mean, then the squared deviations (two passes); :151-154 running*momentum + saved*(1. - momentum) with `float momentum` (the op attribute), so 1-m is taken from float32(m) (1000 updates bit-exact, tests/test_conformance.py long-run-float32); :171-178 x*(inv*scale) + (bias - mean*inv*scale)")
NUMERICS["mlx"] = _numeric("two_pass", "weighted_sum", "centered",
                           f"{MLXN}:373-374 mx.mean, mx.var (mlx/ops.cpp var: the mean, then the squared deviations); :408-409; :414-415 ((x - mean)*rsqrt(var + eps))*weight + bias")


def _profile(p: registry.Profile) -> dict[str, Fact]:
    extra = profiles_edges.outside_facts(p.semantics, p.numerics)  # replica and edge switches
    return {**SEMANTICS[p.semantics], **{k: Fact(*v) for k, v in extra.items()},
            **(NUMERICS[p.numerics] if p.numerics else {}),
            **{k: Fact(*v) for k, v in PLAIN_FACTS.items()}}  # every plain id: not exported


class _Profiles(dict):
    """Registry id -> profile; iteration lists registry ids only. A moded id (``torch+compile``,
    any ``@DEVICE``) is looked up as its base id's profile overridden by its mode's facts
    (``mode_facts``): a compiled program is its framework's semantics with its own rounding."""

    def __missing__(self, fid: str) -> dict[str, Fact]:
        if fid not in self:
            raise KeyError(fid)
        overrides = {k: Fact(*v) for k, v in mode_facts(run_id(fid)).items()}
        return {**dict.__getitem__(self, base_id(fid)), **overrides}

    def __contains__(self, fid: object) -> bool:
        if not isinstance(fid, str) or not dict.__contains__(self, base_id(fid)):
            return False
        mode = mode_of(fid)
        return mode is None or any(m.name == mode for m in modes_of(base_id(fid)))

    def get(self, fid, default=None):  # dict.get skips __missing__
        return self.__getitem__(fid) if fid in self else default


# framework id -> switch -> Fact, for every registered framework (all have a profile).
PROFILES: dict[str, dict[str, Fact]] = _Profiles(
    {fid: _profile(info.profile) for fid, info in registry.FRAMEWORKS.items()
     if info.profile is not None})


# Keras 3 on OpenVINO runs no training calls: xbn reports them n/a, and so does the
# reference under this fact, whose statistics then stay as the framework's do.
PROFILES["keras-openvino"]["exported_training"] = Fact(
    "none", "xbn/adapters/keras/inference_backends.py refuse_training_call: the backend is "
    "inference only (keras/src/backend/openvino/trainer.py:215-237 fit raises), and each eager "
    "call compiles an OpenVINO model (keras/src/backend/openvino/core.py:934-946), so training "
    "calls are n/a; a frozen layer's training=True call is inference in Keras 3 and runs")


# Keras 3 on numpy and on OpenVINO have no trainer (inference-only backends): fit and grad are
# n/a, and so in the reference under this fact.
for _fid, _where in (("keras-numpy", "keras/src/backend/numpy/trainer.py:151-170 fit raises "
                      "NotImplementedError; no autodiff"),
                     ("keras-openvino", "keras/src/backend/openvino/trainer.py:215-237 fit "
                      "raises; no autodiff")):
    PROFILES[_fid]["trainer"] = Fact("none", f"xbn/adapters/keras/inference_backends.py: {_where}")


# Keras 3 on numpy traces nothing: its predict function is plain Python, so a `set` of
# momentum/epsilon reaches the next predict at once (conformance: traced_functions=none
# reproduces every scenario).
PROFILES["keras-numpy"]["traced_functions"] = Fact(
    "none", "keras/src/backend/numpy/trainer.py make_predict_function: a Python function, "
    "no tracing (measured on set-momentum-midrun)")


def semantics_of(framework_id: str) -> Semantics:
    """The reference's Semantics that reproduces a framework (its declared profile)."""
    values = {k: f.value for k, f in PROFILES[framework_id].items()}
    if values.get("default_momentum") is None:
        values["default_momentum"] = Semantics().default_momentum
    return Semantics(**values)


def differences(framework_id: str) -> dict:
    """Switches on which a framework departs from the reference's defaults."""
    base = Semantics().switches()
    return {k: f.value for k, f in PROFILES[framework_id].items()
            if base.get(k) != f.value and f.value is not None}


def profile_matrix() -> dict[str, dict[str, object]]:
    """switch -> framework -> value, in the reference's switch order."""
    switches = list(Semantics().switches())
    return {sw: {fid: PROFILES[fid][sw].value for fid in PROFILES} for sw in switches}


def profile_fact(framework_id: str, switch: str) -> Fact:
    return PROFILES[framework_id][switch]


def default_decay(framework_id: str) -> float | None:
    """Default momentum in the Keras/Flax convention (weight of the old value)."""
    return PROFILES[framework_id]["default_momentum"].value


def default_epsilon(framework_id: str) -> float:
    return PROFILES[framework_id]["default_epsilon"].value


def default_native_momentum(framework_id: str) -> float | None:
    """The default as the framework's own momentum keyword reads it (torch: 0.1)."""
    return registry.native_momentum(framework_id, default_decay(framework_id))
