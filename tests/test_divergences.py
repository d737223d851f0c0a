"""xbn/profiles/divergences.toml is checked data: every entry names its framework, the quantities it
covers, a reason and a link, and covers exactly the rows it names (the conformance suite holds
each named quantity to still departing from the profile)."""

from __future__ import annotations

import pytest

from xbn.profiles.divergences import known_divergence, known_divergences, parse_divergences

GOOD = """
[[divergence]]
framework = "keras-jax"
scenario = "seed-*"
op = "predict"
quantity = "output"
reason = "r"
link = "l"
"""


def test_every_packaged_entry_names_its_quantities_reason_and_link():
    entries = known_divergences()
    assert entries
    for d in entries:
        assert d["quantity"] and isinstance(d["quantity"], tuple), d
        assert d["reason"].strip() and d["link"].startswith("https://"), d


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace('quantity = "output"\n', ""), "divergence[0]: quantity is required"),
    (lambda t: t.replace('link = "l"', 'link = ""'), "divergence[0]: link is required"),
    (lambda t: t.replace('op = "predict"', 'ops = "predict"'), "divergence[0].ops: unknown key"),
    (lambda t: t.replace('"keras-jax"', '"kerasjax"'), "unknown framework 'kerasjax'"),
    (lambda t: t.replace('"output"', '"outputs"'), "divergence[0].quantity: 'outputs' is not one"),
    (lambda t: t.replace('"output"', "[]"), "divergence[0]: quantity is required"),
    (lambda t: t.replace('"predict"', '"evaluate"'), "divergence[0].op: 'evaluate' is not one"),
])
def test_a_malformed_entry_is_refused_naming_entry_and_key(change, message):
    assert parse_divergences(GOOD)[0]["op"] == ("predict",)
    with pytest.raises(ValueError) as err:
        parse_divergences(change(GOOD))
    assert str(err.value).startswith("xbn/profiles/divergences.toml: divergence[0]")
    assert message in str(err.value)


def test_an_entry_covers_only_the_rows_it_names():
    # Equinox's mixed-precision failure: the output and the statistics, not gamma and beta,
    # and not where the statistics are 16-bit too (dtype-float16 trains)
    assert known_divergence("equinox", "mixed-float16", "float16", "moving_mean")
    assert known_divergence("equinox", "mixed-float16", "float16", "output", "call")
    assert not known_divergence("equinox", "mixed-float16", "float16", "gamma")
    assert not known_divergence("equinox", "dtype-float16", "float16", "output")
    # keras-jax's jitted predict in seed-keras: predict rows only, and only when the op is known
    assert known_divergence("keras-jax", "seed-keras", "float32", "output", "predict")
    assert not known_divergence("keras-jax", "seed-keras", "float32", "output", "call")
    assert not known_divergence("keras-jax", "seed-keras", "float32", "output")
    assert not known_divergence("keras-jax", "predict-vs-call", "float32", "output", "predict")
    assert not known_divergence("keras", "seed-keras", "float32", "output", "predict")
