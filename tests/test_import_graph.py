"""The package's import layering, read from the source with `ast`: no import circles among imaginairy modules, and
nothing that `imaginairy.schema` depends on imports `schema` back (except for type hints, under TYPE_CHECKING).

Every import statement counts, also those inside functions (a lazy import is still a dependency); imports inside
`if TYPE_CHECKING:` blocks do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "imaginairy"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """The imaginairy modules an AST imports outside TYPE_CHECKING blocks (`from a import b` counts a.b when that
    is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {module for module in found if module.split(".")[0] == "imaginairy"}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = imported_modules(tree, name, path.name == "__init__.py")
        graph[name] = {module for module in imported if module in paths and module != name}
    return graph


def without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges into a package's `__init__` only (importing `a.b` runs `a/__init__`) are not dependencies on its
    submodules; drop the edge from a package's own submodules to it, which every such import implies."""
    return {
        name: {target for target in targets if not name.startswith(f"{target}.")} for name, targets in graph.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_sees_lazy_imports_and_skips_type_checking_ones():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from imaginairy.schema import ImaginePrompt\n"
        "def f():\n    from imaginairy.utils import images\n    import imaginairy.errors\n"
    )
    assert imported_modules(tree, "imaginairy.x", False) == {
        "imaginairy.utils", "imaginairy.utils.images", "imaginairy.errors"
    }  # fmt: skip
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_among_imaginairy_modules():
    graph = without_package_inits(import_graph())
    assert len(graph) > 50  # the whole package was read
    assert find_cycle(graph) is None


def test_nothing_below_schema_imports_schema():
    graph = without_package_inits(import_graph())
    below_schema = reachable(graph, "imaginairy.schema")
    assert "imaginairy.utils.images" in below_schema and "imaginairy.samplers.table" in below_schema
    importers = sorted(module for module in below_schema if "imaginairy.schema" in graph[module])
    assert importers == []
