"""The prose of the porting notes: what to do in the target, and why.

Kept apart from the translation logic so the wording can be reviewed in one place. Each
text states the behaviour and the source that shows it (paths in the installed packages,
issue numbers where users were bitten). Tables are keyed by the framework ids of
``xbn.frameworks.registry.PORT_IDS`` (FREEZE and MODE: every one of them; FROZEN_LAYER: those whose
layers carry a trainable flag).
"""

from __future__ import annotations

FREEZE = {
    "torch": (
        "freeze: torch has no single flag. `bn.eval()` makes the layer normalize with, and stop "
        "updating, its running statistics; `bn.requires_grad_(False)` freezes weight and bias. "
        "You need both: requires_grad_(False) alone still updates running_mean/running_var in "
        "training mode (pytorch/pytorch#86590), and a later `model.train()` puts the BN layer "
        "back in training mode, so re-apply `.eval()` to frozen BN modules after every "
        "`model.train()` (for instance in an overridden `train()`)."
    ),
    "keras": (
        "freeze: `layer.trainable = False` freezes gamma/beta AND runs the layer in inference "
        "mode (moving statistics, no update) even inside `fit()` or with `training=True` "
        "(keras/src/layers/normalization/batch_normalization.py call(): `training and "
        "self.trainable`); re-`compile()` after changing it."
    ),
    "tf-keras": (
        "freeze: `layer.trainable = False` freezes gamma/beta and forces inference mode "
        "(TF 2 BatchNormalization V2, tf_keras _get_training_value); multi-backend Keras 2 and "
        "the V1 layer kept updating the statistics (keras-team/keras#4762). Re-`compile()` after "
        "changing it."
    ),
    "flax": (
        "freeze: flax has no trainable flag. Call with `use_running_average=True` (then no "
        "`mutable=['batch_stats']` is needed and nothing is updated) and keep scale/bias out of "
        "the optimizer (`optax.multi_transform` with `optax.set_to_zero()` on their paths, or "
        "`optax.masked`)."
    ),
    "flax-nnx": (
        "freeze: `bn.eval()` (sets use_running_average=True) and leave scale/bias out of the "
        "optimizer (`nnx.Optimizer(model, tx, wrt=<filter>)`); a later `model.train()` undoes "
        "`eval()` for every nested BatchNorm."
    ),
    "haiku": (
        "freeze: call with `is_training=False` and mask scale/offset in the optimizer "
        "(`optax.masked`); haiku has no trainable flag."
    ),
    "equinox": (
        "freeze: `inference=True` (or `eqx.nn.inference_mode(model)`) and keep weight/bias out "
        "of the gradient (`eqx.partition` with a filter)."
    ),
    "paddle": (
        "freeze: `bn.eval()` (running statistics, no update) and `param.stop_gradient = True` "
        "(or `trainable=False`) on weight and bias; stop_gradient alone still updates the "
        "running statistics in training mode, and a later `model.train()` undoes `eval()`."
    ),
    "mlx": (
        "freeze: `bn.freeze()` removes weight and bias from `trainable_parameters()`; the "
        "running statistics still update in training mode, so call `bn.eval()` too (a later "
        "`model.train()` undoes it)."
    ),
}

MODE = {
    "torch": (
        "mode: torch modules start in training mode; a bare call on a fresh module normalizes "
        "with batch statistics and updates the running ones. Call `model.eval()` for inference "
        "and `model.train()` to train."
    ),
    "keras": (
        "mode: a bare call is inference; `fit()` or `training=True` normalizes with batch "
        "statistics and updates the moving ones."
    ),
    "tf-keras": (
        "mode: a bare eager call is inference (learning phase 0); `fit()` or `training=True` "
        "trains."
    ),
    "flax": (
        "mode: exactly one of the constructor attribute and the call argument "
        "`use_running_average` must be set (flax.linen.module merge_param raises otherwise). "
        "In training, apply with `mutable=['batch_stats']` and keep what it returns: "
        "`y, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])`; "
        "`variables = {**variables, **updates}` (google/flax#2279). Statistics are not "
        "updated during `init`."
    ),
    "flax-nnx": (
        "mode: `use_running_average=False` (training) by default; `model.eval()` / "
        "`model.train()` switch every nested BatchNorm, and the statistics (`nnx.BatchStat`) "
        "are updated in place during training."
    ),
    "haiku": (
        "mode: `is_training` is a required call argument; the statistics live in the state of "
        "`hk.transform_with_state` and must be threaded through `apply`."
    ),
    "equinox": (
        "mode: the layer runs under `jax.vmap(..., axis_name=<axis_name>)`, its statistics are "
        "an `eqx.nn.State` threaded through every call, and `inference=True` selects the "
        "running statistics."
    ),
    "paddle": (
        "mode: Paddle layers start in training mode (paddle/nn/layer/layers.py `self.training "
        "= True`); `model.eval()` for inference, `model.train()` to train. "
        "`use_global_stats=True` uses the running statistics even in training, `False` the batch "
        "statistics even in eval (and then still updates the running ones)."
    ),
    "mlx": (
        "mode: MLX modules start in training mode (`training` is True); `model.eval()` for "
        "inference, `model.train()` to train. MLX is lazy: evaluate the statistics with the "
        "step (`mx.eval(model.state, optimizer.state)`) as its training loops do."
    ),
}

# The flag ``xbn audit`` puts on a layer found with frozen parameters (trainable=False), by the
# framework it comes from: (level, topic, text) while it is in training mode, and otherwise.
_KERAS_FROZEN = ("info", "frozen", "trainable=False: frozen parameters AND inference mode "
                 "(moving statistics, no update) even in fit()")
FROZEN_LAYER: dict[str, dict[str, tuple[str, str, str]]] = {
    "torch": {
        "training": ("warn", "frozen", "parameters frozen (requires_grad=False) but the module "
                     "is in training mode: its running statistics still update "
                     "(pytorch/pytorch#86590); call .eval() on it"),
        "otherwise": ("info", "frozen", "frozen by .eval() + requires_grad=False: a later "
                      "model.train() puts it back in training mode"),
    },
    "keras": {"training": _KERAS_FROZEN, "otherwise": _KERAS_FROZEN},
    "tf-keras": {"training": _KERAS_FROZEN, "otherwise": _KERAS_FROZEN},
}

# What a framework does for one profile switch (xbn/profiles/facts.py), in words.
SWITCH_TEXT: dict[str, dict[object, str]] = {
    "variance_update": {
        "biased": "feeds the biased batch variance (/n) into the running variance",
        "unbiased": "feeds the unbiased batch variance (/(n-1), n = elements per channel = "
                    "N x spatial) into running_var",
        "fused": "feeds the unbiased variance (/(n-1)) through its fused kernel, the default for "
                 "4-D/5-D float inputs, and the biased one for 2-D/3-D inputs",
    },
    "ema": {
        "plain": "updates the running statistics with a plain moving average from their initial "
                 "values (mean 0, variance 1)",
        "debiased": "keeps zero-debiased moving averages (average = hidden/(1-decay^t), starting "
                    "at 0): early in training its statistics differ from a plain average",
        "seeded": "(mode='ema', the default) seeds the running statistics with the first batch",
    },
    "training_normalization": {
        "batch": "normalizes training batches with the batch statistics",
        "running": "(mode='ema') normalizes training batches with the just-updated running "
                   "statistics; use mode='batch' to match torch/Keras/Flax",
    },
}


def variance_example(n: int) -> str:
    return f"n={n}: x{n / (n - 1):.5g}"


def drift_text(source: str, target: str, src_value: object, dst_value: object) -> str:
    """Running-variance note for a pair whose variance_update switches differ."""
    text = SWITCH_TEXT["variance_update"]
    return (
        f"running variance: {source} {text.get(src_value, src_value)}; {target} "
        f"{text.get(dst_value, dst_value)}. After training steps the unbiased side's running "
        f"variance is larger by up to n/(n-1) ({variance_example(32)}; "
        f"{variance_example(8 * 32 * 32)} for 8 images of 32x32), so inference outputs drift "
        f"slightly while training-mode outputs agree (both normalize with the biased batch "
        f"variance). Port trained statistics by copying them (`xbn convert`), not by retraining."
    )
