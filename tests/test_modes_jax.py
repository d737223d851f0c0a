"""The JAX family's execution modes (``flax+eager``, ``haiku+jit``, ...; issue 23).

Each adapter under each mode must run the program its users write: the expected values come
from the framework driven by hand here (un-jitted, or under ``jax.jit``/``nnx.jit``/
``eqx.filter_jit``), never from xbn, and are compared bit for bit (NaN where NaN). The input is
the one-pass-variance input of google/flax#1491 (a mean of 1e4: E[x^2] - E[x]^2 cancels in
float32), where eager and jitted programs round differently: eager Haiku 0.0.17 gives negative
variances (NaN outputs) in channels where XLA's fused program (the square of the mean contracted
into an FMA) gives finite wrong values.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.frameworks import require_framework
from xbn.frameworks import modes
from xbn.frameworks.registry import load_adapter
from xbn.scenario.loader import load

# flax#1491's symptom: normal(1e4, 1) in float32, NHWC, 5 channels: the input of the upstream
# case tests/upstream/cases/flax-large-mean.toml (flax's own `x += 1e4` tests, restated)
CASE = Path(__file__).parent / "upstream" / "cases" / "flax-large-mean.toml"
X = np.asarray(load(CASE).inputs["x"], np.float32)
MOMENTUM, EPS = 0.9, 1e-5


def _same_bits(got, want) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True), np.nanmax(np.abs(got - want))


def _layer(features: int = 5, layout: str = "NHWC"):
    from xbn.scenario.loader import parse

    return parse({"schema": 1, "name": "t", "layer": {"features": features, "layout": layout,
                                                       "momentum": MOMENTUM, "epsilon": EPS},
                  "inputs": {"x": X.tolist()},
                  "steps": [{"op": "call", "input": "x", "training": True}]}).layer


def _adapter(fid: str):
    adapter = load_adapter(fid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter.build(_layer())
    return adapter


# ---------------------------------------------------------------- the declarations

@pytest.mark.parametrize("base, module", [("flax", "xbn.adapters.flax.adapter_linen"),
                                          ("flax-nnx", "xbn.adapters.flax.adapter_nnx"),
                                          ("haiku", "xbn.adapters.haiku.adapter"),
                                          ("equinox", "xbn.adapters.equinox.adapter")])
def test_plain_ids_run_what_modes_declares(base, module):
    """Each adapter's PLAIN_JIT (what it jits for the plain id) says what modes.PLAIN says,
    and ``same_as`` names the mode the plain id equals only where every op agrees."""
    require_framework(base)
    import importlib

    plain = importlib.import_module(module).PLAIN_JIT
    for op in modes.OPS:
        declared = modes.op_runs(base, None, op)
        assert ("eager" in declared) == (not plain[op]), (base, op, declared)
        assert "un-jitted" in modes.op_runs(base, "eager", op)
        assert "jit" in modes.op_runs(base, "jit", op).replace("un-jitted", "")
    same = modes.plain_of(base).same_as
    assert same == ("jit" if all(plain.values()) else None if any(plain.values()) else "eager")


def test_mode_note_names_every_op():
    require_framework("haiku")
    notes = _adapter("haiku+eager").notes
    assert "haiku+eager runs call, predict, fit, grad eager (op by op, un-jitted)" in notes
    assert "equinox (plain id) runs call, predict, fit under eqx.filter_jit; grad eager (op by op, " \
           "un-jitted)" in _adapter("equinox").notes


# ---------------------------------------------------------------- the programs, by hand

def _haiku_by_hand(jit: bool):
    import haiku as hk
    import jax
    import jax.numpy as jnp

    def forward(x, is_training):
        return hk.BatchNorm(True, True, MOMENTUM, eps=EPS)(x, is_training)

    fn = hk.transform_with_state(forward)
    params, state = fn.init(None, jnp.zeros((1, 1, 1, 5)), is_training=True)
    apply = jax.jit(fn.apply, static_argnames=("is_training",)) if jit else fn.apply
    y, state = apply(params, state, None, jnp.asarray(X), is_training=True)
    return np.asarray(y), np.asarray(state["batch_norm/~/var_ema"]["average"]).reshape(-1)


@pytest.mark.parametrize("fid, jit", [("haiku+eager", False), ("haiku+jit", True),
                                      ("haiku", True)])
def test_haiku_modes_run_the_users_program(fid, jit):
    require_framework("haiku")
    want_y, want_var = _haiku_by_hand(jit)
    adapter = _adapter(fid)
    _same_bits(adapter.call(X, True), want_y)
    _same_bits(adapter.state()["moving_variance"], want_var)


def test_haiku_eager_shows_the_nan_that_jit_hides():
    """flax#1491's symptom on Haiku (no clamp of E[x^2] - E[x]^2): op by op, some channel's
    float32 variance is negative and rsqrt(var + eps) is NaN; the jitted program gives the same
    channel a finite (wrong) variance. Both from Haiku by hand; xbn shows each."""
    require_framework("haiku")
    eager_y, eager_var = _haiku_by_hand(False)
    jit_y, jit_var = _haiku_by_hand(True)
    eager_nan = np.isnan(eager_y).any(axis=(0, 1, 2))
    jit_nan = np.isnan(jit_y).any(axis=(0, 1, 2))
    hidden = eager_nan & ~jit_nan
    assert hidden.any(), (eager_var, jit_var)
    assert (eager_var[hidden] < 0).all() and (jit_var[hidden] > 0).all()
    y = _adapter("haiku+eager").call(X, True)
    assert np.isnan(y).any(axis=(0, 1, 2))[hidden].all()


def _flax_by_hand(jit: bool):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    bn = nn.BatchNorm(axis=-1, momentum=MOMENTUM, epsilon=EPS)
    variables = bn.init(jax.random.key(0), jnp.zeros((1, 1, 1, 5)), use_running_average=True)

    def apply(variables, x):
        return bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])

    y, updates = (jax.jit(apply) if jit else apply)(variables, jnp.asarray(X))
    return np.asarray(y), np.asarray(updates["batch_stats"]["var"])


def _nnx_by_hand(jit: bool):
    import jax.numpy as jnp
    from flax import nnx

    bn = nnx.BatchNorm(5, momentum=MOMENTUM, epsilon=EPS, rngs=nnx.Rngs(0))

    def forward(m, x):
        return m(x, use_running_average=False)

    y = (nnx.jit(forward) if jit else forward)(bn, jnp.asarray(X))
    return np.asarray(y), np.asarray(bn.var[...])


def _equinox_by_hand(jit: bool):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
            5, axis_name="batch", eps=EPS, momentum=MOMENTUM)

    def forward(model, state, x):
        return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)

    x = jnp.asarray(np.moveaxis(X, -1, 1))  # Equinox: channels first per example
    y, state = (eqx.filter_jit(forward) if jit else forward)(model, state, x)
    return np.moveaxis(np.asarray(y), 1, -1), np.asarray(state.get(model.ema_state_index)[1])


@pytest.mark.parametrize("fid, by_hand, jit", [
    ("flax+eager", _flax_by_hand, False), ("flax+jit", _flax_by_hand, True),
    ("flax", _flax_by_hand, False),
    ("flax-nnx+eager", _nnx_by_hand, False), ("flax-nnx+jit", _nnx_by_hand, True),
    ("equinox+eager", _equinox_by_hand, False), ("equinox+jit", _equinox_by_hand, True),
    ("equinox", _equinox_by_hand, True)])
def test_modes_run_the_users_program(fid, by_hand, jit):
    require_framework(fid.split("+")[0])
    want_y, want_var = by_hand(jit)
    adapter = _adapter(fid)
    _same_bits(adapter.call(X, True), want_y)
    _same_bits(adapter.state()["moving_variance"], want_var)


def test_flax_jit_and_eager_differ_on_the_one_pass_input():
    """Not a claim xbn makes up: the two programs flax's users run differ here (so the
    modes are worth telling apart); the variance under jit is not a multiple of the float32
    spacing at 1e8 (8), the square of the mean being contracted into an FMA by XLA."""
    require_framework("flax")
    (_, eager_var), (_, jit_var) = _flax_by_hand(False), _flax_by_hand(True)
    assert not np.array_equal(eager_var, jit_var)
    batch_var_jit = (jit_var - MOMENTUM) / (1 - MOMENTUM)  # the update from var 1
    assert not np.allclose(np.round(batch_var_jit / 8) * 8, batch_var_jit, atol=1e-2)


# ---------------------------------------------------------------- set on a jitted function

@pytest.mark.parametrize("fid", ["flax+jit", "flax-nnx+jit", "haiku+jit", "equinox+jit"])
def test_set_epsilon_retraces_under_jit(fid):
    """A new epsilon on a jitted layer is a new trace (a new module/transform/static field),
    never a stale constant: after `set`, inference equals a layer built with that epsilon."""
    require_framework(fid.split("+")[0])
    x = np.asarray(np.random.RandomState(0).normal(0, 1, (2, 3, 4, 5)), np.float32)
    adapter = _adapter(fid)
    adapter.set_weights({"moving_mean": np.zeros(5, np.float32),
                         "moving_variance": np.full(5, 1e-3, np.float32)})
    before = np.asarray(adapter.predict(x), np.float64)
    adapter.set_hyper(None, 1e-1)
    after = np.asarray(adapter.predict(x), np.float64)
    np.testing.assert_allclose(after, x / np.sqrt(1e-3 + 1e-1), rtol=1e-5)
    np.testing.assert_allclose(before, x / np.sqrt(1e-3 + EPS), rtol=1e-5)


# ---------------------------------------------------------------- repro scripts

@pytest.mark.parametrize("fid, jitted", [("haiku+eager", False), ("haiku", True),
                                         ("haiku+jit", True), ("flax+jit", True),
                                         ("flax+eager", False), ("flax-nnx+jit", True),
                                         ("flax-nnx", False)])
def test_repro_scripts_know_modes(fid, jitted):
    from xbn.fuzz.repro import template_module

    source = template_module(fid).template(fid, _layer(), X.shape)
    assert (("jax.jit(" in source) or ("nnx.jit(" in source)) == jitted


@pytest.mark.slow  # runs Haiku twice in fresh processes (~15 s)
@pytest.mark.parametrize("fid, nan_channels", [("haiku+eager", 3), ("haiku+jit", 1)])
def test_repro_script_reproduces_the_mode(tmp_path, fid, nan_channels):
    import subprocess
    import sys

    from xbn.fuzz.repro import script

    case = load(CASE)
    path = tmp_path / "repro.py"
    path.write_text(script(case, fid))
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    line = next(ln for ln in out.splitlines() if "moving_variance" in ln)
    observed = line.split("observed [")[1].split("]")[0].split()
    assert sum(float(v) < 0 for v in observed) == nan_channels, line
