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


def test_the_analysis_does_not_import_the_tracker():
    offenders = [f"{path.name} imports {name}" for path in sorted((PACKAGE / "analysis").glob("*.py"))
                 for name in _imports(path) if name == "difftrack.tracker"]
    assert not offenders, offenders


FAMILY_CLASS_PREFIXES = ("CogVideoX", "HunyuanVideo", "Wan", "LTX")


def _family_mentions(path: Path, families: set[str]) -> list[str]:
    """Identifiers of family-specific classes and string literals that are a family or registry name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name.split(".")[-1] for alias in node.names]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in families:
            found.append(f"{path.name}:{node.lineno} the string {node.value!r}")
        found += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith(FAMILY_CLASS_PREFIXES)]
    return found


def test_only_the_backbone_adapters_name_a_model_family():
    from difftrack.backbones import Backbone, list_backbones

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    registry = {e.name for e in list_backbones()}  # imports every family module
    families = {c.family for c in subclasses(Backbone) if c.family} | registry
    assert {"cogvideox", "hunyuanvideo", "wan", "tiny-video"} <= families
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "backbones" not in path.relative_to(PACKAGE).parts:
            offenders += _family_mentions(path, families)
    assert not offenders, offenders


def test_the_family_rule_sees_a_family_named_outside_the_adapters(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('from diffusers import CogVideoXTransformer3DModel\nif bb.family == "wan":\n    pass\n')
    assert len(_family_mentions(sample, {"wan"})) == 2


UNIVERSAL = {"errors", "options", "io", "drawing"}  # "anything above them may use" (ARCHITECTURE.md)


def _architecture_table() -> list[tuple[list[str], set[str] | None]]:
    """(module paths, the difftrack modules they may import; None = anything) from docs/ARCHITECTURE.md."""
    import re

    doc = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    table = []
    for line in doc.splitlines():
        if not line.startswith("| `difftrack/"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        paths = [p.replace("*.py", "") for p in re.findall(r"`(difftrack/[\w/.*]+)`", cells[0].split(" (")[0])]
        allowed = None if cells[2].startswith("anything") else set(
            re.findall(r"[a-z_]+", re.sub(r"\([^)]*\)", "", cells[2].split(";")[0])))
        table.append((paths, allowed))
    return table


def test_every_module_imports_only_what_the_architecture_table_allows():
    table = _architecture_table()
    assert len(table) > 15
    offenders, unlisted = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        rows = [(paths, allowed) for paths, allowed in table
                if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in paths)]
        if not rows:
            unlisted.append(rel)
            continue
        paths, allowed = rows[0]
        if allowed is None:
            continue
        own = {p.rstrip("/").removesuffix(".py").split("/")[1] for p in paths}
        for name in _imports(path):
            if not name.startswith("difftrack."):
                continue
            top = name.split(".")[1]
            if top not in own | allowed | UNIVERSAL:
                offenders.append(f"{rel} imports {name}")
    assert not unlisted, f"modules missing from the ARCHITECTURE.md table: {unlisted}"
    assert not offenders, offenders
