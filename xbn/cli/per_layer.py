"""``xbn verify A B --per-layer``: the command's half (the work is ``xbn.port.per_layer``).

Exit status: 0 when every BatchNorm pair agrees (differences that are framework arithmetic,
torch's unbiased running variance, pass as ``expected``); 1 when a BN diverges: its cause
named (a state, configuration or semantic switch the port got wrong: fix it at that layer) or
not; 2 for bad input (unreadable inputs, models that do not run, BNs that do not pair: the
unmatched layers are named).

A may be a capture snapshot written by ``--save-captures`` (the across-versions use): its
stored captures stand for A, and its stored inputs are used when ``--inputs`` is not given.
"""

from __future__ import annotations

import json
import sys

from ..adapters.port_errors import PortError
from .common import emit


def _render(report, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=1, default=str) + "\n"
    if fmt == "markdown":
        from ..port.per_layer_text import report_markdown

        return report_markdown(report)
    if fmt == "html":
        from ..report.per_layer_html import report_html

        return report_html(report)
    return report.to_text()


def _name_map(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise PortError(f"--map {path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in data.items()):
        raise PortError(f"--map {path}: expected a JSON object {{A's BN name: B's BN name}}")
    return data


def verify_per_layer_command(port_cli, a, b, inputs, layout_a, layout_b, transpose_b, tolerance,
                             name_map, save_captures, fmt, output) -> None:
    from ..port.capture_files import is_capture_file, load
    from ..port.loaders import load_model
    from ..port.per_layer import verify_per_layer
    # port_cli: xbn.cli.port, passed in (importing it here would make an import loop)
    _check_layouts, _guarded, _load_inputs = (port_cli._check_layouts, port_cli._guarded,
                                              port_cli._load_inputs)
    layout_hint, short_error = port_cli.layout_hint, port_cli.short_error

    def run():
        mapping = _name_map(name_map)
        stored = load(a) if is_capture_file(a) else None
        if inputs:
            x = _load_inputs(inputs)[0]
        elif stored is not None:
            x = stored["inputs"]
        else:
            raise PortError("--inputs is required (an .npy or .npz in A's layout)")
        perm = _check_layouts(layout_a, layout_b, transpose_b, x.ndim)
        model_a = None if stored is not None else load_model(a)
        model_b = load_model(b)
        try:
            return verify_per_layer(model_a, model_b, x, transpose_b=perm, k=tolerance,
                                    name_map=mapping, captures_a=stored, save_a=save_captures)
        except PortError:
            raise
        except Exception as exc:  # a model that cannot run on these inputs is bad input
            hint = "" if perm or model_a is None else layout_hint(model_a, model_b, x.ndim)
            raise PortError(f"running the models failed ({short_error(exc)}){hint}") from None

    report = _guarded(run)
    emit(_render(report, fmt), output)
    sys.exit(0 if report.ok else 1)
