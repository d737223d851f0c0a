"""Commands of the porting aid: ``xbn port``, ``convert``, ``audit``, ``verify``.

Nothing heavy is imported at module level (``xbn --help`` must not import a framework): each
command imports what it needs. Exit status: 0 done, 1 ``verify`` found a difference, 2 bad
input (one ``xbn: error: ...`` line on stderr, no traceback).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import click

from ..adapters.port_errors import PortError
from ..frameworks.registry import PORT_IDS
from .common import emit, fail

FORMAT = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                      show_default=True)
OUTPUT = click.option("--output", "-o", type=click.Path(dir_okay=False),
                      help="Write the report here instead of stdout.")


def _guarded(fn: Callable):
    """Run ``fn`` with the frameworks' log noise hidden; a ``PortError`` is bad input: one
    ``xbn: error:`` line, exit 2."""
    from .logs import framework_logs_hidden

    try:
        with framework_logs_hidden(expected=(PortError,)):
            return fn()
    except PortError as exc:
        fail(str(exc))


def _render(obj, fmt: str) -> str:
    return json.dumps(obj.to_dict(), indent=1, default=str) + "\n" if fmt == "json" else obj.to_text()


PORT_EXAMPLES = """
\b
Examples:
  xbn port --from keras --to torch --momentum 0.99 --epsilon 1e-3 --features 64
  xbn port --from torch --to flax --momentum 0.1          # torch's own momentum
  xbn port --from torch --to keras --no-affine --format json
"""


@click.command(epilog=PORT_EXAMPLES)
@click.option("--from", "source", required=True, type=click.Choice(PORT_IDS))
@click.option("--to", "target", required=True, type=click.Choice(PORT_IDS))
@click.option("--momentum", help="In the SOURCE's convention ('none': torch's cumulative average). "
              "Default: the source framework's default.")
@click.option("--epsilon", "--eps", type=float, help="Default: the source framework's default.")
@click.option("--center/--no-center", default=None, help="Learnable beta (offset).")
@click.option("--scale/--no-scale", default=None, help="Learnable gamma.")
@click.option("--affine/--no-affine", default=None, help="torch/equinox: both at once.")
@click.option("--track-running-stats/--no-track-running-stats", default=None, help="torch only.")
@click.option("--features", type=click.IntRange(min=1), help="Number of channels C.")
@click.option("--axis", help="Channel axis of the data the layer sees (e.g. -1, 1, or 1,2).")
@click.option("--rank", type=int, help="Input rank with the batch axis (picks torch 1d/2d/3d).")
@FORMAT
def port(source, target, momentum, epsilon, center, scale, affine, track_running_stats,
         features, axis, rank, fmt) -> None:
    """Translate one BatchNorm configuration from --from's convention to --to's constructor."""
    from ..port.translation import translate

    t = _guarded(lambda: translate(source, target, momentum=momentum, epsilon=epsilon,
                                   center=center, scale=scale, affine=affine,
                                   track_running_stats=track_running_stats, features=features,
                                   axis=axis, rank=rank))
    click.echo(_render(t, fmt), nl=False)


CONVERT_EXAMPLES = """
\b
Formats (inferred from the extension): .pt/.pth/.bin and .safetensors (torch state_dict),
.weights.h5/.h5 and .keras (Keras), .msgpack and .npz (Flax variables).
\b
Examples:
  xbn convert model.keras bn.pt                       # BN tensors only, Keras names
  xbn convert model.keras cnn.pt --template init.pt   # into a full torch state_dict
  xbn convert cnn.pt back.keras --template model.keras
  xbn convert model.keras vars.msgpack --template flax_init.msgpack --map names.json
"""


@click.command(epilog=CONVERT_EXAMPLES)
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--from-format", help="Format of SRC (default: from its extension).")
@click.option("--to-format", help="Format of DST (default: from its extension).")
@click.option("--template", type=click.Path(dir_okay=False),
              help="A weights file of the target's family whose BN tensors are replaced and "
                   "everything else is kept (needed to write a .keras archive).")
@click.option("--map", "name_map", type=click.Path(dir_okay=False),
              help="JSON {source BN layer: target BN layer or null}.")
@click.option("--order", type=click.Choice(["model", "name"]), default="model",
              show_default=True, help="Pair BN layers by model order or by name order.")
@click.option("--num-batches-tracked", type=click.IntRange(min=0),
              help="Value of torch's counter (default 0, or the torch source's own).")
@FORMAT
def convert(src, dst, from_format, to_format, template, name_map, order, num_batches_tracked,
            fmt) -> None:
    """Convert BatchNorm parameters and running statistics from SRC into DST."""
    from ..port.convert import convert_file

    result = _guarded(lambda: convert_file(src, dst, from_format=from_format, to_format=to_format,
                                           template=template, name_map=name_map, order=order,
                                           num_batches_tracked=num_batches_tracked))
    click.echo(_render(result, fmt), nl=False)
    click.echo(f"wrote {dst}", err=True)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(PORT_IDS), help="Flag the pitfalls for this framework.")
@FORMAT
@OUTPUT
def audit(model, target, fmt, output) -> None:
    """List every BatchNorm layer of MODEL (.keras, .weights.h5, state_dict, Flax variables).

    Nothing from the file is executed: a .keras config is read as JSON from the archive.
    """
    from ..port.auditing import audit_file

    if model.lower().endswith(".onnx"):  # an exported graph: its BatchNormalization nodes
        from ..port.onnx_files import audit_onnx

        return emit(_render(_guarded(lambda: audit_onnx(model)), fmt), output)
    result = _guarded(lambda: audit_file(model, target))
    emit(_render(result, fmt), output)


VERIFY_EXAMPLES = """
\b
A and B: a .keras file, a TorchScript .pt/.pth (torch.jit.script(model).save(...)), or
py:package.module:attribute (a model, a (linen module, variables) tuple, or a function
returning one; this runs your code). A torch state_dict alone has no architecture.
\b
Example:
  xbn verify model.keras model_ts.pt --inputs x.npy --layout-a NHWC --layout-b NCHW
  xbn verify py:examples.porting.resnet:torch_model py:examples.porting.resnet:keras_port \\
      --per-layer --inputs x.npy --layout-a NCHW --layout-b NHWC
"""


def _not_per_layer(fmt, name_map, save_captures, inputs):
    if not inputs:
        raise PortError("--inputs is required (an .npy or .npz in A's layout)")
    given = [o for o, v in (("--format " + fmt, fmt not in ("text", "json")),
                            ("--map", name_map), ("--save-captures", save_captures)) if v]
    raise PortError(f"{', '.join(given)}: only with --per-layer")


@click.command(epilog=VERIFY_EXAMPLES)
@click.argument("a")
@click.argument("b")
@click.option("--inputs", type=click.Path(dir_okay=False),
              help=".npy (one batch) or .npz (one batch per array), in A's layout (required "
                   "unless A is a --save-captures file).")
@click.option("--layout-a", help="e.g. NHWC")
@click.option("--layout-b", help="e.g. NCHW")
@click.option("--transpose-b", help="Permutation from A's layout to B's, e.g. 0,3,1,2.")
@click.option("--modes", default="eval,train", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True,
              help="Training-mode forward passes.")
@click.option("--tolerance", "-k", type=click.FloatRange(min=0), default=None,
              help="In eps(float32) x max|A| (default 16 for single layers, 64 for models).")
@click.option("--per-layer", is_flag=True,
              help="Capture every BatchNorm in both models; name the first that diverges and why.")
@click.option("--map", "name_map", type=click.Path(dir_okay=False),
              help="--per-layer: JSON {A's BN name: B's BN name} fixing pairs.")
@click.option("--save-captures", type=click.Path(dir_okay=False),
              help="--per-layer: keep A's captures in this .npz (compare after an upgrade).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown", "html"]),
              default="text", show_default=True, help="markdown and html: with --per-layer.")
@OUTPUT
def verify(a, b, inputs, layout_a, layout_b, transpose_b, modes, steps, tolerance, per_layer,
           name_map, save_captures, fmt, output) -> None:
    """Run A and B on the same inputs; exit 1 unless they agree (expected differences pass)."""
    from ..port.equivalence import compare_bn
    from ..port.loaders import load_model

    if per_layer:
        from .per_layer import verify_per_layer_command

        return verify_per_layer_command(sys.modules[__name__], a, b, inputs, layout_a, layout_b,
                                        transpose_b, tolerance, name_map, save_captures, fmt,
                                        output)
    if fmt not in ("text", "json") or name_map or save_captures or not inputs:
        _guarded(lambda: _not_per_layer(fmt, name_map, save_captures, inputs))

    if b.lower().endswith(".onnx"):  # the model and its export: run both, inference mode
        from ..port.onnx_files import read_onnx, verify_onnx

        report = _guarded(lambda: verify_onnx(
            read_onnx(a) if a.lower().endswith(".onnx") else load_model(a), b,
            _load_inputs(inputs), tolerance, a))
        emit(_render(report, fmt), output)
        sys.exit(0 if report.ok else 1)

    def run():
        arrays = _load_inputs(inputs)
        perm = _check_layouts(layout_a, layout_b, transpose_b, arrays[0].ndim)
        mode_list = [m.strip() for m in modes.split(",") if m.strip()]
        if not mode_list or any(m not in ("eval", "train") for m in mode_list):
            raise PortError(f"--modes takes eval and/or train, got {modes!r}")
        model_a, model_b = load_model(a), load_model(b)
        try:
            return compare_bn(model_a, model_b, arrays, modes=mode_list, steps=steps,
                              layout_a=layout_a, layout_b=layout_b, transpose_b=perm, k=tolerance)
        except PortError:
            raise
        except Exception as exc:  # a model that cannot run on these inputs is bad input
            hint = "" if perm else layout_hint(model_a, model_b, arrays[0].ndim)
            raise PortError(f"running the models failed ({short_error(exc)}){hint}") from None

    report = _guarded(run)
    emit(_render(report, fmt), output)
    sys.exit(0 if report.ok else 1)


EXAMPLE_LAYOUTS = {3: ("NLC", "NCL"), 4: ("NHWC", "NCHW"), 5: ("NDHWC", "NCDHW")}


def _check_layouts(layout_a, layout_b, transpose_b, ndim: int):
    """The permutation from A's layout to B's (None: B gets A's arrays unchanged); a
    PortError that names the option to fix otherwise."""
    if transpose_b:
        if layout_a or layout_b:
            raise PortError("give --transpose-b or --layout-a/--layout-b, not both")
        try:
            perm = tuple(int(p) for p in transpose_b.split(","))
        except ValueError:
            raise PortError(f"--transpose-b must be integers, got {transpose_b!r}") from None
        if sorted(perm) != list(range(ndim)):
            raise PortError(f"--transpose-b {transpose_b}: the inputs have {ndim} axes, so give "
                            f"a permutation of 0..{ndim - 1}")
        return perm
    if bool(layout_a) != bool(layout_b):
        given, missing = ("--layout-a", "--layout-b") if layout_a else ("--layout-b", "--layout-a")
        first, second = EXAMPLE_LAYOUTS.get(ndim, ("NHWC", "NCHW"))
        raise PortError(f"{given} needs {missing}: each names the axes of one model's input "
                        f"(e.g. --layout-a {first} --layout-b {second}), or give --transpose-b")
    if not layout_a:
        return None
    from ..port.equivalence import permutation

    for option, layout in (("--layout-a", layout_a), ("--layout-b", layout_b)):
        if len(layout) != ndim:
            raise PortError(f"{option} {layout} names {len(layout)} axes but the inputs have "
                            f"{ndim}")
    try:
        return permutation(layout_a, layout_b)
    except ValueError as exc:
        raise PortError(f"--layout-a/--layout-b: {exc}") from None


def short_error(exc: Exception) -> str:
    """'Type: message' in one line; for a TorchScript failure, the error at the bottom of its
    interpreter trace (the first line only says that the interpreter failed)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if "TorchScript" in lines[0] and len(lines) > 1:
        return lines[-1][:200]
    return f"{type(exc).__name__}: {lines[0][:200]}"


def _channels_first(model) -> bool | None:
    """Whether a model's framework puts channels first (torch) or last; None: unknown."""
    target = model[0] if isinstance(model, tuple) and model else model
    root = type(target).__module__.split(".")[0]
    if root == "torch":
        return True
    if root in ("keras", "tf_keras", "tensorflow", "flax", "haiku", "equinox", "jax"):
        return False
    return None


def layout_hint(model_a, model_b, ndim: int) -> str:
    """When A and B put channels on different axes, the options that say so."""
    a, b = _channels_first(model_a), _channels_first(model_b)
    if ndim not in EXAMPLE_LAYOUTS or a is None or b is None or a == b:
        return ""
    last, first = EXAMPLE_LAYOUTS[ndim]
    la, lb = (first, last) if a else (last, first)
    from ..port.equivalence import permutation

    perm = ",".join(str(i) for i in permutation(la, lb))
    return (f"; B got the inputs in A's layout, and the two frameworks put channels on "
            f"different axes: pass --layout-a {la} --layout-b {lb} (or --transpose-b {perm})")


def _load_inputs(path: str) -> list:
    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PortError(f"--inputs {path}: not a readable .npy/.npz ({exc})") from None
    if hasattr(data, "files"):
        with data:
            arrays = [data[k] for k in data.files]
        if not arrays:
            raise PortError(f"--inputs {path}: empty archive")
        return arrays
    return [data]


COMMANDS = (port, convert, audit, verify)
