"""The jaxchat import graph, read from the source with ``ast`` (nothing is imported), has no cycles.

Imports inside functions count: they run when the function does, and a cycle they close is only
hidden, not gone. Imports under ``if TYPE_CHECKING:`` do not count: they never run.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "jaxchat"
MAX_CYCLES = 50  # enumerating every cycle is exponential in the worst case; the first few suffice

# module -> imported module -> line numbers of the imports that form that edge
Graph = dict[str, dict[str, list[int]]]


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name → source file, for every ``.py`` under ``package_dir`` (a package is its ``__init__``)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth, except those in the body of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The modules one import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        parts = (module if is_package else module.rpartition(".")[0]).split(".")
        if node.level - 1 >= len(parts):
            return []  # climbs above the top-level package: not ours
        base = ".".join(parts[: len(parts) - (node.level - 1)])
        if node.module:
            base = f"{base}.{node.module}"
    else:
        base = node.module or ""
    # `from pkg import name` imports the submodule pkg.name if there is one, else a name from pkg.
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def build_graph(package_dir: Path) -> tuple[Graph, dict[str, Path]]:
    """The import graph of the package at ``package_dir``, restricted to its own modules."""
    root = package_dir.name
    modules = module_files(package_dir)
    graph: Graph = {}
    for module, path in modules.items():
        edges: dict[str, list[int]] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _import_nodes(tree):
            for target in _targets(node, module, path.name == "__init__.py", modules):
                if target == root or target.startswith(root + "."):
                    edges.setdefault(target, []).append(node.lineno)
        graph[module] = {target: sorted(set(lines)) for target, lines in sorted(edges.items())}
    return graph, modules


def _strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def find_cycles(graph: Graph, limit: int = MAX_CYCLES) -> list[list[str]]:
    """Elementary cycles, each starting at its smallest module and closed (``[a, b, a]``); at most ``limit``."""
    cycles: list[list[str]] = []

    def extend(path: list[str], allowed: set[str]) -> None:
        for w in graph.get(path[-1], {}):
            if len(cycles) >= limit:
                return
            if w == path[0]:
                cycles.append([*path, w])
            elif w in allowed and w not in path:
                extend([*path, w], allowed)

    for component in sorted(_strongly_connected(graph)):
        for i, start in enumerate(component):
            # Only modules after `start` may follow it, so each cycle is found once, from its smallest module.
            extend([start], set(component[i + 1 :]))
    return cycles


def describe(cycles: list[list[str]], graph: Graph, modules: dict[str, Path], base: Path) -> str:
    """One ``a -> b -> a`` line per cycle, each followed by the file:line of the imports forming it."""
    lines = [f"{len(cycles)} import cycle(s){' (listing stopped at the limit)' if len(cycles) >= MAX_CYCLES else ''}:"]
    for cycle in cycles:
        lines.append("  " + " -> ".join(cycle))
        for src, dst in zip(cycle, cycle[1:]):
            where = ", ".join(f"{modules[src].relative_to(base)}:{n}" for n in graph[src][dst])
            lines.append(f"      {where}  imports {dst}")
    return "\n".join(lines)


# ---- the builder itself, on a synthetic package -------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


SYNTHETIC = {
    "pkg/__init__.py": "from pkg.a import A\n",
    "pkg/a.py": """\
        import os
        from typing import TYPE_CHECKING

        from . import b
        from .sub import mod, helper

        if TYPE_CHECKING:
            from pkg.c import C  # never runs: not an edge (else c -> a would close a cycle)
        else:
            import pkg.d

        A = 1
    """,
    "pkg/b.py": """\
        def f():
            from pkg.a import A  # function-local: still an edge

            return A
    """,
    "pkg/c.py": "from pkg import a\nC = a.A\n",
    "pkg/d.py": "import json\n",
    "pkg/sub/__init__.py": "from ..d import *\n\n\ndef helper(): ...\n",
    "pkg/sub/mod.py": "from .. import d\n",
}


def test_builder_finds_a_function_local_cycle_and_skips_type_checking(tmp_path: Path) -> None:
    _write(tmp_path, SYNTHETIC)
    graph, modules = build_graph(tmp_path / "pkg")
    assert set(modules) == {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.sub", "pkg.sub.mod"}
    assert graph == {
        "pkg": {"pkg.a": [1]},
        "pkg.a": {"pkg.b": [4], "pkg.d": [10], "pkg.sub": [5], "pkg.sub.mod": [5]},
        "pkg.b": {"pkg.a": [2]},
        "pkg.c": {"pkg.a": [1]},
        "pkg.d": {},
        "pkg.sub": {"pkg.d": [1]},
        "pkg.sub.mod": {"pkg.d": [1]},
    }
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.a"]]
    message = describe(cycles, graph, modules, tmp_path)
    assert "  pkg.a -> pkg.b -> pkg.a\n" in message
    assert f"{Path('pkg/a.py')}:4  imports pkg.b" in message
    assert f"{Path('pkg/b.py')}:2  imports pkg.a" in message


def test_builder_passes_once_the_cycle_is_gone(tmp_path: Path) -> None:
    _write(tmp_path, {**SYNTHETIC, "pkg/b.py": "def f():\n    return 1\n"})
    graph, _ = build_graph(tmp_path / "pkg")
    assert graph["pkg.b"] == {}
    assert find_cycles(graph) == []


def test_find_cycles_lists_each_elementary_cycle_once() -> None:
    graph: Graph = {"x": {"x": [1], "y": [2]}, "y": {"z": [1], "x": [2]}, "z": {"x": [1]}}
    assert sorted(find_cycles(graph)) == [["x", "x"], ["x", "y", "x"], ["x", "y", "z", "x"]]


# ---- the real package ---------------------------------------------------------------------------


def test_graph_sees_the_real_imports() -> None:
    graph, modules = build_graph(PACKAGE_DIR)
    assert len(modules) > 30
    # Guards against a builder that silently finds no edges (and so no cycles).
    assert "jaxchat.tokenizer.storage" in graph["jaxchat.tokenizer.bpe"]
    assert "jaxchat.tokenizer.constants" in graph["jaxchat.tokenizer.storage"]
    assert "jaxchat.tokenizer.bpe" not in graph["jaxchat.tokenizer.render"]  # TYPE_CHECKING only


def test_jaxchat_imports_are_acyclic() -> None:
    graph, modules = build_graph(PACKAGE_DIR)
    cycles = find_cycles(graph)
    assert not cycles, describe(cycles, graph, modules, PACKAGE_DIR.parent)


def function_local_imports_without_reason(package: Path) -> list[str]:
    """Imports inside functions with no comment saying why (on the line, or just above its group)."""
    missing = []
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for function in ast.walk(ast.parse(source)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                first = node.lineno - 1  # walk up to the first import of this group (and a `try:` above it)
                while first > 0 and lines[first - 1].strip().startswith(("import ", "from ", "try:")):
                    first -= 1
                window = lines[max(first - 1, 0):node.end_lineno]
                if not any("#" in line for line in window):
                    missing.append(f"{path.relative_to(package.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return missing


def test_every_function_local_import_says_why():
    """Imports live at the top of a module; one inside a function keeps a heavy or optional
    dependency lazy and says so (``# lazy: ...``)."""
    assert function_local_imports_without_reason(PACKAGE_DIR) == []


def test_function_local_import_check_finds_an_unexplained_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("def f():\n    import os\n    return os\n\n\ndef g():\n"
                              "    import json  # lazy: a reason\n    return json\n")
    assert function_local_imports_without_reason(pkg) == ["pkg/m.py:2: import os"]
