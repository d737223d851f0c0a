"""The import graph of ``xbn/`` has no loop and layers from the CLI down to the plain data.

Every ``import`` counts, module-level or inside a function: a lazy import still runs back up
when it runs, and a loop of lazy imports is the kind of knot this test exists to prevent.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "xbn"

# The ground floor: plain data and the specification. They import only each other.
GROUND = ("xbn._version", "xbn.dtypes", "xbn.scenario", "xbn.scenario_model",
          "xbn.scenario_additions", "xbn.scenario_ddp", "xbn.registry",
          "xbn.strict", "xbn.semantics",
          "xbn.jsonio", "xbn.reference", "xbn.numerics", "xbn.reference_replicas",
          "xbn.profiles_replicas", "xbn.reference_renorm", "xbn.reference_mask",
          "xbn.reference_edges", "xbn.profiles_edges")
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
    assert "xbn.scenario" in graph["xbn.runner"]
    assert any(m.startswith("xbn.cli") for m in graph)
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_loop():
    loops = _cycles(import_graph())
    assert not loops, "import loops: " + "; ".join(" <-> ".join(c) for c in loops)


def test_ground_floor_imports_only_ground_floor():
    graph = import_graph()
    for name in GROUND:
        if name not in graph:
            continue
        upward = sorted(m for m in graph[name] if m not in GROUND)
        assert not upward, f"{name} imports {upward}: the ground floor must not look up"


def test_only_the_entry_points_import_the_cli():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("xbn.cli") or name == "xbn.__main__":
            continue
        assert not any(d.startswith("xbn.cli") for d in deps), f"{name} imports the CLI"


def test_writers_only_format():
    """report/ receives finished tables: it never runs frameworks or searches explanations."""
    graph = import_graph()
    computing = ("xbn.runner", "xbn.explain", "xbn.guard_explain", "xbn.analysis", "xbn.worker")
    for name, deps in graph.items():
        if name.startswith("xbn.report"):
            bad = sorted(d for d in deps if d in computing)
            assert not bad, f"{name} imports {bad}"


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: _module_name(p))
def test_modules_stay_small(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT.parent)} has {lines} lines"
