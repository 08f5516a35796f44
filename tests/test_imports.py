"""The package's import graph, file by file, has no cycle: every import counts, at module top or
inside a function (only `if TYPE_CHECKING:` blocks, which never run, are left out)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reatco"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_only(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(tree: ast.AST, module: str, is_package: bool):
    """(module, name) pairs of every import in `tree` outside `if TYPE_CHECKING:` blocks; relative
    imports resolved against `module`."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and type_checking_only(node)
               for child in node.body for n in ast.walk(child)}
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - (node.level - 1)]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                yield target, alias.name


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        for target, name in imported_names(tree, module, path.name == "__init__.py"):
            if name and f"{target}.{name}" in files:  # from package import submodule
                graph[module].add(f"{target}.{name}")
            elif target in files:
                graph[module].add(target)
        graph[module].discard(module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_function_level_imports_and_finds_a_cycle():
    tree = ast.parse("import os\n\ndef f():\n    from .b import g\n\nif TYPE_CHECKING:\n    from .c import h\n")
    assert list(imported_names(tree, "pkg.a", False)) == [("os", None), ("pkg.b", "g")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "reatco.pipeline" in graph and "reatco.rad.guidance" in graph["reatco.pipeline"]
    assert cycles(graph) == []
