"""Layering rules of the package (test fixtures and commands stay out of the library) and of the programs around
it (benchmarks and studies use the library only; tests run them as programs)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "difftrack"
ROOT = PACKAGE.parent
PROGRAM_FOLDERS = ("benchmarks", "studies")


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


HEAVY_LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "huggingface_hub")


def _module_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported: its module body's imports, not those inside functions or under
    ``if TYPE_CHECKING:``."""
    names = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                names.add(child.module)
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def test_the_registry_and_the_family_modules_load_without_torch():
    """The commands read the registry's facts (names, layer counts, defaults) in their argument checks, before
    deciding to load anything heavy; tests/test_cli.py checks the same at run time."""
    offenders = [f"{path.name} imports {name}" for path in sorted((PACKAGE / "backbones").glob("*.py"))
                 for name in _module_level_imports(path) if name.split(".")[0] in HEAVY_LIBRARIES]
    assert not offenders, offenders


def test_the_family_rule_sees_a_family_named_outside_the_adapters(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('from diffusers import CogVideoXTransformer3DModel\nif bb.family == "wan":\n    pass\n')
    assert len(_family_mentions(sample, {"wan"})) == 2


UNIVERSAL = {"errors", "options", "io", "formatting", "drawing"}  # "anything above them may use" (ARCHITECTURE.md)


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


def _scripts() -> list[Path]:
    return sorted(p for folder in PROGRAM_FOLDERS for p in (ROOT / folder).glob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def _script_imports(path: Path, scripts: set[str]) -> list[str]:
    """Imports of a script of benchmarks/ or studies/ (by its module name), of the commands or of the CLI."""
    return [f"{_name(path)} imports {name}" for name in sorted(_imports(path))
            if name.split(".")[0] in scripts or name == "difftrack.cli" or name.startswith("difftrack.commands")]


def _changes_sys_path(path: Path) -> list[str]:
    return [f"{_name(path)}:{node.lineno} uses sys.path" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys"]


def _loads_a_file_as_a_module(path: Path) -> list[str]:
    return [f"{_name(path)}:{node.lineno} loads a file as a module" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr in ("spec_from_file_location", "run_path")]


def test_benchmarks_and_studies_use_the_library_only():
    scripts = _scripts()
    assert {"tapvid.py", "calibrate_tracker.py"} <= {p.name for p in scripts}
    names = {p.stem for p in scripts}
    offenders = [o for path in scripts
                 for o in _script_imports(path, names) + _changes_sys_path(path) + _loads_a_file_as_a_module(path)]
    assert not offenders, offenders


def test_no_test_imports_a_script():
    """A test runs a benchmark or a study as a program (subprocess); what it tests inside one belongs in the library."""
    names = {p.stem for p in _scripts()}
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        offenders += [f"{path.name} imports {name}" for name in _imports(path) if name.split(".")[0] in names]
        offenders += _loads_a_file_as_a_module(path)
    assert not offenders, offenders


def test_the_program_rules_see_what_they_forbid(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import sys\nimport importlib.util\nsys.path.insert(0, 'x')\nfrom tapvid import run\n"
                      "from difftrack.cli import main\nfrom difftrack.commands.track import run\n"
                      "importlib.util.spec_from_file_location('m', 'benchmarks/kernel.py')\n")
    assert len(_script_imports(sample, {"tapvid"})) == 3
    assert len(_changes_sys_path(sample)) == 1 and len(_loads_a_file_as_a_module(sample)) == 1


def test_the_error_helpers_import_without_torch():
    """Every program parses and checks its arguments with difftrack.errors before anything heavy loads."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import sys, difftrack.errors; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
