"""xbn.frameworks.registry declares every framework once; every other table keyed by id agrees with it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from xbn.adapters.base import NotApplicable, require
from xbn.frameworks import registry
from xbn.scenario.loader import Layer

HEAVY = ("torch", "tensorflow", "keras", "tf_keras", "jax", "flax", "haiku", "equinox", "h5py")


def test_every_framework_has_a_family_a_profile_and_an_adapter_module():
    from xbn.profiles.facts import NUMERICS, PROFILES, SEMANTICS

    assert list(PROFILES) == list(registry.FRAMEWORK_IDS)
    for fid, info in registry.FRAMEWORKS.items():
        assert info.family in registry.FAMILIES, fid
        assert info.module.startswith(registry.FAMILIES[info.family].package + "."), fid
        assert importlib.util.find_spec(info.module) is not None, info.module
        assert info.profile.semantics in SEMANTICS, fid
        assert info.profile.numerics is None or info.profile.numerics in NUMERICS, fid


def test_port_ids_are_the_frameworks_with_a_convention_of_their_own():
    from xbn.port import notes

    assert set(registry.PORT_IDS) <= set(registry.FRAMEWORK_IDS)
    owners = tuple(fid for fid, i in registry.FRAMEWORKS.items()
                   if i.convention is not None and i.convention.id == fid)
    assert owners == registry.PORT_IDS
    assert "numpy" not in registry.PORT_IDS and "keras-jax" not in registry.PORT_IDS
    assert registry.convention_of("keras-jax") is registry.convention_of("keras")
    assert set(notes.FREEZE) == set(notes.MODE) == set(registry.PORT_IDS)
    assert set(notes.FROZEN_LAYER) <= set(registry.PORT_IDS)


def test_conventions_spell_what_the_capabilities_allow():
    for fid in registry.PORT_IDS:
        conv, caps = registry.CONVENTIONS[fid], registry.capabilities(fid)
        assert (conv.affine_kw is None) == caps.split_affine, fid
        assert (conv.center_kw is not None and conv.scale_kw is not None) == caps.split_affine
        assert bool(conv.without_running_stats) != caps.no_running_stats, fid


def test_formats_and_live_models_belong_to_families_with_port_code():
    assert {f.family for f in registry.FORMATS.values()} == {"torch", "keras", "flax",
                                                              "paddle", "mlx"}
    assert {f.id for f in registry.live_families()} == {"torch", "keras", "flax"}
    for fam in registry.FAMILIES.values():
        if fam.formats:
            io = registry.family_module(fam.id, "state_io")
            assert all(callable(getattr(io, h)) for h in ("read", "fresh", "layer_info",
                                                          "file_notes"))
            assert fam.file_framework in registry.PORT_IDS
        if fam.live:
            live = registry.family_module(fam.id, "live")
            assert all(callable(getattr(live, h)) for h in ("framework_of", "bn_layers",
                                                            "runner"))
            assert live.MODELS
            if fam.model_files:
                assert callable(live.load_model) and fam.model_files_label


def test_family_folders_and_port_hooks_import_no_framework():
    code = ("import sys\nfrom xbn.frameworks import registry\n"
            "for fam in registry.FAMILIES.values():\n"
            "    __import__(fam.package)\n"
            "    if fam.formats: registry.family_module(fam.id, 'state_io')\n"
            "    if fam.live: registry.family_module(fam.id, 'live')\n"
            "import xbn.port.auditing, xbn.port.convert, xbn.port.translation, xbn.port.loaders\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_one_momentum_conversion():
    assert registry.native_momentum("torch", 0.99) == 0.01
    assert registry.native_momentum("keras", 0.99) == 0.99
    assert registry.decay_from_native("torch", 0.1) == 0.9
    assert registry.native_momentum("torch", None) is None
    with pytest.raises(ValueError, match="no momentum convention"):
        registry.native_momentum("numpy", 0.9)


@pytest.mark.parametrize("fid, capability, layer", [
    ("torch", "split_affine", Layer(features=2, center=False)),
    ("keras", "cumulative_momentum", Layer(features=2, momentum="cumulative")),
    ("haiku", "no_running_stats", Layer(features=2, track_running_stats=False)),
])
def test_adapters_ask_the_registry_what_is_applicable(fid, capability, layer):
    with pytest.raises(NotApplicable, match="why"):
        require(fid, layer, capability, "why")
    require("numpy", layer, capability, "why")  # the reference can express everything
    require("a-plugin", layer, capability, "why")  # unregistered ids declare no limits
    require(fid, Layer(features=2), capability, "why")  # a layer that does not need it
