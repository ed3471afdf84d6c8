"""The shape of the package: the import graph of cai/ has no cycle, and one helper writes files
atomically.

Imports are read with `ast`, at module level and inside functions alike (a function-level
import is still a dependency, only a late one). Imports under `if TYPE_CHECKING:` never run, so
the runtime graph leaves them out; a second check counts them too, as a type-only circle is
still a knot in the layering.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cai

PACKAGE = Path(cai.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    tree: ast.AST, module: str, is_package: bool, modules: set[str], type_checking: bool = False
) -> set[str]:
    """The cai modules `tree` imports, outside `if TYPE_CHECKING:` blocks unless `type_checking`."""
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        # `from cai.x import y` may name a submodule y, or a name in cai.x.
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cai"):
                    target = resolve(alias.name)
                    if target:
                        found.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            if base.split(".")[0] == "cai":
                for alias in node.names:
                    target = resolve(f"{base}.{alias.name}")
                    if target:
                        found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def import_graph(type_checking: bool = False, face: bool = False) -> dict[str, set[str]]:
    """Each cai module's cai imports. Importing cai.x runs cai/__init__ first, which is not a
    dependency of cai.x on cai: the package face is left out unless `face` (then only what is
    imported from the face itself, `from cai import __version__`, counts)."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges = _imports(tree, name, path.name == "__init__.py", modules, type_checking)
        if not face:
            edges.discard("cai")
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_function_level_imports_count_and_type_checking_ones_do_not() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from cai.export import ExportOptions\n"
        "def f():\n    from cai.stats import run_stats\n"
    )
    modules = {"cai", "cai.export", "cai.stats", "cai.card"}
    assert _imports(tree, "cai.card", False, modules) == {"cai.stats"}


def test_the_import_graph_of_cai_has_no_cycle() -> None:
    graph = import_graph()
    assert "cai.rundir" in graph and "cai.records" in graph["cai.rundir"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_circle_even_through_type_checking_imports() -> None:
    """A type-only import that closes a circle (card -> export -> card) still ties two rooms
    together: the lower one should own what both read."""
    graph = import_graph(type_checking=True)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_type_checking_graph_counts_type_checking_imports() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cai.export\n")
    modules = {"cai", "cai.export", "cai.card"}
    assert _imports(tree, "cai.card", False, modules, type_checking=True) == {"cai.export"}


def test_no_module_imports_the_package_face() -> None:
    """`cai/__init__.py` re-exports the rooms' names for users; a room that read a name back
    from it (`from cai import __version__`) would depend on every room the face lists. The
    version lives in `cai/_version.py` for that reason."""
    importers = sorted(
        name
        for name, edges in import_graph(type_checking=True, face=True).items()
        if "cai" in edges
    )
    assert importers == []


def test_the_face_check_sees_an_import_of_the_face() -> None:
    modules = {"cai", "cai.errors", "cai._version", "cai.rundir"}
    face = ast.parse("from cai import __version__\n")
    room = ast.parse("from cai import errors\nfrom cai._version import __version__\n")
    assert _imports(face, "cai.rundir", False, modules) == {"cai"}
    assert _imports(room, "cai.rundir", False, modules) == {"cai.errors", "cai._version"}


def test_records_holds_only_the_plain_dataclasses() -> None:
    assert import_graph()["cai.records"] == set()


def test_one_atomic_write() -> None:
    """Only cai/rundir.py renames files into place; every other writer goes through it."""
    renamers = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "os.replace(" in p.read_text(encoding="utf-8")
        or "os.rename(" in p.read_text(encoding="utf-8")
    )
    assert renamers == ["rundir.py"]


CLI_FUNCTION_LINES = 80


def test_no_cli_function_is_over_80_lines() -> None:
    """A command parses, calls the library and prints; anything longer belongs below the CLI.
    A function's lines run from its `def` to its end (click's option decorators not counted)."""
    long = []
    for path in sorted((PACKAGE / "cli").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                name = f"{path.relative_to(PACKAGE)}:{node.name}"
                if lines > CLI_FUNCTION_LINES:
                    long.append(f"{name} ({lines} lines)")
    assert long == []
