"""Flax variables: ``.msgpack`` (``flax.serialization``) or ``.npz`` with ``/``-joined keys.

The ``state_io`` hooks of ``xbn.port.formats`` for the flax family (formats ``flax-msgpack``
and ``flax-npz`` in ``xbn.frameworks.registry``).

Two layouts are recognised. Linen: ``{"params": {path: {scale, bias}}, "batch_stats":
{path: {mean, var}}}`` (flax/linen/normalization.py). NNX pure state: ``{path: {scale, bias,
mean, var}}`` (flax/nnx/nn/normalization.py), leaves possibly wrapped as ``{"value": array}``.
Flax stores collections as sorted dicts, so layer order is the natural sort of paths
(``BatchNorm_10`` after ``BatchNorm_2``); explicitly named layers may need ``--map``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from ...profiles.facts import default_decay, default_epsilon
from ..layer_info import LayerInfo, file_layer_info
from ..port_errors import PortError
from ..state_io import BNLayer, Bundle, natural_key

PARAM_LEAVES = {"scale": "gamma", "bias": "beta"}
STAT_LEAVES = {"mean": "mean", "var": "var"}
ROLE_LEAF = {"gamma": ("params", "scale"), "beta": ("params", "bias"),
             "mean": ("batch_stats", "mean"), "var": ("batch_stats", "var")}


def _leaf(node):
    """An array, or a ``{"value": array}`` wrapper of one (NNX state); else None."""
    if isinstance(node, np.ndarray | np.generic):
        return np.asarray(node), ()
    if isinstance(node, dict) and set(node) == {"value"} and isinstance(node["value"], np.ndarray):
        return node["value"], ("value",)
    return None


def load_tree(path: Path) -> dict:
    if path.suffix == ".npz":
        return _load_npz(path)
    try:
        from flax import serialization
    except ImportError:
        raise PortError("reading .msgpack needs flax: pip install 'xbn[jax]'") from None
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as exc:  # msgpack raises ValueError, ExtraData, FormatError, ...
        raise PortError(f"{path}: not a readable Flax msgpack file "
                        f"({type(exc).__name__}: {str(exc)[:160]})") from None
    if not isinstance(tree, dict):
        raise PortError(f"{path}: holds a {type(tree).__name__}, not a dict of variables")
    return tree


def _load_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise PortError(f"{path}: not a readable .npz file ({type(exc).__name__}: "
                        f"{str(exc)[:160]})") from None
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        parts = key.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PortError(f"{path}: key {key!r} nests under an array")
        node[parts[-1]] = value
    return tree


def _walk(tree: dict, prefix: tuple = ()):
    """(path, dict) for every dict in the tree."""
    yield prefix, tree
    for key, node in tree.items():
        if isinstance(node, dict) and _leaf(node) is None:
            yield from _walk(node, (*prefix, key))


def _leaves(tree: dict, prefix: tuple = ()):
    for key, node in tree.items():
        found = _leaf(node)
        if found is not None:
            yield (*prefix, key, *found[1]), found[0]
        elif isinstance(node, dict):
            yield from _leaves(node, (*prefix, key))


def get_path(tree: dict, path: tuple):
    node = tree
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(tree: dict, path: tuple, value) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def bn_layers(tree: dict) -> list[BNLayer]:
    layers = []
    if isinstance(tree.get("batch_stats"), dict):  # linen
        params = tree.get("params") if isinstance(tree.get("params"), dict) else {}
        for path, node in _walk(tree["batch_stats"]):
            if not {"mean", "var"} <= set(node):
                continue
            layer = BNLayer("/".join(path))
            for leaf, role in STAT_LEAVES.items():
                _put(layer, role, ("batch_stats", *path, leaf), node[leaf])
            pnode = get_path(params, path)
            for leaf, role in PARAM_LEAVES.items():
                if isinstance(pnode, dict) and leaf in pnode:
                    _put(layer, role, ("params", *path, leaf), pnode[leaf])
            layers.append(layer)
    else:  # NNX pure state: everything of a layer in one dict
        for path, node in _walk(tree):
            if not {"mean", "var"} <= set(node):
                continue
            layer = BNLayer("/".join(path))
            for leaf, role in {**STAT_LEAVES, **PARAM_LEAVES}.items():
                if leaf in node:
                    _put(layer, role, (*path, leaf), node[leaf])
            layers.append(layer)
    return sorted(layers, key=lambda layer: natural_key(layer.name))


def _put(layer: BNLayer, role: str, path: tuple, node) -> None:
    found = _leaf(node)
    if found is None:
        raise PortError(f"BN layer {layer.name}: {'/'.join(map(str, path))} is not an array")
    layer.slots[role] = (*path, *found[1])
    layer.values[role] = np.asarray(found[0])


def read(path: Path, fmt: str) -> Bundle:
    tree = load_tree(path)
    layers = bn_layers(tree)
    used = {loc for layer in layers for loc in layer.slots.values()}
    others = {"/".join(map(str, p)): tuple(np.shape(v)) for p, v in _leaves(tree) if p not in used}
    return Bundle(fmt, path, layers, others, [], FlaxStore(tree), "natural")


class FlaxStore:
    """The variables tree; locations are key paths (tuples)."""

    holds_other_tensors = True

    def __init__(self, tree: dict | None = None):
        self.tree = tree if tree is not None else {}

    def locate(self, key: str) -> tuple:
        return tuple(key.split("/"))

    def get(self, location):
        value = get_path(self.tree, location)
        return None if value is None else np.asarray(value)

    def set(self, location, value) -> None:
        set_path(self.tree, location, np.asarray(value))

    def to_bytes(self, path: Path) -> bytes:
        if path.suffix == ".npz":
            buf = io.BytesIO()
            flat = {"/".join(map(str, p)): v for p, v in _leaves(self.tree)}
            np.savez(buf, **flat)
            return buf.getvalue()
        from flax import serialization

        return serialization.msgpack_serialize(self.tree)


def fresh(layers: list[BNLayer], fmt: str, notes: list[str]) -> Bundle:
    """Linen layout: ``params/<path>/{scale,bias}`` and ``batch_stats/<path>/{mean,var}``."""
    out = []
    for src in layers:
        path = tuple(p for p in src.name.replace(".", "/").split("/") if p)
        layer = BNLayer("/".join(path))
        for role in src.values:
            collection, leaf = ROLE_LEAF[role]
            layer.slots[role] = (collection, *path, leaf)
        out.append(layer)
    return Bundle(fmt, None, out, {}, notes, FlaxStore())


def layer_info(layer: BNLayer, framework: str) -> LayerInfo:
    return file_layer_info(layer, framework, "BatchNorm")


def file_notes(framework: str) -> list[str]:
    return ["Flax variables store no momentum or epsilon (flax defaults momentum="
            f"{default_decay(framework)!r}, epsilon={default_epsilon(framework)!r})"]
