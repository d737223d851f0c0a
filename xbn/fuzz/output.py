"""A finding on disk: the shrunk scenario as TOML, a summary ending in an upstream-ready report
(``xbn.fuzz.summary``) and, from ``xbn.fuzz.repro``, a standalone script. Names come from the
signature (framework and root cause), one set of files per finding.

Where: ``out_dir`` never hands back a directory holding files (a user's committed findings, an
earlier campaign's) unless told to (``force``): by default the first of ``findings``,
``findings-2``, ``findings-3``, ... that is absent or empty.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

from ..scenario.loader import parse
from .campaign import Finding, minimal_document, without_step  # noqa: F401 - re-exported


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v} has no TOML spelling here")
        return repr(v)
    if isinstance(v, (int, str)):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")


def to_toml(document: dict, comment: str = "") -> str:
    """A scenario document as TOML that ``xbn run`` loads back to the same scenario."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for key in ("schema", "name", "title", "description"):
        if key in document:
            lines.append(f"{key} = {_value(document[key])}")
    lines += ["", "[layer]"] + [f"{k} = {_value(v)}" for k, v in document["layer"].items()]
    lines += ["", "[inputs]"] + [f"{k} = {_value(v)}" for k, v in document["inputs"].items()]
    for step in document["steps"]:
        lines += ["", "[[steps]]"] + [f"{k} = {_value(v)}" for k, v in step.items()]
    return "\n".join(lines) + "\n"


def slug(finding: Finding) -> str:
    """The finding's file and scenario name, ``[a-z0-9-]+`` as a scenario name must be: a
    mode's ``+`` and a device's ``@`` become ``-`` (``torch+openvino`` -> ``torch-openvino``)."""
    text = f"{finding.flag.framework}-{finding.cause.name}".lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")


class OutputExists(Exception):
    """The directory asked for holds files and overwriting was not allowed."""


def _occupied(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def out_dir(out: str | None, force: bool = False, default: str = "findings") -> Path:
    """Where a campaign writes: ``out`` if given and absent, empty, or ``force``; without
    ``out``, the first of ``default``, ``default-2``, ... that is absent or empty. Raises
    OutputExists for an ``out`` that holds files, and for a file in the way with ``force``."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise OutputExists(f"{path} is a file, not a directory")
        if _occupied(path) and not force:
            raise OutputExists(f"{path} already holds files; give a new directory, or --force "
                               "to write into it (files of the same names are replaced)")
        return path
    n = 1
    while _occupied(path := Path(default if n == 1 else f"{default}-{n}")):
        n += 1
    return path


def write(finding: Finding, out: Path, versions: dict, seed: int, k: float = 16.0,
          command: str = "") -> list[Path]:
    """Write ``<slug>.toml``, ``<slug>.py`` where the family has a repro template, and
    ``<slug>.md`` (naming only those files, by their path from here, and holding the scenario
    and the campaign's ``command``) under ``out``; returns the paths written."""
    from .repro import ReproUnsupported, script
    from .summary import markdown

    out.mkdir(parents=True, exist_ok=True)
    name = slug(finding)
    document = {**minimal_document(finding.document, finding.flag.step), "name": name}
    finding = replace(finding, document=document, scenario=parse(document, name),
                      rows=[{**o, "scenario": name} for o in finding.rows
                            if o["step"] <= finding.flag.step])
    toml = out / f"{name}.toml"
    command = command or f"xbn fuzz -f {finding.flag.framework} --seed {seed}"
    text = to_toml(document, f"xbn fuzz finding ({finding.flag.framework}: "
                             f"{finding.cause.name})\nfound by: {command}")
    toml.write_text(text, encoding="utf-8")
    paths = [toml]
    try:
        code = script(parse(document, str(toml)), finding.flag.framework, finding.flag)
    except ReproUnsupported as exc:
        code, why = None, str(exc)
    else:
        py = out / f"{name}.py"
        py.write_text(code, encoding="utf-8")
        paths.append(py)
        why = ""
    md = out / f"{name}.md"
    where = "" if out in (Path(), Path(".")) else f"{out.as_posix().rstrip('/')}/"
    md.write_text(markdown(finding, name, versions, seed, code, why, k, command, where, text),
                  encoding="utf-8")
    return paths + [md]
