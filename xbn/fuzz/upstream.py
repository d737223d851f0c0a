"""Where each framework takes bug reports, and what its public tracker already holds about a
root cause (``xbn.fuzz.cause``): a finding's summary ends with this, so that nobody files a
duplicate. Searched by hand; a cause missing here says so and names the tracker to search.
"""

from __future__ import annotations

from dataclasses import dataclass

TRACKERS = {
    "torch": "https://github.com/pytorch/pytorch/issues",
    "keras": "https://github.com/keras-team/keras/issues",
    "keras-jax": "https://github.com/keras-team/keras/issues",
    "keras-torch": "https://github.com/keras-team/keras/issues",
    "tf-keras": "https://github.com/keras-team/tf-keras/issues",
    "flax": "https://github.com/google/flax/issues",
    "flax-nnx": "https://github.com/google/flax/issues",
    "haiku": "https://github.com/google-deepmind/dm-haiku/issues",
    "equinox": "https://github.com/patrick-kidger/equinox/issues",
    "keras-numpy": "https://github.com/keras-team/keras/issues",
    "keras-openvino": "https://github.com/keras-team/keras/issues",
    "paddle": "https://github.com/PaddlePaddle/Paddle/issues",
    "mlx": "https://github.com/ml-explore/mlx/issues",
}


@dataclass(frozen=True)
class Status:
    """``found``: an existing report of this very cause (a link), or None; ``text``: what the
    search found, related reports included; ``searched``: when."""

    found: str | None
    text: str
    searched: str


_CLAMP = ("flax/linen/normalization.py _compute_stats clamps the same formula, "
          "var = jnp.maximum(0.0, mu2 - _abs_sq(mu)) (the cancellation was reported for Flax "
          "in https://github.com/google/flax/issues/1491)")

KNOWN: dict[tuple[str, str], Status] = {
    ("keras-torch", "one-pass-variance-not-clamped"): Status(
        None,
        "none found for the torch backend. Related: https://github.com/keras-team/keras/pull/18795 "
        "(merged 2023-11, \"Fix numerical issues in TF and JAX `moments` implementation\": "
        "\"without this fix, it won't guarantee that variance >= 0 ..., which causes issues "
        "when used with BatchNorm\") fixed the TensorFlow and JAX backends only; "
        "keras/src/backend/torch/nn.py `moments` still computes mean(square(x)) - "
        "square(mean) without a clamp in keras 3.15.1",
        "2026-12"),
    ("keras-torch", "float64-computed-in-float32"): Status(
        "https://github.com/keras-team/keras/issues/23704",
        "open, \"torch: float64 `Dense` returns float32 since #23225, and float64 handling on "
        "torch is inconsistent\": `keras.backend.result_type` maps float64 to float32 on every "
        "backend but TensorFlow; BatchNormalization computes in result_type(inputs.dtype, "
        "\"float32\") (keras/src/layers/normalization/batch_normalization.py), the same "
        "mechanism in another layer, not named in the issue",
        "2026-12"),
    ("keras-jax", "float64-computed-in-float32"): Status(
        None,
        "none for the JAX backend. Related: https://github.com/keras-team/keras/issues/23704 "
        "(open, the same result_type mapping of float64 to float32, reported for torch) and "
        "the review of https://github.com/keras-team/keras/pull/18482, where the maintainer "
        "calls float64 becoming float32 on JAX \"an unfortunate limitation inherited from "
        "historical reasons\" of JAX (here with jax_enable_x64 on, so not JAX's own)",
        "2026-12"),
    ("keras-numpy", "one-pass-variance-not-clamped"): Status(
        None,
        "none found for the numpy backend. Related: https://github.com/keras-team/keras/pull/18795 "
        "fixed `moments` for the TensorFlow and JAX backends only; "
        "keras/src/backend/numpy/nn.py `moments` (lines 947-951 in keras 3.15.1, commented "
        "\"faster but less numerically stable\") computes mean(square(x)) - square(mean) "
        "without a clamp, as the torch backend does",
        "2026-12"),
    ("haiku", "moving-variance-nan"): Status(
        None,
        "none found for float16 in google-deepmind/dm-haiku. What it is (checked by hand): "
        "haiku/_src/batch_norm.py takes mean(square(x)) in the input dtype, so a float16 "
        "batch with |x| above ~256 squares to inf and the variance is inf - inf = NaN, which "
        "a clamp at 0 does not repair (Flax reduces float16 in float32, "
        "force_float32_reductions=True; Keras' moments upcast float16). Related: "
        "https://github.com/google-deepmind/dm-haiku/issues/396 (closed: bfloat16 BatchNorm "
        "NaNs; the maintainer's workaround is to upcast to float32 around the BatchNorm)",
        "2026-12"),
    ("tf-keras", "float64-computed-in-float32"): Status(
        None,
        "none found in keras-team/tf-keras. The cause's name overstates it (checked by hand): "
        "a float64 layer's statistics and output are float64; only the moving-average decay, "
        "tf.convert_to_tensor(1.0 - momentum) (tf_keras/src/layers/normalization/"
        "batch_normalization.py:867-869 in 2.21.0), is a float32 tensor, cast to float64 after "
        "rounding, so each update is off by up to ~2e-8 relative (1e6 * float32(0.01) = "
        "9999.99978 where 10000 is exact): float32 precision in a float64 layer's running "
        "statistics",
        "2026-12"),
    ("haiku", "one-pass-variance-not-clamped"): Status(
        None,
        "none found in google-deepmind/dm-haiku (issues and pull requests). Related: " + _CLAMP,
        "2026-12"),
}


# what a maintainer reads: the mechanism in the framework's terms, and the usual fix
DESCRIPTIONS = {
    "one-pass-variance-not-clamped": (
        "The batch variance is computed in one pass, mean(x^2) - mean(x)^2, and not clamped "
        "at 0. When a channel's mean is large against its spread, the subtraction cancels in "
        "float arithmetic to a negative value: below -epsilon, rsqrt(var + epsilon) is NaN, and "
        "the negative value is also folded into the moving variance. The exact variance is "
        "never negative. Clamping (jnp.maximum(0.0, var), as Flax's fast variance does) or the "
        "two-pass formula mean((x - mean(x))^2) removes the NaN."),
    "float64-computed-in-float32": (
        "A layer built and called with float64 inputs and float64 variables computes its "
        "statistics and output in float32 (and casts the result back to float64), so its "
        "values carry float32 rounding, far beyond float64's on an ill-conditioned batch."),
}


def description(cause: str, fallback: str) -> str:
    """The upstream report's description of a root cause (xbn's own words when none)."""
    return DESCRIPTIONS.get(cause, fallback)


def status_text(framework: str, cause: str) -> str:
    """One line for a finding's summary: the upstream status of this framework and cause."""
    tracker = TRACKERS.get(framework, "the framework's issue tracker")
    status = KNOWN.get((framework, cause))
    if status is None:
        return f"not searched yet: search {tracker} before filing."
    head = f"existing report: {status.found}" if status.found else "no existing report"
    return f"{head} (searched {tracker}, {status.searched}): {status.text}."


KNOWN_KEYS = {"framework", "cause", "link", "note"}


def load_known(path: str) -> dict[tuple[str, str], str]:
    """``xbn fuzz --known FILE``: causes already reported upstream, (framework id, cause) ->
    link, from TOML entries ``[[known]] framework = "haiku", cause =
    "one-pass-variance-not-clamped", link = "https://..."`` (``cause``: a finding's signature,
    as its file names and ``.md`` spell it; ``note``: free text). A campaign counts their hits
    and reports only new causes. Raises ``StrictError`` (one line: file, entry, key)."""
    import tomllib

    from ..common.strict import StrictError, closest, read_text
    from ..frameworks.devices import base_id, parse
    from ..frameworks.registry import FRAMEWORK_IDS

    text = read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StrictError(path, f"not TOML: {exc}") from None
    unknown = set(data) - {"known"}
    if unknown:
        key = sorted(unknown)[0]
        raise StrictError(path, f"unknown key{closest(key, ['known'])}", key)
    entries = data.get("known", [])
    if not isinstance(entries, list):
        raise StrictError(path, "expected [[known]] entries", "known")
    out: dict[tuple[str, str], str] = {}
    for i, entry in enumerate(entries):
        where = f"known[{i}]"
        if not isinstance(entry, dict):
            raise StrictError(path, "expected a table", where)
        for key in entry:
            if key not in KNOWN_KEYS:
                raise StrictError(path, f"unknown key{closest(key, KNOWN_KEYS)}",
                                  f"{where}.{key}")
        for key in ("framework", "cause", "link"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise StrictError(path, "required, a non-empty string", f"{where}.{key}")
        try:
            fid = parse(entry["framework"])
        except ValueError as exc:
            raise StrictError(path, str(exc), f"{where}.framework") from None
        if base_id(fid) not in FRAMEWORK_IDS:
            raise StrictError(path, f"unknown framework {fid!r}", f"{where}.framework")
        out[(entry["framework"], entry["cause"])] = entry["link"]
    return out
