"""No import cycle in the package: every import statement of every module counts,
module-level or inside a function (a function-level import only delays a cycle)."""
import ast
from pathlib import Path

import pytest

PACKAGE = "memel_lightning"
ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path = ROOT / PACKAGE) -> dict[str, Path]:
    """``{"memel_lightning.research.spec": path, "memel_lightning.research": .../__init__.py, ...}``"""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its file.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``;
    relative imports are resolved against the module's package.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]):
    """One cycle as a list of modules (first == last), or None (iterative DFS, three colours)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "memel_lightning"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")
    modules = module_names(pkg)
    graph = {n: imports_of(n, p, set(modules)) for n, p in modules.items()}
    assert graph["memel_lightning.a"] == {"memel_lightning.sub.b"}
    assert graph["memel_lightning.sub.b"] == {"memel_lightning.a"}
    assert find_cycle(graph) == ["memel_lightning.a", "memel_lightning.sub.b", "memel_lightning.a"]
    (pkg / "sub" / "b.py").write_text("import memel_lightning.sub\n")
    graph = {n: imports_of(n, p, set(modules)) for n, p in module_names(pkg).items()}
    assert find_cycle(graph) is None


def test_research_package_never_imports_the_cli():
    graph = import_graph()
    research = [m for m in graph if m.startswith(f"{PACKAGE}.research")]
    assert len(research) >= 8
    for name in research:
        assert f"{PACKAGE}.cli" not in graph[name], name


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))
