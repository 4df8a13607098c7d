"""The packages form layers: a module imports only from its own layer or those below it.

Imports under ``if TYPE_CHECKING:`` never run and are allowed in any direction. A new package
must be placed in LAYERS (and in docs/ARCHITECTURE.md's order) before it can import anything.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "slimkit"
# lowest first; docs/ARCHITECTURE.md states the same order
LAYERS = ["core", "encoding", "search", "data", "zoo", "measure", "train", "tasks", "techniques", "backends", "nas",
          "recipes", "api", "cli", "__init__", "__main__"]


def _layer(module: str) -> str:
    """'slimkit.techniques.pruning.step' -> 'techniques'; 'slimkit' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _runtime_imports(tree: ast.Module):
    """(line, module) of every import of slimkit outside ``if TYPE_CHECKING:`` blocks."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "slimkit" or name.startswith("slimkit."):
                yield node.lineno, name


def _upward_imports(src: Path = SRC) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        here = rel.parts[0].removesuffix(".py")
        assert here in rank, f"{rel}: package {here!r} has no place in LAYERS"
        for line, module in _runtime_imports(ast.parse(path.read_text(), str(path))):
            there = _layer(module)
            assert there in rank, f"{rel}:{line} imports {module}, which is in no layer"
            if rank[there] > rank[here]:
                found.append(f"{rel}:{line} ({here}) imports {module} ({there})")
    return found


def test_no_module_imports_from_a_higher_layer():
    assert _upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The check is not vacuous: a core module importing a technique is reported."""
    fake = tmp_path / "slimkit"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "bad.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from slimkit.recipes import runner\n"
                                          "def f():\n    from slimkit.techniques import pruning\n")
    assert _upward_imports(fake) == ["core/bad.py:5 (core) imports slimkit.techniques (techniques)"]
