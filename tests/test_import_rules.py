"""Layering rules of the package: test fixtures and commands stay out of the library."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "difftrack"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_library_module_imports_test_fixtures_or_commands():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel == "difftrack/testing.py":
            continue
        for name in _imports(path):
            if name == "difftrack.testing" or name.startswith("difftrack.testing."):
                offenders.append(f"{rel} imports {name}")
            if name.startswith("difftrack.commands") and not rel.startswith(("difftrack/commands/", "difftrack/cli.py")):
                offenders.append(f"{rel} imports {name}")
    assert not offenders, offenders
