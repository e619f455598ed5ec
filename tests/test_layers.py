"""The package's floors: a module imports only from its own floor or below, and never in a circle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deblur_exp"

# Ground floor first. A subpackage is one floor; the ground floor's modules share floor 0.
FLOORS = ["errors atomic config metrics tables runtime progress", "models", "data", "runs", "evaluation", "training",
          "sweeps", "cli"]
FLOOR_OF = {name: level for level, names in enumerate(FLOORS) for name in names.split()}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every deblur_exp module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deblur_exp"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("deblur_exp")}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def floor(module: str) -> int:
    return FLOOR_OF[module.split(".")[1]]


def test_every_module_is_on_a_floor():
    assert all(name.split(".")[1] in FLOOR_OF for name in graph() if name != "deblur_exp")


def test_no_module_imports_from_a_floor_above_it():
    upward = [f"{name} -> {dep}" for name, deps in graph().items() if name != "deblur_exp" for dep in deps
              if dep != "deblur_exp" and floor(dep) > floor(name)]
    assert upward == []


def test_no_import_cycles():
    edges, done, cycles = graph(), set(), []

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append(path[path.index(name):] + [name])
            return
        if name in done:
            return
        for dep in edges.get(name, ()):
            visit(dep, path + [name])
        done.add(name)

    for name in edges:
        visit(name, [])
    assert cycles == []
