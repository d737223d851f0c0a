"""What a moded id (``torch+compile``, ``keras+xla``, ``haiku+eager``) does differently from its
framework's profile: the facts of the *compiled* (or un-jitted) program, each with its source.

A compiled BatchNorm is another float program (inductor fuses the normalization and picks its
own reductions; XLA rewrites ``FusedBatchNormV3`` and folds constants), so the switches that
describe float32 rounding (``variance_algorithm``, ``update_form``, ``inference_form``) and,
rarely, semantic ones can differ from the eager profile. ``facts.PROFILES[moded_id]`` is the
base id's profile (``facts.PROFILES[base_id]``) overridden by ``MODE_FACTS[run_id]``: a moded id
without an entry (or a switch not listed) keeps its framework's fact, which is then a claim
that the mode does not change it.

Layout, one entry per run id (the id without ``@DEVICE``; ``torch+compile@cuda`` reads
``torch+compile``): ``switch -> (value, source)``. Plain tuples, not ``facts.Fact``, so that
``facts`` can import this module (no loop). A source names the installed file and lines, or the
experiment that learned the value from the mode's own bits (scenario, what was compared, the
count of bit-exact values). Entries are owned per family: torch and keras here at the top; the
JAX family (flax, flax-nnx, haiku, equinox) below its marker. Only list a switch whose value
differs from the base profile, or whose source must name the compiled program.
"""

from __future__ import annotations

Facts = dict[str, tuple[object, str]]

# -- torch, keras ----------------------------------------------------------------------------

_INDUCTOR = ("experiment (torch 2.13 CPU, torch.compile(BatchNorm1d(3, momentum=0.1, "
             "eps=1e-3)), 30 batches 16x3 of N(U(-50, 50), U(0.1, 5)), random weight and bias, "
             "benchmarks/torch_compile_bits.py): ")

MODE_FACTS: dict[str, Facts] = {
    "torch+compile": {
        "variance_algorithm": ("two_pass", _INDUCTOR + "batch statistics as the two-pass mean "
                               "of squared deviations (inductor's var_mean reduction; torch/_decomp/"
                               "decompositions.py native_batch_norm_helper); running_var fed "
                               "var * float32(n/(n-1)): 180/180 running values bit-exact"),
        "update_form": ("weighted_sum", _INDUCTOR + "running = (1-m)*old + m*batch rounded per "
                        "product, no FMA contraction (eager CPU fuses it: update_form=fma): "
                        "180/180 bit-exact (a check run while writing this; not kept in the benchmark)"),
        "inference_form": ("centered", _INDUCTOR + "training and eval outputs are "
                           "((x - mean) * (1/sqrt(var + eps))) * weight + bias, each op rounded, "
                           "no FMA and nothing folded (eager CPU: folded_fma): 1440/1440 bit-exact "
                           "in train and eval; the reference's centered form multiplies "
                           "weight into the inverse first, so it is bit-exact where weight = 1 "
                           "(every built-in scenario without set weights) and within one rounding "
                           "otherwise"),
    },
    "keras+xla": {
        "inference_form": ("folded_fma", "experiment (keras 3.15.1, TensorFlow 2.21 CPU, "
                           "`xbn run large-mean --frameworks numpy,keras,keras+xla`): under "
                           "tf.function(jit_compile=True) XLA contracts x*inv + (beta - mean*inv) "
                           "into FMAs, bit-exact with the reference's folded_fma (32/32 outputs); "
                           "the eager call is folded without FMA"),
    },
}

# -- JAX family (flax, flax-nnx, haiku, equinox): entries added below ------------------------

# Learned from the modes' own bits (tests/test_modes_jax.py drives each program by hand on
# tests/upstream/cases/flax-large-mean.toml; /tmp/jaxmodes_pairs.py-style comparisons of
# ID+eager against ID+jit over the built-in scenarios): what differs is rounding only, in two
# places the reference's switches do not name, so rows there are explained by the interval
# bounds (xbn.reference.numerics), not bit-exact.
_XLA_FAST = ("experiment (jax 0.10.2 CPU, flax 0.12.8, dm-haiku 0.0.17; tests/test_modes_jax.py "
             "on tests/upstream/cases/flax-large-mean.toml): under jit XLA contracts "
             "E[x^2] - E[x]*E[x] into one FMA (the square of the mean is not rounded), so the "
             "one-pass variance of a mean-1e4 input is not a multiple of float32's spacing 8 at "
             "1e8 as the eager program's is; the reference rounds the square first, so such rows "
             "are explained within the cancellation bound, elsewhere bit-exact")
_EAGER_EMA = ("experiment (dm-haiku 0.0.17, jax 0.10.2 CPU, haiku+eager vs haiku+jit over the "
              "built-in scenarios): op by op, haiku/_src/moving_averages.py:123-127 rounds "
              "hidden*decay and value*(1-decay) apart (no FMA contraction outside XLA's fused "
              "program); the reference's ema=debiased under precision=native rounds it as the "
              "jitted program does (one FMA), so eager moving statistics differ from it by a few "
              "ulps and are explained within the rounding bound")

MODE_FACTS.update({
    "flax+jit": {"variance_algorithm": ("fast_clamped", _XLA_FAST)},
    "flax-nnx+jit": {"variance_algorithm": ("fast_clamped", _XLA_FAST)},
    "haiku+jit": {"variance_algorithm": ("fast", _XLA_FAST + "; the plain id haiku is this program")},
    "haiku+eager": {
        "variance_algorithm": ("fast", "haiku/_src/batch_norm.py:170-181 op by op: "
                               "E[x^2] - E[x]^2 with the square of the mean rounded and no "
                               "clamp: a negative float32 difference gives rsqrt(var + eps) = "
                               "NaN (flax#1491's symptom), which the jitted program's FMA can "
                               "hide or create per channel (tests/test_modes_jax.py)"),
        "update_form": ("weighted_sum", _EAGER_EMA),
    },
})

# -- export paths (torch+onnx, torch+onnx-script, torch+openvino, keras+onnx, tf-keras+onnx,
# keras+openvino): what a *training* call becomes once the layer is exported at the step
# (xbn.reference.semantics ``exported_training``). Every plain id is "framework" (PLAIN_FACTS,
# merged into each profile by xbn.profiles.facts); inference calls and predict run the exported
# graph and keep the framework's semantic switches (tests/test_export.py drives each by hand).

PLAIN_FACTS: Facts = {
    "exported_training": ("framework", "not exported: a training call runs the framework's own "
                          "training forward"),
    "trainer": ("runs", "the framework trains: fit and gradients run"),
}

_OSCRIPT = "onnxscript/function_libs/torch_lib/ops/core.py"
_TS = "torch/onnx/_internal/torchscript_exporter"
_KERAS_EXPORT = ("framework", "xbn/adapters/keras/onnx.py: Keras' exports write the inference "
                 "function only (training=False), so a training call runs in Keras as the "
                 "user's training does before exporting; a frozen layer's training call is "
                 "inference in Keras and in the graph alike")

MODE_FACTS.update({
    "torch+onnx": {"exported_training": (
        "traced_inference", "torch.onnx.export(dynamo=True) (torch 2.13, onnxscript 0.7.2): "
        "torch.export traces the train-mode forward (aten.batch_norm(training=True), torch's "
        "'Expected more than 1 value per channel' raises for a batch of one), then "
        f"{_OSCRIPT}:7337 (aten__native_batch_norm_legit_functional) and :7188 "
        "(aten_native_batch_norm) set training = False ('temporary fix ... ORT currently only "
        "supports training mode with opset version lower than 14'): one BatchNormalization "
        "without training_mode, the running-statistic updates dropped from the graph's outputs; "
        "measured: the output is the inference output, the module's buffers untouched "
        "(tests/test_export.py)")},
    "torch+onnx-script": {"exported_training": (
        "traced_update", f"torch.onnx.export(dynamo=False, training=PRESERVE): {_TS}/utils.py:"
        "898 traces with torch.jit._get_trace_graph, which runs the module's train-mode forward "
        "once (running statistics updated by torch's rule, num_batches_tracked + 1); "
        f"{_TS}/symbolic_opset14.py:107-116 writes BatchNormalization(momentum=1 - momentum, "
        "training_mode=1); ONNX Runtime's training mode normalizes with the batch statistics "
        "and updates with the population variance (onnx/backend/test/case/node/batchnorm.py "
        "batchnorm_training_mode, tests/upstream/test_onnx_batchnorm.py), written back by the "
        "adapter: the statistics move twice per training call (tests/test_export.py)")},
    "torch+openvino": {"exported_training": (
        "inference", "openvino 2026.4.1 openvino/frontend/pytorch/ts_decoder.py:129 "
        "_get_scripted_model calls pt_module.eval() before tracing and never restores it: the "
        "graph is an inference graph (the batch-of-one check never runs) and the module stays in "
        "eval mode for the calls after it (measured, tests/test_export.py)")},
    "keras+onnx": {"exported_training": _KERAS_EXPORT},
    "keras+openvino": {"exported_training": _KERAS_EXPORT},
    "tf-keras+onnx": {"exported_training": _KERAS_EXPORT},
})


def mode_facts(run: str) -> Facts:
    """The facts a run id (``ID+MODE``) overrides; {} for a plain id or a mode without any."""
    return MODE_FACTS.get(run, {})
