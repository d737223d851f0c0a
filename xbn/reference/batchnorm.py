"""BatchNorm written once, in float64: xbn's executable specification.

The default ``Semantics`` is Keras 3's. Every place where frameworks are known to disagree is
a named switch, so the reference can also reproduce any framework's documented behaviour;
the comparison searches these switches to explain a difference. Nothing here knows about a
framework.
"""

from __future__ import annotations

import numpy as np

from ..common.dtypes import round_to
from ..scenario.loader import Layer, Optimizer
from . import edges, numerics, optimizers
from . import mask as masks
from .numerics import channels_last_2d as _channels_last_2d
from .numerics import restore as _restore
from .renorm import Renorm, compose, ghost_groups, ghost_moments, group_count, group_sum
from .semantics import (  # noqa: F401 - re-exported: the reference's vocabulary
    INTERVAL_FIELDS,
    NUMERIC_SWITCH_VALUES,
    SWITCH_VALUES,
    Semantics,
)


class NoSuchOperation(Exception):
    """The semantics model a framework that lacks this op (``reset="none"``): the adapter
    reports the step as n/a, as the framework's own adapter does."""


class ReferenceBatchNorm:
    """A BatchNorm layer in float64 whose behaviour is set by ``Semantics``."""

    def __init__(self, layer: Layer, semantics: Semantics | None = None, axis: int = -1):
        self.sem = semantics or Semantics()
        self.layer = layer
        self.axis = axis
        # native: float32 arithmetic for 16-bit and float32 layers (frameworks reduce 16-bit
        # inputs in float32), float64 where the inputs or the parameters are float64
        native = self.sem.precision == "native" and "float64" not in (layer.dtype,
                                                                      layer.state_dtype)
        self.ft = np.float32 if native else np.float64  # arithmetic type
        c = layer.features
        if layer.defaults:
            self.momentum = self.sem.default_momentum  # None: cumulative
            self.epsilon = self.sem.default_epsilon
        else:
            self.momentum = None if layer.cumulative else float(layer.momentum)
            if self.momentum is not None and self.sem.momentum_convention == "torch":
                self.momentum = 1.0 - self.momentum
            self.epsilon = float(layer.epsilon)
        if self.epsilon <= 0 and self.sem.zero_epsilon == "constructor":
            raise ValueError(f"batch_norm eps must be positive during training and inference, "
                             f"got {self.epsilon} (refused at construction)")
        ft = self.ft
        self.gamma = np.ones(c, ft) if layer.scale else None
        self.beta = np.zeros(c, ft) if layer.center else None
        self.track = layer.track_running_stats
        self.moving_mean = np.zeros(c, ft) if self.track else None
        self.moving_variance = np.full(c, self.sem.initial_variance, ft) if self.track else None
        # the EMA's own accumulators: equal to the moving statistics unless debiased
        self.hidden_mean, self.hidden_variance = self.moving_mean, self.moving_variance
        # Keras' Batch Renormalization and tf-keras' ghost batches (xbn.reference.renorm)
        self.renorm = Renorm(layer.renorm, c, self.sem.initial_variance, ft) \
            if layer.renorm is not None and self.track else None
        self.virtual_batch_size = layer.virtual_batch_size
        self.num_batches = 0
        # term magnitudes (xbn.reference.numerics) of the last operation's values and the running mean
        self._terms: dict = {}
        self._mean_terms = (np.zeros(c), np.zeros(c))
        self.trainable = True
        self.module_training = True  # torch modules start in train mode
        self.optimizer: optimizers.OptimizerState | None = None
        self.traced = edges.TracedFunctions(self.sem.traced_functions)  # Keras' cached functions

    # -- mode resolution -------------------------------------------------------------
    def effective_training(self, training: bool | None) -> bool:
        bare = self.sem.bare_call
        if training is None:
            if bare == "error":
                raise TypeError("a call without the training flag is refused")
            training = self.module_training if bare.startswith("module") else False
        elif bare == "module_mode":
            self.module_training = training  # torch: train()/eval() from the call's flag
        if self.sem.frozen_means_inference and not self.trainable:
            return False
        return training

    # -- forward -----------------------------------------------------------------------
    def _batch_stats(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self, "rows", None) is not None:  # a mask's valid rows: xbn.reference.mask
            return self.rows.moments(self, x2)
        n = x2.shape[0]
        if n == 1 and self.sem.batch_of_one == "error":
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {n}")
        if self.epsilon <= 0 and self.sem.zero_epsilon == "error":
            raise ValueError(
                f"batch_norm eps must be positive during training, but got {self.epsilon}")
        algorithm = self.sem.variance_algorithm
        mean, var = numerics.moments(x2, self.ft, algorithm)
        if self.sem.mean_error or self.sem.variance_error:  # an endpoint of the error bounds
            wide = "float64" in (self.layer.dtype, self.layer.state_dtype)
            u = numerics.unit_roundoff("float64" if wide else "float32")
            mean = mean + self.sem.mean_error * numerics.mean_error_bound(x2, u)
            var = var + self.sem.variance_error * numerics.variance_error_bound(x2, algorithm, u)
        if algorithm == "fast_clamped":
            var = np.maximum(var, self.ft(0))
        return mean, var

    def _ema(self, old: np.ndarray, new: np.ndarray, m: float) -> np.ndarray:
        return numerics.ema(old, new, m, self.ft, self.sem.update_form)

    def _bessel(self) -> bool:
        rule = self.sem.variance_update
        fused = self.layer.rank in (4, 5) and self.layer.dtype != "float64" and \
            not self.layer.features_used()  # tf-keras: no fused kernel for these
        return rule == "unbiased" or (rule == "fused" and fused)

    def _update(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        if not self.track:
            return
        if edges.skips_update(n, self.sem.empty_batch):  # torch: counted, not averaged
            self.num_batches += 1
            return
        ft = self.ft
        if self._bessel():
            var = (var * ft(n / max(n - 1, 1))).astype(ft)
        self.num_batches += 1
        if self.renorm is not None:  # moving_variance derived from moving_stddev
            self.moving_mean = self.hidden_mean = self._ema(self.moving_mean, mean, self.momentum)
            self.moving_variance = self.hidden_variance = self.renorm.update(
                mean, var, self.epsilon, self.momentum, self._ema)
            return
        if self.momentum is None:  # cumulative average
            factor = 1.0 / self.num_batches
            self.moving_mean = (1 - factor) * self.moving_mean + factor * mean
            self.moving_variance = (1 - factor) * self.moving_variance + factor * var
            return
        m, t, debiased = self.momentum, self.num_batches, self.sem.ema == "debiased"
        if self.sem.ema == "seeded" and t == 1:
            self.hidden_mean, self.hidden_variance = mean, var
        elif debiased and ft is np.float32:  # haiku/_src/moving_averages.py:123-127 under XLA:
            d = ft(m)  # d, 1 - d and d**t (powf) in float32; hidden*d + value*(1 - d) is one fma
            self.hidden_mean, self.hidden_variance = (
                (h.astype(np.float64) * d + (v * (ft(1) - d)).astype(ft)).astype(ft)
                for h, v in ((self.hidden_mean, mean), (self.hidden_variance, var)))
        else:
            self.hidden_mean = self._ema(self.hidden_mean, mean, m)
            self.hidden_variance = self._ema(self.hidden_variance, var, m)
        debias = (ft(1) - ft(m) ** ft(t) if ft is np.float32 else ft(1 - m**t)) if debiased else ft(1)
        with np.errstate(divide="ignore", invalid="ignore"):  # momentum 1: nothing to debias
            self.moving_mean = (self.hidden_mean / debias).astype(self.ft)
            self.moving_variance = (self.hidden_variance / debias).astype(self.ft)

    def forward(self, x: np.ndarray, training: bool, update: bool = True) -> tuple[np.ndarray, dict]:
        """Normalize x; return output and the cache the backward pass needs."""
        x2, shape = _channels_last_2d(np.asarray(x, np.float64).astype(self.ft), self.axis)
        n = x2.shape[0]
        # weight of the batch statistics in the statistics used (1: batch, 0: running only)
        weight = 0.0
        batch_mean = np.zeros(x2.shape[1])
        groups, scale, offset, rd = None, self.gamma, self.beta, {}
        if edges.identity_batch(training, n, self.sem.batch_of_one):  # Paddle: y = x, no update
            self._terms = {}
            return _restore(x2, shape, self.axis), {"identity": True}
        if training or not self.track:
            if training and self.virtual_batch_size:  # per ghost batch; their average updates
                groups = ghost_groups(x.shape[0], n // max(x.shape[0], 1),
                                      self.virtual_batch_size, self.sem.ghost_batch_remainder)
                batch_mean, batch_var, avg_mean, avg_var = ghost_moments(
                    x2, groups, self.ft, self._batch_stats)
            else:
                batch_mean, batch_var = avg_mean, avg_var = self._batch_stats(x2)
            mean, var, weight = batch_mean, batch_var, 1.0
            if training and self.renorm is not None:  # before the renorm statistics move
                r, d = self.renorm.correction(avg_mean, avg_var, self.epsilon)
                rd = {"r": r, "d": d}
                scale, offset = compose(rd["r"], rd["d"], self.gamma, self.beta, self.ft)
            if training and update and self.track:  # fed the ghost batches' average
                self._update(avg_mean, avg_var, n)
                self._mean_terms = numerics.average_magnitude(
                    self._mean_terms, numerics.column_mean(np.abs(x2.astype(np.float64))),
                    self.momentum, self.sem.ema, self.num_batches)
                if self.sem.training_normalization == "running":
                    mean, var = self.moving_mean, self.moving_variance
                    seeded_now = self.sem.ema == "seeded" and self.num_batches == 1
                    weight = 1.0 if seeded_now or self.momentum is None else 1 - self.momentum
        else:
            mean, var = self.moving_mean, self.moving_variance
        y2 = numerics.normalize(x2, mean, var, self.epsilon, scale, offset, self.ft,
                                self.sem.inference_form)
        f64 = np.float64
        inv = 1.0 / np.sqrt(var.astype(f64) + self.epsilon)
        cache = {"centered": x2.astype(f64) - mean.astype(f64), "inv": inv, "weight": weight,
                 "deviation": x2.astype(f64) - batch_mean.astype(f64), "shape": shape,
                 "groups": groups, **rd}
        self._terms = {"forward": (cache, scale, offset)}  # for magnitudes()
        return _restore(y2, shape, self.axis), cache

    def backward(self, dy: np.ndarray, cache: dict) -> dict:
        """Analytic gradients of sum(y * dy), through the statistics where they depend on x."""
        if cache.get("identity"):  # batch_of_one = "identity": y = x
            return edges.identity_gradients(dy, self.gamma, self.beta)
        dy2, _ = _channels_last_2d(np.asarray(dy, np.float64), self.axis)
        self._terms["backward"] = dy2
        centered, inv, a = cache["centered"], cache["inv"], cache["weight"]
        groups = cache.get("groups")  # ghost batches: the sums run over each row's own
        n = group_count(dy2.shape[0], groups)  # per row: its ghost batch's rows
        if "rows" in cache:  # a mask: only the valid rows' inputs moved the statistics
            a, n = cache["rows"].weights(a)
        # renorm: r and d are constants (stop_gradient), r scales gamma, d shifts x_hat
        r, d = (np.asarray(cache[k], np.float64) if k in cache else v for k, v in
                (("r", 1.0), ("d", 0.0)))
        gamma = self.gamma if self.gamma is not None else 1.0
        dxhat = dy2 * gamma * r
        dx2 = inv * dxhat
        if np.any(a):
            with np.errstate(invalid="ignore"):  # 0 * inf for a masked infinity: selected away
                terms = (a * inv / n * group_sum(dxhat, groups),
                         a * inv**3 / n * cache["deviation"] * group_sum(dxhat * centered, groups))
            if "rows" in cache:  # none for a masked row (xbn.reference.mask)
                terms = (cache["rows"].statistics_term(t, cache["deviation"]) for t in terms)
            first, second = terms
            dx2 = dx2 - first - second
        grads = {"grad_input": _restore(dx2, cache["shape"], self.axis)}
        if self.gamma is not None:
            grads["grad_gamma"] = edges.gamma_gradient((dy2 * (centered * inv * r + d)).sum(
                axis=0), inv, dy2.shape[0], self.sem.empty_gradient)
        if self.beta is not None:
            grads["grad_beta"] = dy2.sum(axis=0)
        return grads

    # -- operations ----------------------------------------------------------------------
    def call(self, x: np.ndarray, training: bool | None, forward=None) -> np.ndarray:
        """One call; ``forward`` (default ``self.forward``) is the pass itself, so that a masked
        call (``xbn.reference.mask.call``) meets the same ``exported_training`` rule."""
        forward = forward or self.forward
        training = self.effective_training(training)
        rule = self.sem.exported_training
        if not training or rule == "framework":
            return forward(x, training)[0]
        if rule == "none":  # an inference-only backend: the adapter reports the step n/a
            raise NoSuchOperation("the modelled framework runs no training calls")
        if rule == "inference":  # the converter put the module in eval mode and left it there
            self.module_training = False
            return forward(x, False)[0]
        # the exporter's trace runs the framework's training forward: its checks raise, and
        # the TorchScript trace's forward moves the statistics by the framework's rule
        forward(x, True, update=rule == "traced_update")
        if rule == "traced_inference":  # an inference node: the statistics as they were
            return forward(x, False)[0]
        sem, self.sem = self.sem, self.sem.with_(variance_update="biased")
        try:  # ONNX's training mode: batch statistics, population variance into the update
            return forward(x, True)[0]
        finally:
            self.sem = sem

    def predict(self, x: np.ndarray) -> np.ndarray:
        edges.refuse_empty_predict(x, self.sem.empty_predict)
        with self.traced.use(self, "predict", ("epsilon",), np.shape(x)):
            return self.forward(x, False)[0]

    def refuse_training(self) -> None:
        """NoSuchOperation where the modelled framework has no trainer (``trainer = "none"``)."""
        if self.sem.trainer == "none":
            raise NoSuchOperation("the modelled framework is inference only: no fit, no gradients")

    def grad(self, x: np.ndarray, training: bool | None, weights: np.ndarray) -> dict:
        self.refuse_training()
        y, cache = self.forward(x, self.effective_training(training))
        grads = self.backward(weights, cache)
        out = {"output": y, "grad_input": grads["grad_input"]}
        for q in ("grad_gamma", "grad_beta"):
            if q not in grads:
                continue
            if self.trainable:
                out[q] = grads[q]
            else:
                out[f"{q}_reason"] = "parameters frozen (trainable=false)"
        return out

    def fit(self, x: np.ndarray, target: np.ndarray, optimizer: Optimizer, epochs: int,
            batch_size: int | None, fresh_optimizer: bool, mask: np.ndarray | None = None) -> float:
        """MSE training loop, unshuffled batches; returns the last epoch's mean loss. With a
        ``mask`` (sliced with the batches): masked statistics, and Keras' masked loss, the
        mean over the valid positions (``xbn.reference.mask.loss_weights``)."""
        self.refuse_training()
        if fresh_optimizer or self.optimizer is None:  # what xbn's Keras adapters compile at
            self.optimizer = optimizers.OptimizerState(optimizer)
            self.traced.compile()
        if self.sem.bare_call == "module_mode":
            self.module_training = True  # torch loops call model.train()
        training = self.effective_training(True)
        if self.sem.frozen_fit == "error_before" and not self._has_trainable():
            raise RuntimeError("fit with nothing trainable does not require grad: refused "
                               "before the forward pass")
        n = x.shape[0]
        size = batch_size or n
        epoch_loss = 0.0
        for _ in range(epochs):
            total, count = 0.0, 0
            for start in range(0, n, size):
                xb, tb = x[start:start + size], target[start:start + size]
                mb = None if mask is None else mask[start:start + size]
                with self.traced.use(self, "train", ("momentum", "epsilon"), xb.shape):
                    y, cache = self.forward(xb, training) if mb is None else \
                        masks.forward(self, xb, training, mb)
                if self.sem.frozen_fit == "error" and not self._has_trainable():
                    raise RuntimeError("element 0 of tensors does not require grad and does not "
                                       "have a grad_fn")
                diff = (y - tb).astype(self.ft)
                weights = 1.0 if mb is None else masks.loss_weights(mb, self.axis).astype(self.ft)
                total += float(np.mean(diff * diff * weights, dtype=self.ft)) * xb.shape[0]
                count += xb.shape[0]
                grads = self.backward(2.0 * (diff * weights).astype(np.float64) / diff.size,
                                      cache)
                if self.trainable:
                    optimizers.apply(self, grads)
            epoch_loss = total / count
        return epoch_loss

    def _has_trainable(self) -> bool:
        return self.trainable and (self.gamma is not None or self.beta is not None)

    def set_weights(self, values: dict[str, np.ndarray]) -> None:
        """Load the values given (renorm_mean, renorm_stddev, moving_stddev into the renorm
        state; each variable alone, as Keras' ``assign`` does: nothing is derived)."""
        owners = {name: self.renorm if name in Renorm.VARIABLES else self for name in values}
        missing = [name for name, owner in owners.items()
                   if owner is None or getattr(owner, name) is None]
        if missing:
            raise KeyError(missing[0])  # before anything is written
        for name, value in values.items():
            # loaded into param_dtype, where the statistics and parameters live
            setattr(owners[name], name, round_to(value, self.layer.state_dtype).astype(self.ft))
        debias = 1 - self.momentum**self.num_batches if (
            self.sem.ema == "debiased" and self.momentum is not None) else 1.0
        if self.track:
            self.hidden_mean = self.moving_mean * debias
            self.hidden_variance = self.moving_variance * debias
            moving = np.abs(self.moving_mean.astype(np.float64))
            self._mean_terms = (moving * debias, moving)

    def set_hyper(self, momentum: float | str | None, epsilon: float | None) -> None:
        """``set`` with momentum/epsilon: the next operation uses them (a Keras-convention
        momentum read as at construction; "cumulative": the average over ``num_batches``)."""
        if momentum is not None:
            m = None if momentum == "cumulative" else float(momentum)
            self.momentum = 1.0 - m if m is not None and \
                self.sem.momentum_convention == "torch" else m
        if epsilon is not None:
            self.epsilon = float(epsilon)

    def reset(self) -> None:
        """torch's ``reset_running_stats()`` (torch/nn/modules/batchnorm.py:91-97): running mean
        0, running variance back to its initial value, the batch count 0 (a cumulative
        average starts over); gamma and beta are kept. Nothing without running statistics."""
        if self.sem.reset == "none":
            raise NoSuchOperation("the modelled framework has no reset of the running statistics")
        if not self.track:
            return
        c, ft = self.layer.features, self.ft
        self.moving_mean = self.hidden_mean = np.zeros(c, ft)
        self.moving_variance = self.hidden_variance = np.full(c, self.sem.initial_variance, ft)
        self.num_batches = 0
        self._mean_terms = (np.zeros(c), np.zeros(c))
        if self.renorm is not None:
            self.renorm.reset(c)

    def magnitudes(self) -> dict[str, float | None]:
        """The largest term magnitude (``xbn.reference.numerics``) of each value the last operation
        produced, and of the running mean: the scale of their rounding errors."""
        out = numerics.step_magnitudes(self._terms.get("forward"), self._terms.get("backward"))
        if self.track:
            out["moving_mean"] = numerics.largest(self._mean_terms[1])
        return out

    def state(self) -> dict:
        renorm = self.renorm.state() if self.renorm is not None else {}
        return {"gamma": self.gamma, "beta": self.beta, "moving_mean": self.moving_mean,
                "moving_variance": self.moving_variance, **renorm}

    def batches_tracked(self) -> np.ndarray | None:
        """How many training batches updated the running statistics since the last reset
        (torch's ``num_batches_tracked``); None without running statistics."""
        return np.asarray(self.num_batches, np.int64) if self.track else None


def running_variance(batch_variances, counts, momentum: float | str,
                     variance_update: str = "biased", initial=1.0) -> np.ndarray:
    """The running variance after one training step per batch, by ``ReferenceBatchNorm``'s own
    update in float64 with a plain EMA: ``old * momentum + batch * (1 - momentum)`` (Keras
    convention: ``momentum`` is the weight of the old value; "cumulative" averages).

    ``batch_variances[i]``: step i's biased batch variance per channel (mean of squared
    deviations); ``counts[i]``: how many values per channel it came from. ``variance_update``
    is the switch of that name: "unbiased" feeds each batch variance x n/(n-1) into the
    average (torch), "biased" feeds it as it is (Keras, flax). ``initial``: the running
    variance before the first step (a scalar or one value per channel).
    """
    variances = [np.asarray(v, np.float64) for v in batch_variances]
    counts = [int(n) for n in counts]
    if len(variances) != len(counts):
        raise ValueError(f"{len(variances)} batch variances but {len(counts)} counts")
    start = np.asarray(initial, np.float64)
    shape = variances[0].shape if variances else start.shape
    layer = Layer(features=int(np.prod(shape)) if shape else 1, momentum=momentum,
                  dtype="float64")
    bn = ReferenceBatchNorm(layer, Semantics(variance_update=variance_update))
    bn.moving_variance = bn.hidden_variance = np.broadcast_to(start, shape).astype(np.float64)
    bn.moving_mean = bn.hidden_mean = np.zeros(shape)
    for var, n in zip(variances, counts, strict=True):
        bn._update(np.zeros(shape), var, n)
    return bn.moving_variance
