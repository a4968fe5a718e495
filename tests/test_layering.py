"""The package layering of docs/DESIGN.md: ``node`` and ``coordinator`` depend on ``cdm``, never on each
other, and ``cdm`` on neither.  Every import statement in the three packages (module level or inside a
function) is read with :mod:`ast`; a string naming a module (the Flower app bundle's entry-point text
in cdm/learn/bundle.py, a subprocess command line) is not an import."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {"cdm": {"node", "coordinator"}, "node": {"coordinator"}, "coordinator": {"node"}}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.append((node.lineno, str(node.args[0].value).split(".")[0]))
    return out


def violations(root: Path = REPO) -> list[str]:
    found = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, name in imported_packages(path):
                if name in forbidden:
                    found.append(f"{path.relative_to(root)}:{line} imports {name}")
    return found


def test_node_and_coordinator_never_import_each_other_and_cdm_neither():
    assert violations() == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    (tmp_path / "node").mkdir()
    for package in ("cdm", "coordinator"):
        (tmp_path / package).mkdir()
    (tmp_path / "node" / "bad.py").write_text("def f():\n    from coordinator.stats import cox\n")
    (tmp_path / "cdm" / "bad.py").write_text("import importlib\nimportlib.import_module('node.disclosure.policy')\n")
    (tmp_path / "coordinator" / "fine.py").write_text("TEXT = 'from node.learn import clientapp'\nimport cdm.spec\n")
    assert violations(tmp_path) == ["cdm/bad.py:2 imports node", "node/bad.py:2 imports coordinator"]
