"""Execution modes in the report (issue 23): `xbn report` runs the selected mode ids on their
scenarios (``xbn.frameworks.modes.REPORT_MODES``) and n/a elsewhere; ``--all-modes`` runs
every mode of every framework everywhere; the framework notes say what each op ran as.

The selection is data: these tests hold it to the built-in scenarios and the declared modes,
and run the one real path that matters (a worker asked for a subset of the scenarios) with
the float64 reference, which needs no framework.
"""

from __future__ import annotations

from types import SimpleNamespace

from click.testing import CliRunner

from xbn.cli.app import cli
from xbn.execution.cache import report_key
from xbn.execution.runner import run, unselected_rows
from xbn.frameworks.devices import parse
from xbn.frameworks.modes import REPORT_MODES, all_mode_ids, modes_of, runs_of, runs_text
from xbn.report.view import framework_lines
from xbn.scenario.loader import builtin_paths, load, resolve
from xbn.scenario.observation import NOT_APPLICABLE, primary_quantities
from xbn.workflow import report_frameworks

BUILTIN = [p.stem for p in builtin_paths()]


def test_the_selection_names_declared_modes_and_builtin_scenarios():
    for fid, names in REPORT_MODES.items():
        assert parse(fid) == fid  # a valid ID+MODE (raises on an undeclared mode)
        assert names and set(names) <= set(BUILTIN), fid


def test_report_frameworks_adds_the_selection_or_every_mode():
    ids = ["numpy", "torch", "keras", "flax+jit"]
    out, only = report_frameworks(ids, BUILTIN)
    assert out[:4] == ids  # as given, then the selected mode ids of the plain ones
    assert set(out[4:]) == {f for f in REPORT_MODES if f.partition("+")[0] in ("torch", "keras")}
    assert only["torch+compile"] == set(REPORT_MODES["torch+compile"])
    assert "flax+jit" not in only  # a mode id given runs everywhere
    every, none = report_frameworks(ids, BUILTIN, all_modes=True)
    assert none == {}
    # every mode of the plain ids; flax+jit was given alone, so flax brings no other mode
    assert set(every) == set(ids) | set(all_mode_ids("torch")) | set(all_mode_ids("keras"))
    assert "torch+onnx" in every and len(all_mode_ids("torch")) == len(modes_of("torch"))
    on_gpu, _ = report_frameworks(["numpy", "torch@cuda"], BUILTIN)
    assert "torch+compile@cuda" in on_gpu
    plain, nothing = report_frameworks(["numpy"], BUILTIN)  # no modes: the same run as before
    assert (plain, nothing) == (["numpy"], {})


def test_the_selection_is_part_of_the_report_key():
    s = load(resolve("large-mean"))
    ids = ["numpy", "torch+compile"]
    assert report_key([s], ids, "numpy") != report_key([s], ids, "numpy",
                                                        only={"torch+compile": set()})
    assert report_key([s], ids, "numpy") == report_key([s], ids, "numpy", only={})


def test_a_framework_runs_only_its_selected_scenarios():
    """The worker gets the selected scenario only; the other is n/a on every step, saying
    why and how to run it."""
    ran, skipped = load(resolve("large-mean")), load(resolve("predict-vs-call"))
    result = run([ran, skipped], ["numpy"], only={"numpy": {ran.name}})
    by = {}
    for o in result.observations:
        by.setdefault(o["scenario"], []).append(o)
    assert {o["status"] for o in by["large-mean"]} == {"ok"}
    rows = by["predict-vs-call"]
    assert rows == unselected_rows(skipped, "numpy")
    assert {o["status"] for o in rows} == {NOT_APPLICABLE}
    assert "--all-modes" in rows[0]["message"]
    expected = sum(len(primary_quantities(s.op)) * (s.repeat if s.trace else 1)
                   for s in skipped.steps)
    assert len(rows) == expected


def test_framework_notes_say_what_each_op_ran_as():
    report = SimpleNamespace(reference="numpy", frameworks={
        "torch": {"available": True, "version": "2.13.0"},
        "torch+compile": {"available": True, "version": "2.13.0"},
        "keras": {"available": True, "version": "3.15.1"}})
    lines = framework_lines(report)
    assert lines[0].endswith("; runs eager")
    assert "runs torch.compile(module)" in lines[1]
    assert "predict: model.predict: tf.function" in lines[2] and "grad: eager" in lines[2]
    assert runs_text({"call": "a", "grad": "a", "fit": "b"}) == "call, grad: a; fit: b"
    assert runs_of("myplugin") == {"call": "as its adapter runs it"}


def test_report_command_has_all_modes():
    out = CliRunner().invoke(cli, ["report", "--help"])
    assert out.exit_code == 0 and "--all-modes" in out.output


def test_a_known_divergence_may_name_a_moded_id_but_no_undeclared_mode():
    from xbn.profiles.divergences import known_divergences, parse_divergences

    assert any(d["framework"] == "tf-keras+xla" for d in known_divergences())
    entry = ('[[divergence]]\nframework = "torch+bogus"\nquantity = "output"\n'
             'reason = "r"\nlink = "l"\n')
    try:
        parse_divergences(entry)
    except ValueError as exc:
        assert "unknown framework 'torch+bogus'" in str(exc)
    else:
        raise AssertionError("an undeclared mode was accepted")
