"""The package is a house of floors: data flows one way (profile -> build -> push -> run -> result ->
history), and so do imports. A module may import only from a floor below its own (or its own folder);
an import inside a function counts as much as one at the top of a file."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# Bottom to top. The ground floor is pipeline's own loose modules: leaves every floor may use.
FLOORS = ["(ground)", "tvm_release", "board", "records", "compiler", "deploy", "tuning", "upgrade", "nightly", "cli"]
# Inside compiler/: importing a model, rewriting it, scheduling it, then the build that uses all three.
COMPILER_FLOORS = ["importer", "rewrites", "schedules", "(compiler)"]
LEAVES = {"pipeline.stats"}  # statistics import nothing of the pipeline, as asv's _stats.py


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every pipeline module a file imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pipeline"))
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules}


def floor_of(module: str) -> tuple[int, int]:
    parts = module.split(".")[1:]
    if len(parts) <= 1:
        return FLOORS.index("(ground)"), 0
    top = FLOORS.index(parts[0])
    if parts[0] != "compiler":
        return top, 0
    inner = parts[1] if len(parts) > 2 else "(compiler)"
    return top, COMPILER_FLOORS.index(inner)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[1:2] == ["compiler"] and len(parts) > 3 else ".".join(parts[:2])


ARROWS = [
    (module_name(path), imported) for path in sorted(PACKAGE.rglob("*.py")) for imported in sorted(imports_of(path))
]


def test_every_package_folder_has_a_floor() -> None:
    for path in PACKAGE.rglob("*.py"):
        floor_of(module_name(path))  # raises ValueError for a folder missing from FLOORS


def test_the_scan_sees_imports_inside_functions() -> None:
    assert ("pipeline.board.doctor", "pipeline.board.tuning_python") in ARROWS


def test_imports_go_down_only() -> None:
    upward = [
        f"{importer} imports {imported}"
        for importer, imported in ARROWS
        if unit_of(importer) != unit_of(imported)
        and not floor_of(importer)[0] == 0 == floor_of(imported)[0]  # the ground floor's loose modules
        and not floor_of(imported) < floor_of(importer)
    ]
    assert upward == []


def test_statistics_are_a_leaf() -> None:
    assert [imported for importer, imported in ARROWS if importer in LEAVES] == []


def test_no_two_folders_import_each_other() -> None:
    units = {(unit_of(a), unit_of(b)) for a, b in ARROWS if unit_of(a) != unit_of(b)}
    assert sorted((a, b) for a, b in units if (b, a) in units) == []
