"""The package's import graph has no cycles, counting the imports inside functions too."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "kanedu"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Every kanedu module that ``name`` imports anywhere in its source (module level or in a function)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # every import, in functions too
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & known
            found.update(submodules)  # `from . import plot`: the submodule, not the package's __init__ ...
            if len(submodules) < len(node.names):
                found.add(target)  # ... but `from .layers import KANLayer` (or `from kanedu import KAN`) is

    # the module itself, or the nearest enclosing module that exists (a name imported from a module)
    out = set()
    for target in found:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target.startswith("kanedu") and target != name:
            out.add(target)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # a submodule may import the package's __init__ only if __init__ does not import it (it does, for all
    # but kanedu.grading): count `from kanedu import X` as an import of kanedu itself
    assert "kanedu.layers" in graph["kanedu.models"] and "kanedu.splines" in graph["kanedu.layers"]
    cycles = _cycles(graph)
    assert not cycles, "import cycles (imports inside functions included): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_the_checker_finds_a_cycle_hidden_in_a_function():
    graph = {"kanedu.a": {"kanedu.b"}, "kanedu.b": {"kanedu.c"}, "kanedu.c": {"kanedu.a"}, "kanedu.d": set()}
    assert _cycles(graph) == [["kanedu.a", "kanedu.b", "kanedu.c"]]
    source = "def f():\n    from .b import g\n"
    tree_imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert tree_imports and tree_imports[0].level == 1  # lazy relative imports are seen by ast.walk
