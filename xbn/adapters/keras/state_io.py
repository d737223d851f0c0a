"""Keras weights: ``.weights.h5`` (Keras 3), ``.keras`` archives, legacy tf-keras ``.h5``.

The ``state_io`` hooks of ``xbn.port.formats`` for the keras family (formats ``keras-weights``
and ``keras`` in ``xbn.frameworks.registry``).

Read with h5py and zipfile only: no Keras import and no code from the file is executed (a
``.keras`` archive's ``config.json`` is parsed as JSON). Layout facts, checked against
keras/src/saving/saving_lib.py (3.15):

- a layer's variables are datasets ``<path>/vars/0..n`` in creation order; for
  BatchNormalization that is gamma (if ``scale``), beta (if ``center``), moving_mean,
  moving_variance, then moving_stddev, renorm_mean, renorm_stddev when ``renorm``;
- ``<path>`` is the snake-cased class name made unique in model order
  (``layers/batch_normalization_1``), or the attribute name in a subclassed model; the ``vars``
  group's ``name`` attribute is the layer's own name, which joins it to ``config.json``.

Without a config a 3-variable layer is ambiguous (gamma or beta missing): refused with a hint.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from ..layer_info import LayerInfo, file_layer_info
from ..port_errors import PortError
from ..state_io import ROLES, BNLayer, Bundle, natural_key
from .live import BN_CLASSES, config_info

AUTO_NAME = re.compile(r"^(sync_)?batch_normalization(_\d+)?$")
LEGACY_ROLES = {"gamma": "gamma", "beta": "beta", "moving_mean": "mean",
                "moving_variance": "var"}
RENORM_EXTRA = ("moving_stddev", "renorm_mean", "renorm_stddev")
WEIGHTS_IN_ARCHIVE = "model.weights.h5"


def _h5py():
    try:
        import h5py
    except ImportError:
        raise PortError("reading Keras weights needs h5py: pip install h5py") from None
    return h5py


def open_h5(data: bytes | Path, label: str, mode: str = "r"):
    h5py = _h5py()
    try:
        return h5py.File(io.BytesIO(data) if isinstance(data, bytes) else data, mode)
    except (OSError, ValueError) as exc:
        raise PortError(f"{label}: not a readable HDF5 weights file ({str(exc)[:160]})") from None


def read_archive(path: Path) -> tuple[dict | None, bytes, list[str]]:
    """(config, weights.h5 bytes, member names) of a ``.keras`` zip, read without Keras."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if WEIGHTS_IN_ARCHIVE not in names:
                other = [n for n in names if "weights" in n]
                raise PortError(f"{path}: no {WEIGHTS_IN_ARCHIVE} in the archive"
                                + (f" (found {', '.join(other)}: sharded or npz weights are not "
                                   "supported)" if other else ""))
            config = json.loads(z.read("config.json")) if "config.json" in names else None
            return config, z.read(WEIGHTS_IN_ARCHIVE), names
    except zipfile.BadZipFile as exc:
        raise PortError(f"{path}: not a valid .keras archive (BadZipFile: {exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PortError(f"{path}: config.json is not valid JSON ({exc})") from None
    except (zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise PortError(f"{path}: corrupted .keras archive ({type(exc).__name__}: {exc})") from None


def _archive_framework(path: Path) -> str:
    """tf-keras (Keras 2) writes ``keras_version`` 2.x into metadata.json."""
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("metadata.json"))
    except (KeyError, ValueError, zipfile.BadZipFile):
        return "keras"
    return "tf-keras" if str(meta.get("keras_version", "")).startswith("2.") else "keras"


def config_bn_layers(config: dict | None) -> list[dict]:
    """BN layers of a model config in model order, depth first, with effective trainable."""
    found: list[dict] = []
    if not isinstance(config, dict):
        return found

    def walk(node: dict, trainable: bool, path: tuple[str, ...], h5: str) -> None:
        conf = node.get("config") if isinstance(node.get("config"), dict) else {}
        used: dict[str, int] = {}
        for child in conf.get("layers") or []:
            if not isinstance(child, dict):
                continue
            cconf = child.get("config") if isinstance(child.get("config"), dict) else {}
            name = cconf.get("name") or child.get("name") or "?"
            eff = trainable and bool(cconf.get("trainable", True))
            where = f"{h5}layers/{_unique(_snake(str(child.get('class_name', ''))), used)}"
            if child.get("class_name") in BN_CLASSES:
                found.append({"name": name, "class_name": child["class_name"],
                              "config": cconf, "trainable": eff, "path": "/".join((*path, name)),
                              "build_config": child.get("build_config"), "h5_path": where})
            elif isinstance(cconf.get("layers"), list):
                walk(child, eff, (*path, name), where + "/")

    top = config.get("config") if isinstance(config.get("config"), dict) else {}
    walk(config, bool(top.get("trainable", True)), (), "")
    return found


def _snake(name: str) -> str:
    """keras/src/utils/naming.py to_snake_case: how saving_lib names a layer's group."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique(name: str, used: dict[str, int]) -> str:
    """keras/src/saving/saving_lib.py _get_unique_name."""
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _var_groups(f) -> list[tuple[str, str, list]]:
    """(path, layer name, datasets in order) of every Keras 3 ``vars`` group."""
    h5py = _h5py()
    groups = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and name.split("/")[-1] == "vars" and name != "vars":
            datasets = sorted(((int(k), obj[k]) for k in obj if k.isdigit()), key=lambda t: t[0])
            attr = obj.attrs.get("name", "")
            attr = attr.decode() if isinstance(attr, bytes) else str(attr)
            groups.append((name[: -len("/vars")], attr, [d for _, d in datasets]))

    f.visititems(visit)
    return groups


def _roles_from_config(conf: dict) -> list[str]:
    roles = []
    if conf.get("scale", True):
        roles.append("gamma")
    if conf.get("center", True):
        roles.append("beta")
    return [*roles, "mean", "var"]


def _roles_without_config(path: str, name: str, datasets: list) -> list[str] | None:
    """Roles of a BN-looking group, or None when it does not look like a BN layer."""
    shapes = {tuple(d.shape) for d in datasets}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        return None
    n = len(datasets)
    auto = AUTO_NAME.match(path.split("/")[-1]) is not None
    if n == 4 or (auto and n == 7):
        return list(ROLES)
    if auto and n == 2:
        return ["mean", "var"]
    if auto and n == 3:
        raise PortError(f"BN layer {name or path} ({path}) has 3 weights: gamma or beta is absent "
                        "and a .weights.h5 does not say which; use the .keras file (it holds the "
                        "config)")
    return None


def read(path: Path, fmt: str) -> Bundle:
    notes: list[str] = []
    archive_names = None
    framework = "keras"
    if fmt == "keras":
        config, data, archive_names = read_archive(path)
        framework = _archive_framework(path)
    else:
        data, config = path.read_bytes(), None
    with open_h5(data, str(path)) as f:
        if "layer_names" in f.attrs or "model_weights" in f:
            bundle = _read_legacy(f, path, fmt)
            framework = "tf-keras"
        else:
            bundle = _read_v3(f, path, fmt, config, notes)
    bundle.framework = framework
    bundle.store = KerasStore(data, archive=path if fmt == "keras" else None,
                              members=archive_names)
    bundle.notes = notes + bundle.notes
    return bundle


def _read_v3(f, path: Path, fmt: str, config: dict | None, notes: list[str]) -> Bundle:
    groups = _var_groups(f)
    by_name: dict[str, list] = {}
    for g in groups:
        by_name.setdefault(g[1], []).append(g)
    layers: list[BNLayer] = []
    used: set[str] = set()
    bn_conf = config_bn_layers(config)
    if config is not None and bn_conf:
        by_path = {g[0]: g for g in groups}
        for entry in bn_conf:
            matches = by_name.get(entry["name"], [])
            if len(matches) != 1 and entry["h5_path"] in by_path:  # tf-keras: no name attribute
                matches = [by_path[entry["h5_path"]]]
            if len(matches) != 1:
                notes.append(f"BN layer {entry['name']}: "
                             + ("no weights in the file (never built?)" if not matches
                                else "its name is not unique in the weights file"))
                continue
            gpath, _, datasets = matches[0]
            roles = _roles_from_config(entry["config"])
            if len(datasets) < len(roles):
                raise PortError(f"BN layer {entry['name']} ({gpath}): {len(datasets)} weights in "
                                f"the file, but its config needs {len(roles)} ({', '.join(roles)})")
            layer = _layer(entry["name"], gpath, roles, datasets)
            layer.config = {**entry["config"], "trainable": entry["trainable"],
                            "class_name": entry["class_name"],
                            "build_config": entry["build_config"]}
            layers.append(layer)
            used.add(gpath)
        order = "file"
    else:
        for gpath, name, datasets in sorted(groups, key=lambda g: natural_key(g[0])):
            roles = _roles_without_config(gpath, name, datasets)
            if roles is None:
                continue
            layers.append(_layer(name or gpath, gpath, roles, datasets))
            used.add(gpath)
        order = "natural"
        if config is None:
            notes.append(f"{path.name}: no model config; BN layers found by their variables and "
                         "ordered by their paths (natural sort): hyperparameters unknown")
    others = {f"{gpath}/vars/{i}": tuple(d.shape) for gpath, _, ds in groups if gpath not in used
              for i, d in enumerate(ds)}
    return Bundle(fmt, path, layers, others, [], None, order)


def _layer(name: str, gpath: str, roles: list[str], datasets: list) -> BNLayer:
    layer = BNLayer(name, where=gpath)
    for i, role in enumerate(roles):
        layer.slots[role] = datasets[i].name.lstrip("/")
        layer.values[role] = np.asarray(datasets[i][()])
    for j in range(len(datasets) - len(roles)):
        what = RENORM_EXTRA[j] if j < len(RENORM_EXTRA) else f"vars/{len(roles) + j}"
        layer.extra[what] = "renorm state: no equivalent outside Keras, not converted"
    return layer


def _read_legacy(f, path: Path, fmt: str) -> Bundle:
    """tf-keras HDF5 (``save_weights('x.h5')`` or a whole ``.h5`` model)."""
    root = f.get("model_weights", f)
    raw = f.attrs.get("model_config")
    config = json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw is not None else None
    confs = {e["name"]: e for e in config_bn_layers(config)}
    layers: dict[str, BNLayer] = {}
    others: dict[str, tuple] = {}
    for lname in root.attrs.get("layer_names", []):
        lname = lname.decode() if isinstance(lname, bytes) else str(lname)
        group = root[lname]
        for wname in group.attrs.get("weight_names", []):
            wname = wname.decode() if isinstance(wname, bytes) else str(wname)
            ds = group[wname]
            owner, _, leaf = wname.rpartition("/")
            leaf = leaf.split(":")[0]
            role = LEGACY_ROLES.get(leaf)
            if role is None:
                others[ds.name.lstrip("/")] = tuple(ds.shape)
                continue
            layer = layers.setdefault(owner, BNLayer(owner.split("/")[-1], where=owner))
            layer.slots[role] = ds.name.lstrip("/")
            layer.values[role] = np.asarray(ds[()])
    found = []
    for layer in layers.values():
        if "mean" in layer.values and "var" in layer.values:
            if layer.name in confs:
                layer.config = {**confs[layer.name]["config"],
                                "trainable": confs[layer.name]["trainable"]}
            found.append(layer)
        else:
            others.update({loc: tuple(layer.values[r].shape) for r, loc in layer.slots.items()})
    return Bundle(fmt, path, found, others, ["legacy tf-keras HDF5 weights"], None, "file")


class KerasStore:
    """An HDF5 weights file (maybe inside a .keras zip) plus the datasets to overwrite.

    A fresh one writes only its BN layers' groups: other tensors need a ``--template``.
    """

    holds_other_tensors = False

    def __init__(self, data: bytes | None, archive: Path | None = None,
                 members: list[str] | None = None, fresh: list[BNLayer] | None = None):
        self.data = data
        self.archive = archive
        self.members = members
        self.fresh = fresh
        self.updates: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}

    def locate(self, key: str) -> str:
        return key

    def get(self, location):
        if location in self.updates:
            return self.updates[location]
        if self.data is None:
            return None
        with open_h5(self.data, "weights") as f:
            return np.asarray(f[location][()]) if location in f else None

    def set(self, location, value) -> None:
        self.updates[location] = np.asarray(value)

    def to_bytes(self, path: Path) -> bytes:
        h5 = self._fresh_bytes() if self.data is None else self._patched_bytes()
        if path.suffix != ".keras":
            return h5
        if self.archive is None:
            raise PortError("writing a .keras archive needs --template MODEL.keras (the archive "
                            "holds the model's config); write a .weights.h5 instead")
        out = io.BytesIO()
        with zipfile.ZipFile(self.archive) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                payload = h5 if info.filename == WEIGHTS_IN_ARCHIVE else src.read(info.filename)
                dst.writestr(info, payload)
        return out.getvalue()

    def _patched_bytes(self) -> bytes:
        buf = io.BytesIO(self.data)
        with _h5py().File(buf, "r+") as f:
            for location, value in self.updates.items():
                ds = f[location]
                ds[...] = value.astype(ds.dtype, copy=False)
        return buf.getvalue()

    def _fresh_bytes(self) -> bytes:
        h5py = _h5py()
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            f.create_group("vars")
            for layer in self.fresh or []:
                group = f.create_group(f"{layer.where}/vars")
                group.attrs["name"] = layer.name
                for role in ROLES:
                    if role in layer.slots:
                        group.create_dataset(layer.slots[role].rsplit("/", 1)[1],
                                             data=self.updates[layer.slots[role]])
        return buf.getvalue()


def fresh(layers: list[BNLayer], fmt: str, notes: list[str]) -> Bundle:
    """A Keras 3 weights file with one ``batch_normalization[_i]`` group per source layer."""
    if fmt == "keras":
        raise PortError("writing a .keras archive needs --template MODEL.keras (the archive holds "
                        "the model's config); write a .weights.h5 instead")
    out = []
    for i, src in enumerate(layers):
        gpath = "layers/batch_normalization" + (f"_{i}" if i else "")
        layer = BNLayer(src.name.replace("/", "_"), where=gpath)
        roles = [r for r in ROLES if r in src.values]
        for j, role in enumerate(roles):
            layer.slots[role] = f"{gpath}/vars/{j}"
        if len(roles) == 3:
            notes.append(f"{layer.name}: written with 3 variables (center or scale off); reading "
                         "it back needs the model config, so prefer --template MODEL.keras")
        out.append(layer)
    store = KerasStore(None, fresh=out)
    return Bundle(fmt, None, out, {}, notes, store)


def layer_info(layer: BNLayer, framework: str) -> LayerInfo:
    """A layer with its config (``.keras``, legacy ``.h5`` models) says everything; a bare
    ``.weights.h5`` only its tensors."""
    if layer.config is None:
        return file_layer_info(layer, framework, "BatchNormalization")
    return config_info(layer.name, framework, layer.config.get("class_name", "BatchNormalization"),
                       layer.config, trainable=layer.config.get("trainable"),
                       features=layer.features)


def file_notes(framework: str) -> list[str]:
    return []
