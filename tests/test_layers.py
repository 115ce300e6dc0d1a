"""Layers only point down: what a module may import, read from the source (nothing is imported to check it)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lower layers never import higher ones; a layer may import its own and every lower one.
LAYERS = [
    ("si_assets.settings", "si_assets.progress", "si_assets.plots", "si_assets.world", "si_assets.storage"),
    ("si_assets.modeling", "si_assets.verifier"),
    (
        "si_assets.bootstrap",
        "si_assets.collection",
        "si_assets.organization",
        "si_assets.optimization",
        "si_assets.evaluation",
    ),
    ("si_assets.rounds",),
    ("resources",),
    ("si_assets.assets",),
    ("si_assets.automation",),
    ("si_assets.definitions", "si_assets.demo"),
]
DAGSTER_FREE = [package for layer in LAYERS[:4] for package in layer]


def layer_of(module: str) -> int | None:
    for rank, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return rank
    return None


def product_modules() -> dict[str, Path]:
    files = [*ROOT.glob("si_assets/**/*.py"), *ROOT.glob("resources/**/*.py")]
    modules = {}
    for path in files:
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


MODULES = product_modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    rank = layer_of(module)
    if rank is None:  # package roots (si_assets itself) hold no code that imports
        return
    for imported in imports_of(MODULES[module]):
        target = layer_of(imported)
        assert target is None or target <= rank, f"{module} (layer {rank}) imports {imported} (layer {target})"
        if module.startswith("si_assets.assets.") and imported.startswith("si_assets.assets."):
            assert imported == "si_assets.assets.common", f"asset module {module} imports asset module {imported}"
        if any(module == p or module.startswith(p + ".") for p in DAGSTER_FREE):
            assert imported.split(".")[0] != "dagster", f"{module} is meant to be Dagster-free but imports {imported}"


def test_the_layer_table_covers_every_module() -> None:
    uncovered = [m for m in MODULES if layer_of(m) is None and m not in ("si_assets", "resources")]
    assert not uncovered, f"modules in no layer: {uncovered}"
