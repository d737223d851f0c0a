"""The id grammar ``ID+MODE[@DEVICE]`` (contract, "Additions, part two"): parsed without
importing a framework, unknown modes a usage error naming the id's modes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from xbn.cli import cli
from xbn.frameworks import registry
from xbn.frameworks.devices import base_id, mode_of, parse, run_id
from xbn.frameworks.modes import MODES, ModeError


@pytest.mark.parametrize("text, parsed", [
    ("torch", "torch"), ("torch+compile", "torch+compile"), ("torch+compile@cuda", "torch+compile@cuda"),
    ("torch+COMPILE@cpu", "torch+compile"), ("haiku+eager", "haiku+eager"), ("keras+xla", "keras+xla"),
])
def test_ids_normalize(text, parsed):
    assert parse(text) == parsed


def test_parts_of_an_id():
    assert base_id("torch+compile@cuda") == "torch"
    assert run_id("torch+compile@cuda") == "torch+compile"
    assert mode_of("torch+compile@cuda") == "compile" and mode_of("torch@cuda") is None


@pytest.mark.parametrize("text, words", [
    ("torch+jit", ["torch+compile", "torch+eager"]), ("numpy+jit", ["no execution modes"]),
    ("torch+", ["nothing after '+'"]),
])
def test_unknown_modes_name_the_modes_there_are(text, words):
    with pytest.raises(ModeError) as err:
        parse(text)
    assert all(w in str(err.value) for w in words)


def test_every_contract_mode_is_declared():
    contract = ["torch+eager", "torch+compile", "flax+eager", "flax+jit", "flax-nnx+eager",
                "flax-nnx+jit", "haiku+eager", "haiku+jit", "equinox+eager", "equinox+jit",
                "keras+function", "keras+xla", "tf-keras+xla", "torch+onnx", "keras+onnx",
                "tf-keras+onnx", "torch+openvino", "keras+openvino"]
    for fid in contract:
        assert parse(fid) == fid
    assert set(registry.FRAMEWORK_IDS) <= set(MODES)


def test_a_mode_needs_its_own_distributions():
    assert "onnxruntime" in registry.requires("torch+onnx")
    assert registry.requires("torch+compile") == registry.requires("torch")
    assert registry.extra_of("torch+onnx") == "onnx"


def test_unknown_mode_on_the_command_line_is_exit_2():
    r = CliRunner().invoke(cli, ["run", "seed-keras", "-f", "numpy,torch+jit"])
    assert r.exit_code == 2 and "torch+compile" in r.output
