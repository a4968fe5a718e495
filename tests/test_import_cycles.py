"""No import cycle among radfed's modules (issue 15): every module of cdm, node and coordinator can be
read, and imported, after the modules it imports.  Import statements are read with :mod:`ast`, as in
tests/test_layering.py: those at module level (a cycle there breaks or half-initialises a module) and,
separately, every import anywhere (a function-level import may postpone a cycle, never remove it).
``import a.b`` and ``from a import b`` (``b`` a submodule) are edges to ``a.b``: a submodule's
implicit import of its parent package is not counted, or every package would be a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cdm", "node", "coordinator")


def modules(root: Path = REPO) -> dict[str, Path]:
    """Dotted name -> file of every module of the three packages."""
    out = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _targets(node, name: str, is_package: bool, known: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the module's package
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names]


def import_graph(root: Path = REPO, module_level_only: bool = True) -> dict[str, set[str]]:
    """module -> the project modules it imports (at module level, or anywhere)."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        nodes = _module_level(tree.body) if module_level_only else ast.walk(tree)
        edges = set()
        for node in nodes:
            for target in _targets(node, name, path.name == "__init__.py", known):
                while target and target not in known:  # ``import a.b.c`` of a name inside a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _module_level(body):
    """Import statements run when the module is imported: top level, and inside top-level if/try
    blocks (``if TYPE_CHECKING:`` blocks are never run, so they are skipped)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycle_at_module_level():
    assert cycles(import_graph()) == []


def test_no_import_cycle_even_through_imports_inside_functions():
    assert cycles(import_graph(module_level_only=False)) == []


def test_the_check_finds_a_cycle(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "cdm" / "a.py").write_text("from cdm import b\n")
    (tmp_path / "cdm" / "b.py").write_text("def f():\n    from cdm.c import x\n")
    (tmp_path / "cdm" / "c.py").write_text("import cdm.a\nx = 1\n")
    (tmp_path / "node" / "d.py").write_text("from . import e\n")
    (tmp_path / "node" / "e.py").write_text("from .d import f\n")
    assert cycles(import_graph(tmp_path)) == [["node.d", "node.e"]]
    assert cycles(import_graph(tmp_path, module_level_only=False)) == [["cdm.a", "cdm.b", "cdm.c"], ["node.d", "node.e"]]
