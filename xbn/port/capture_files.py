"""Per-layer capture snapshots: one model's BN captures kept in a file, for upgrades.

``xbn verify A B --per-layer --save-captures old.npz`` writes A's captures (both passes) under
the framework version installed now; after an upgrade, ``xbn verify old.npz A --per-layer``
compares the stored captures with a fresh run of the same model: the first BN whose output
moved between the two versions, with the same input, is named. A plain ``.npz`` (numpy's
format, no pickle): arrays under ``MODE/INDEX/FIELD``, and one JSON string ``meta`` with the
layer names, channel axes, configurations and the versions that made it.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..adapters.captures import Capture
from ..adapters.layer_info import LayerInfo
from ..adapters.port_errors import PortError

FORMAT = "xbn-per-layer-captures"
INFO_KEYS = [f.name for f in fields(LayerInfo) if f.name not in ("flags", "target_code")]


def is_capture_file(spec: str) -> bool:
    return spec.lower().endswith(".npz") and not spec.startswith("py:")


def save(path: str | Path, framework: str, captures: dict[str, list[Capture]],
         inputs: np.ndarray) -> None:
    """Write both passes' captures (``captures``: {"eval": [...], "train": [...]})."""
    from importlib import metadata

    from ..frameworks.registry import FRAMEWORKS

    arrays: dict[str, np.ndarray] = {"inputs": np.asarray(inputs)}
    layers: dict[str, list] = {}
    for mode, caps in captures.items():
        layers[mode] = []
        for i, c in enumerate(caps):
            arrays[f"{mode}/{i}/input"], arrays[f"{mode}/{i}/output"] = c.input, c.output
            for group in ("before", "after"):
                for key, v in getattr(c, group).items():
                    if v is not None:
                        arrays[f"{mode}/{i}/{group}/{key}"] = v
            info = None if c.info is None else {k: getattr(c.info, k) for k in INFO_KEYS}
            layers[mode].append({"name": c.name, "axis": c.axis, "info": info})
    versions = {}
    for dist in FRAMEWORKS[framework].distributions if framework in FRAMEWORKS else ():
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    meta = {"format": FORMAT, "framework": framework, "versions": versions, "layers": layers}
    arrays["meta"] = np.array(json.dumps(meta, default=list))
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load(path: str | Path) -> dict:
    """{"framework", "versions", "inputs", "eval": [Capture], "train": [Capture]}; a
    PortError names the file when it is not a capture snapshot."""
    try:
        data = np.load(path, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        raise PortError(f"{path}: not an xbn per-layer capture file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise PortError(f"{path}: not an xbn per-layer capture file (format "
                        f"{meta.get('format')!r})")
    out = {"framework": meta["framework"], "versions": meta.get("versions", {}),
           "inputs": data["inputs"]}
    for mode, layers in meta["layers"].items():
        caps = []
        for i, layer in enumerate(layers):
            prefix = f"{mode}/{i}/"
            group = {g: {k.rsplit("/", 1)[1]: data[k] for k in data.files
                         if k.startswith(prefix + g + "/")} for g in ("before", "after")}
            info = LayerInfo(**layer["info"]) if layer.get("info") else None
            caps.append(Capture(layer["name"], layer["axis"], data[prefix + "input"],
                                data[prefix + "output"], group["before"], group["after"], info))
        out[mode] = caps
    return out
