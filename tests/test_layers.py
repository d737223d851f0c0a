"""The import graph of ``xbn/`` has no loop and layers from the CLI down to the plain data.

Every ``import`` counts, module-level or inside a function: a lazy import still runs back up
when it runs, and a loop of lazy imports is the kind of knot this test exists to prevent.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "xbn"

# The layers, lowest first: a module imports only its own package or a layer below it. The
# order is the pipeline's (scenario -> execution/adapters -> observations -> comparison ->
# explain -> report), with what every stage needs underneath it; docs/architecture.md says why.
LAYERS = (
    "xbn._version",     # the version string
    "xbn.common",       # dtypes, strict loading, JSON: no BatchNorm knowledge
    "xbn.schemas",      # the JSON Schemas of what xbn reads and writes (package data)
    "xbn.frameworks",   # the registry: every framework declared once (plain data); device ids
    "xbn.scenario",     # the scenario language: model, loader, additions, what each op records
    "xbn.reference",    # the float64 BatchNorm and its switches
    "xbn.profiles",     # each framework's switch values, refusals, known divergences
    "xbn.adapters",     # the contracts at the top of the folder; one folder per family
    "xbn.execution",    # worker environments, processes, the result cache
    "xbn.comparison",   # observations -> diffs: tolerances, ULPs, verdicts, drift
    "xbn.explain",      # which switch change reproduces a framework: the reference rerun
    "xbn.analysis",     # run -> observations -> diffs -> explanations: a finished Report
    "xbn.guard",        # snapshots, the upgrade check, the version matrix
    "xbn.port",         # porting aid: translate, convert, audit, verify
    "xbn.testing",      # the public face of the porting checks for users' test suites
    "xbn.fuzz",         # Hypothesis campaigns and standalone repro scripts
    "xbn.report",       # writers: they format a finished Report
    "xbn.workflow",     # what each command does, as plain functions over everything below
    "xbn.pytest_plugin",  # users' test suites: the xbn fixture, --xbn-baseline (pytest11)
    "xbn.cli",          # the commands: parse, call one function, print
    "xbn.__main__",     # python -m xbn
    "xbn",              # the public API face
)
# reference/ is the specification: it may read the scenario and plain data, nothing else.
REFERENCE_MAY_IMPORT = ("xbn.common", "xbn.scenario", "xbn.reference")
# Private names crossing a package boundary, allowed by name: none but the version module.
PRIVATE_ALLOWED = {"_version"}
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """xbn modules that ``name`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node)
            # `from . import x` may name a submodule x or an attribute of the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for t in targets:
            while t and t not in known:  # `import xbn.a.b` -> the deepest module that exists
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_imports():
    """The graph builder itself works (a test that cannot fail proves nothing)."""
    graph = import_graph()
    assert "xbn.scenario.loader" in graph["xbn.execution.runner"]
    assert any(m.startswith("xbn.cli") for m in graph)
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_loop():
    loops = _cycles(import_graph())
    assert not loops, "import loops: " + "; ".join(" <-> ".join(c) for c in loops)


def test_only_the_entry_points_import_the_cli():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("xbn.cli") or name == "xbn.__main__":
            continue
        assert not any(d.startswith("xbn.cli") for d in deps), f"{name} imports the CLI"


def test_writers_only_format():
    """report/ receives finished tables: it never runs frameworks or searches explanations."""
    graph = import_graph()
    computing = ("xbn.execution", "xbn.explain", "xbn.analysis.pipeline", "xbn.adapters")
    for name, deps in graph.items():
        if name.startswith("xbn.report"):
            bad = sorted(d for d in deps if d.startswith(computing))
            assert not bad, f"{name} imports {bad}"


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: _module_name(p))
def test_modules_stay_small(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT.parent)} has {lines} lines"


def layer_of(module: str) -> int:
    """Index in LAYERS of the package ``module`` belongs to (its longest prefix there)."""
    best = -1
    for i, layer in enumerate(LAYERS):
        if (module == layer or module.startswith(layer + ".")) and (
                best < 0 or len(layer) > len(LAYERS[best])):
            best = i
    assert best >= 0, f"{module} belongs to no layer of LAYERS"
    return best


def test_every_module_has_a_layer():
    for name in import_graph():
        layer_of(name)


def test_imports_point_down():
    """Zero imports that run back up: a module imports its own layer or one below."""
    upward = []
    for name, deps in import_graph().items():
        own = layer_of(name)
        upward += [f"{name} -> {d}" for d in sorted(deps) if layer_of(d) > own]
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_reference_imports_only_the_scenario_and_plain_data():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("xbn.reference"):
            bad = sorted(d for d in deps if not any(
                d == p or d.startswith(p + ".") for p in REFERENCE_MAY_IMPORT))
            assert not bad, f"{name} imports {bad}"


def _private_imports(name: str, path: Path, known: set[str]) -> list[str]:
    """``_private`` names (or modules) ``name`` imports from another layer's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    own = LAYERS[layer_of(name)]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = _resolve(name, is_package, node)
        if not base.startswith("xbn"):
            continue
        for alias in node.names:
            target = f"{base}.{alias.name}"
            module = target if target in known else base
            if module == own or module.startswith(own + "."):
                continue
            parts = [p for p in target.split(".") if p]
            private = [p for p in parts if p.startswith("_") and not p.startswith("__")
                       and p not in PRIVATE_ALLOWED]
            if private:
                found.append(f"{name}: from {base} import {alias.name}")
    return found


def test_no_private_name_crosses_a_package():
    modules = _modules()
    known = set(modules)
    bad = [hit for name, path in modules.items() for hit in _private_imports(name, path, known)]
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_families_import_no_other_family():
    """adapters/<family>/ imports downward only: the contracts at the top of adapters/, the
    shared JAX plumbing, lower layers; never another family's folder."""
    graph = import_graph()
    families = {p.name for p in (ROOT / "adapters").iterdir()
                if p.is_dir() and not p.name.startswith(("_", "."))}
    for name, deps in graph.items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] != "adapters":
            continue
        mine = parts[2] if parts[2] in families else None
        for d in deps:
            dp = d.split(".")
            if len(dp) > 2 and dp[1] == "adapters" and dp[2] in families and dp[2] != mine:
                raise AssertionError(f"{name} imports another family: {d}")


def test_top_level_stays_small():
    """At most 8 modules beside the packages at the top of xbn/."""
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 8, top


def test_layer_checks_can_fail():
    """The rules see what they forbid (a test that cannot fail proves nothing)."""
    assert layer_of("xbn.reference.batchnorm") < layer_of("xbn.explain.search")
    assert layer_of("xbn.adapters.torch.adapter") == layer_of("xbn.adapters")
    assert layer_of("xbn.cli.run") > layer_of("xbn.report.view")
    with pytest.raises(AssertionError):
        layer_of("xbn_elsewhere")


def test_faces_hide_no_module():
    """A package's face re-exports no name that is also one of its modules: ``from .check
    import check`` in ``guard/__init__.py`` would make ``xbn.guard.check`` the function, and
    ``import xbn.guard.check as m`` or a monkeypatch of ``"xbn.guard.check.X"`` would reach
    the function instead of the module."""
    hidden = []
    for init in sorted(ROOT.rglob("__init__.py")):
        modules = {p.stem for p in init.parent.glob("*.py")} | {
            p.name for p in init.parent.iterdir() if (p / "__init__.py").exists()}
        tree = ast.parse(init.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                hidden += [f"{init.parent.name}: {a.asname or a.name}" for a in node.names
                           if (a.asname or a.name) in modules]
    assert not hidden, hidden
