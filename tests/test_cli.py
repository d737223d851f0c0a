"""The command line: exit codes, formats, lazy imports, and reports that are never half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from xbn.cli import cli

from .conftest import MINIMAL

HEAVY = ("torch", "tensorflow", "keras", "tf_keras", "jax", "flax", "haiku", "equinox", "pandas",
         "matplotlib", "rich", "hypothesis")


def test_help_and_list_import_no_framework():
    """Neither a framework nor pandas, matplotlib or rich: help and listing stay instant."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from xbn.cli import cli\n"
        "for args in (['--help'], ['list'], ['frameworks'], ['run', '--help'],\n"
        "             ['report', '--help'], ['plot', '--help'], ['verify', '--help'],\n"
        "             ['fuzz', '--help'], ['repro', '--help']):\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    assert r.exit_code == 0, r.output\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_validation_imports_no_framework(write_scenario):
    path = write_scenario(MINIMAL)
    frameworks = tuple(m for m in HEAVY if m != "pandas")
    code = (f"import sys, xbn\nxbn.load_scenario({str(path)!r})\n"
            f"print([m for m in {frameworks!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_scenario_exits_2_with_one_line(write_scenario):
    path = write_scenario(MINIMAL.replace("training = true", "trainng = true"))
    r = CliRunner().invoke(cli, ["run", str(path), "-f", "numpy"])
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert f"{path}: steps[0].trainng: unknown key" in r.output


@pytest.mark.parametrize("args", [["run", "x.toml", "-f", "nosuch"], ["run", "x.toml", "-r", "nope"],
                                  ["run", "--format", "yaml", "x.toml"], ["run"]])
def test_usage_errors_exit_2(args):
    assert CliRunner().invoke(cli, args).exit_code == 2


def test_run_json_follows_the_contract(write_scenario):
    path = write_scenario(MINIMAL)
    r = CliRunner().invoke(cli, ["run", str(path), "-f", "numpy", "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["xbn_version"] and doc["frameworks"]["numpy"]["available"] is True
    first = doc["observations"][0]
    assert set(first) >= {"scenario", "step", "op", "framework", "quantity", "status", "value",
                          "dtype", "message"}
    assert first["quantity"] == "output" and len(first["value"]) == 3


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "html"])
def test_every_format_renders(write_scenario, fmt):
    r = CliRunner().invoke(cli, ["run", str(write_scenario(MINIMAL)), "-f", "numpy", "--format", fmt])
    assert r.exit_code == 0 and r.stdout.strip()


def test_output_is_not_replaced_on_bad_input(write_scenario, tmp_path):
    good = tmp_path / "out.json"
    r = CliRunner().invoke(cli, ["run", str(write_scenario(MINIMAL)), "-f", "numpy",
                                 "--format", "json", "-o", str(good)])
    assert r.exit_code == 0
    before = good.read_text()
    bad = write_scenario(MINIMAL.replace("schema = 1", "schema = 9"), "bad.toml")
    r = CliRunner().invoke(cli, ["run", str(bad), "-f", "numpy", "--format", "json", "-o", str(good)])
    assert r.exit_code == 2 and good.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_same_run_twice_gives_the_same_json(write_scenario):
    path = str(write_scenario(MINIMAL))
    runs = [CliRunner().invoke(cli, ["run", path, "-f", "numpy", "--format", "json"]).stdout
            for _ in range(2)]
    strip = [json.loads(r) for r in runs]
    for doc in strip:
        for meta in doc["frameworks"].values():
            meta.pop("seconds", None)
    assert strip[0] == strip[1]


@pytest.mark.slow  # a device probe per engine
def test_frameworks_lists_every_id():
    r = CliRunner().invoke(cli, ["frameworks", "--format", "json"])
    data = json.loads(r.stdout)
    assert list(data) == ["numpy", "torch", "keras", "keras-jax", "keras-torch", "keras-numpy",
                          "keras-openvino", "tf-keras", "flax", "flax-nnx", "haiku", "equinox",
                          "paddle", "mlx"]


def test_written_json_carries_no_timing(write_scenario):
    """Timings differ on every run: a committed report must not change when nothing else did."""
    r = CliRunner().invoke(cli, ["run", str(write_scenario(MINIMAL)), "-f", "numpy",
                                 "--format", "json"])
    assert r.exit_code == 0, r.output
    assert all("seconds" not in meta for meta in json.loads(r.stdout)["frameworks"].values())


@pytest.mark.parametrize("command", ["run", "snapshot", "check"])
def test_every_command_parses_framework_ids_alike(write_scenario, tmp_path, command):
    path = str(write_scenario(MINIMAL))
    if command == "check":
        snap = tmp_path / "snap.json"
        made = CliRunner().invoke(cli, ["snapshot", path, "-f", "numpy", "-o", str(snap)])
        assert made.exit_code == 0, made.output
        path = str(snap)
    r = CliRunner().invoke(cli, [command, path, "-f", "numpy, nosuch"])
    assert r.exit_code == 2
    assert "xbn: error: unknown framework id(s) nosuch; known: numpy, torch" in r.output


# did you mean --------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "hint"), [
    (["run", "seed-kera"], "seed-kera: no such file or built-in scenario (did you mean "
                           "'seed-keras'?)"),
    (["run", "builtin:bare-cal"], "(did you mean 'bare-call'?)"),
    (["run", "seed-keras", "-f", "numpy,torhc"], "unknown framework id(s) torhc (did you mean "
                                                 "'torch'?)"),
    (["run", "seed-keras", "-r", "nmpy"], "unknown reference 'nmpy' (did you mean 'numpy'?)"),
    (["explain", "kears"], "(did you mean 'keras'?)"),
])
def test_unknown_names_suggest_the_closest(args, hint):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and hint in r.output, r.output


def test_a_mistyped_path_suggests_its_neighbour(write_scenario):
    path = write_scenario(MINIMAL, "freeze.toml")
    r = CliRunner().invoke(cli, ["run", str(path.with_name("freez.toml"))])
    assert r.exit_code == 2 and f"(did you mean '{path}'?)" in r.output
    r = CliRunner().invoke(cli, ["run", "zzzz-qqqq"])
    assert "did you mean" not in r.output and "`xbn list` shows the built-in ones" in r.output


# the terminal view -----------------------------------------------------------------------------

def test_table_shows_error_messages_with_a_key(drifting):
    r = CliRunner().invoke(cli, ["run", "batch-of-one", "-f", "numpy,strict", "-q"])
    assert r.exit_code == 0, r.output
    assert "error [1]" in r.stdout  # the cell, and the detail column beside the explanation
    assert "batch_of_one=error [1]" in r.stdout
    assert "[1] strict: ValueError: " in r.stdout


def test_long_messages_are_cut_unless_full():
    from xbn.report.cells import Footnotes

    notes = Footnotes()
    notes.key("torch", "RuntimeError: " + "x" * 300)
    (cut,) = notes.lines(120)
    assert len(cut) == 120 and cut.endswith("…") and notes.cut(120)
    (whole,) = notes.lines(None)
    assert whole.endswith("x" * 50) and len(whole) > 300


def test_full_prints_whole_arrays(drifting):
    args = ["run", "bare-call", "-f", "numpy,f32", "-q"]
    short = CliRunner().invoke(cli, args).stdout
    full = CliRunner().invoke(cli, [*args, "--full"]).stdout
    assert "… (16)]" in short and "--full prints them whole" in short
    assert "… (16)" not in full and full.count("[[") >= 2  # the 8x2 output, nested, one line


def test_only_diffs_keeps_only_disagreement(drifting):
    args = ["run", "variance-update-n5", "batch-of-one", "-f", "numpy,bessel", "-q"]
    everything = CliRunner().invoke(cli, args).stdout
    diffs = CliRunner().invoke(cli, [*args, "--only-diffs"]).stdout
    assert "== batch-of-one" in everything and "== batch-of-one" not in diffs  # agrees
    assert "== variance-update-n5" in diffs and "only what differs" in diffs
    assert "gamma" in everything and "gamma" not in diffs
    csv = CliRunner().invoke(cli, [*args, "--only-diffs", "--format", "csv"]).stdout
    assert ",differs," in csv and "batch-of-one" not in csv


def test_columns_in_the_same_order_in_every_format(drifting):
    """Reference first, then the --frameworks order, then expected: table, Markdown, HTML."""
    args = ["run", "seed-keras", "-f", "strict,numpy,f32", "-q", "--format"]
    table = CliRunner().invoke(cli, [*args, "table"]).stdout
    header = next(line for line in table.splitlines() if line.strip().startswith("numpy"))
    assert header.split() == ["numpy", "strict", "f32", "expected"]
    md = CliRunner().invoke(cli, [*args, "markdown"]).stdout
    assert "| step | op | quantity | numpy | strict | f32 | expected |" in md
    html = CliRunner().invoke(cli, [*args, "html"]).stdout
    values = html[html.index("class='values'"):]
    positions = [values.index(f">{c}</th>") for c in ("numpy", "strict", "f32", "expected")]
    assert positions == sorted(positions)


def test_non_numpy_reference_says_why_there_are_no_explanations(drifting):
    args = ["run", "variance-update-n5", "-f", "numpy,bessel", "-r", "bessel"]
    r = CliRunner().invoke(cli, [*args, "-q"])
    assert "note: no explanations: the reference is bessel" in r.stdout
    r = CliRunner().invoke(cli, [*args, "--format", "csv"])
    assert "xbn: note: no explanations: the reference is bessel" in r.stderr
    assert "no explanations" not in r.stdout


# progress ---------------------------------------------------------------------------------------

def test_progress_lines_without_a_terminal_and_quiet(write_scenario):
    path = str(write_scenario(MINIMAL))
    r = CliRunner().invoke(cli, ["run", path, "-f", "numpy", "--format", "json"])
    assert "xbn: [1/1] numpy: t done" in r.stderr and "numpy: finished 1 scenario(s)" in r.stderr
    json.loads(r.stdout)  # stdout stays clean
    r = CliRunner().invoke(cli, ["run", path, "-f", "numpy", "--format", "json", "--quiet"])
    assert r.stderr == ""


def test_live_progress_draws_a_row_per_framework():
    import io

    from rich.console import Console

    from xbn.cli.progress import LiveProgress, progress_display
    from xbn.execution.runner import Progress

    assert isinstance(progress_display(terminal=True), LiveProgress)
    assert progress_display(quiet=True, terminal=True) is None
    live = LiveProgress()
    live._live = object()  # drawn below, not on this test's stderr
    for event in (Progress("queued", "torch", count=3), Progress("start", "torch", count=3),
                  Progress("step", "torch", "seed-keras", count=3, step=1, steps=7, op="call",
                           repeat=1000, elapsed=2.0),
                  Progress("unavailable", "haiku", count=3, message="pip install xbn[jax]")):
        live(event)
    out = io.StringIO()
    Console(file=out, width=120).print(live.__rich__())
    text = out.getvalue()
    assert "torch" in text and "running" in text and "0/3" in text and "2/7 call ×1000" in text
    assert "haiku" in text and "unavailable" in text
    live._live = None


def test_runner_reports_steps_and_scenarios(write_scenario):
    from xbn.execution.runner import run
    from xbn.scenario.loader import load

    two = MINIMAL + '[[steps]]\nop = "predict"\ninput = "x"\n'
    events = []
    run([load(write_scenario(two))], ["numpy"], progress=events.append)
    kinds = [(e.kind, e.step) for e in events if e.framework == "numpy"]
    assert kinds[:2] == [("queued", None), ("start", None)]
    assert ("step", 0) in kinds and ("step", 1) in kinds and ("scenario", None) in kinds
    assert kinds[-1] == ("done", None) and events[-1].kind == "finished"


# report and plot -------------------------------------------------------------------------------

def test_report_writes_html_beside_markdown(drifting, tmp_path, monkeypatch):
    from xbn.cli import run as run_module
    from xbn.scenario.loader import load, resolve

    monkeypatch.setattr(run_module, "builtin_scenarios",
                        lambda: [load(resolve("variance-update-n5"))])
    r = CliRunner().invoke(cli, ["report", "-o", str(tmp_path), "-f", "numpy,f32", "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diffs.csv", "index.html", "index.md",
                                                          "results.json"]
    page = (tmp_path / "index.html").read_text()
    assert "Verdict heatmap" in page and "<svg" in page and "The semantics matrix" in page


def test_plot_writes_an_image(drifting, tmp_path):
    out = tmp_path / "drift.png"
    r = CliRunner().invoke(cli, ["plot", "seed-keras", "-f", "numpy,f32", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(cli, ["plot", "seed-keras", "-o", str(tmp_path / "x.jpg")])
    assert r.exit_code == 2 and ".png or .svg" in r.output


# verify, audit, convert: layouts and framework logs ---------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (("NHWC", None, None), "--layout-a needs --layout-b"),
    ((None, "NCHW", None), "--layout-b needs --layout-a"),
    (("NHWC", "NCH", None), "--layout-b NCH names 3 axes but the inputs have 4"),
    (("NHWC", "NCHX", None), "--layout-a/--layout-b: layouts 'NHWC' and 'NCHX'"),
    ((None, None, "0,3,1"), "--transpose-b 0,3,1: the inputs have 4 axes"),
    (("NHWC", "NCHW", "0,3,1,2"), "give --transpose-b or --layout-a/--layout-b, not both"),
])
def test_layout_errors_name_the_option(args, message):
    from xbn.cli.port import _check_layouts
    from xbn.port import PortError

    with pytest.raises(PortError, match=message.replace("(", r"\(").replace("?", r"\?")):
        _check_layouts(*args, ndim=4)
    assert _check_layouts("NHWC", "NCHW", None, 4) == (0, 3, 1, 2)


def test_a_layout_failure_suggests_the_options():
    from xbn.cli.port import layout_hint, short_error

    torchscript = RuntimeError("The following operation failed in the TorchScript interpreter.\n"
                               "Traceback of TorchScript ...\n  ~~~ <--- HERE\n"
                               "RuntimeError: running_mean should contain 5 elements not 3\n")
    assert short_error(torchscript) == "RuntimeError: running_mean should contain 5 elements not 3"
    assert short_error(ValueError("bad\nmore")) == "ValueError: bad"

    keras_like = type("BatchNormalization", (), {"__module__": "keras.src.layers"})()
    torch_like = type("ScriptModule", (), {"__module__": "torch.jit"})()
    hint = layout_hint(keras_like, torch_like, 4)
    assert "--layout-a NHWC --layout-b NCHW (or --transpose-b 0,3,1,2)" in hint
    assert "--layout-a NCL --layout-b NLC" in layout_hint(torch_like, keras_like, 3)
    assert layout_hint(torch_like, torch_like, 4) == "" and layout_hint(keras_like, torch_like, 2) == ""


def test_framework_logs_are_hidden_unless_the_command_fails():
    """What a framework writes on file descriptor 2 (TensorFlow's C++ log) stays hidden."""
    code = (
        "import os, sys\n"
        "from xbn.cli.logs import framework_logs_hidden\n"
        "with framework_logs_hidden():\n"
        "    os.write(2, b'I0000 cuda_platform.cc: failed call to cuInit\\n')\n"
        "    print('python warning', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n"
        "assert os.environ['TF_CPP_MIN_LOG_LEVEL'] == '3'\n"
        "with framework_logs_hidden():\n"
        "    os.write(2, b'the cause\\n')\n"
        "    raise SystemExit(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # a user's wins
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 3, out.stderr
    assert "cuInit" not in out.stderr and "python warning" not in out.stderr, out.stderr
    assert "after" in out.stderr and "the cause" in out.stderr, out.stderr


def test_frameworks_table_is_aligned_and_names_the_install_command():
    """Each framework's line: id, version, state and the pip command in columns of one width
    (the description starts at the same place on every line); the core install is plain."""
    from xbn.frameworks.registry import FRAMEWORKS

    r = CliRunner().invoke(cli, ["frameworks", "--no-devices"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln and not ln.startswith(" ")]
    assert "(core)" not in r.output and lines[0].split()[0] == "numpy"
    assert "pip install xbn " in lines[0] + " "
    starts = {ln.index(FRAMEWORKS[ln.split()[0]].description) for ln in lines}
    assert len(starts) == 1, r.output


def test_plot_reads_the_result_cache(tmp_path, monkeypatch):
    """A second `xbn plot` of an unchanged scenario starts no worker (it reads the result
    cache, as `xbn run` does); --no-cache runs them again."""
    from xbn.execution import runner

    started = []
    real = runner.run_worker

    def run_worker(fid, scenarios, *args, **kwargs):
        started.append(fid)
        return real(fid, scenarios, *args, **kwargs)

    monkeypatch.setattr(runner, "run_worker", run_worker)
    args = ["plot", "seed-keras", "-f", "numpy", "-q", "-o", str(tmp_path / "a.svg")]
    for expected in (["numpy"], []):
        started.clear()
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        assert started == expected
    started.clear()
    assert CliRunner().invoke(cli, [*args, "--no-cache"]).exit_code == 0
    assert started == ["numpy"]
