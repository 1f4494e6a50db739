"""No import cycle among dmkernels' modules, read statically from the source (ast).

Every import counts, including the ones inside functions: a cycle hidden in a
function body still ties two modules together and breaks as soon as someone
moves the import to the top. ``from a import b`` where ``a.b`` is a module is an
edge to ``a.b``. A module importing its own package (``import dmkernels`` in
``dmkernels.bench.cases``) is no edge: Python runs the package's ``__init__``
before any of its modules anyway. Taking a *name* from a package's
``__init__`` (``from dmkernels import generate``) is one, since that name
exists only once the ``__init__`` has run.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dmkernels"


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def top_level_names(path: Path) -> set[str]:
    """Names a module binds at its top level (a name imported ``from`` a package
    that its ``__init__`` does not bind is a submodule, e.g. the compiled ``_C``)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The dmkernels modules that ``module`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()

    def add(name: str, namespace: bool = False) -> None:
        # The longest known module that ``name`` names or lies inside of.
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module and (namespace or not module.startswith(name + ".")):
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                if full in modules:
                    add(full)
                elif base in modules and alias.name in top_level_names(modules[base]):
                    add(base, namespace=True)  # a name defined in ``base``
                else:
                    add(base)
    return {m for m in found if m == "dmkernels" or m.startswith("dmkernels.")}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_checker_finds_a_cycle_and_resolves_relative_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _resolve("dmkernels.p.q", False, 1, "x") == "dmkernels.p.x"
    assert _resolve("dmkernels.p.q", False, 2, "x") == "dmkernels.x"
    assert _resolve("dmkernels.p", True, 1, "q") == "dmkernels.p.q"
    assert _resolve("dmkernels.p.q", False, 1, None) == "dmkernels.p"


def test_the_graph_sees_the_known_edges():
    graph = import_graph()
    # Guards against a checker that silently sees nothing.
    assert "dmkernels.ops" in graph["dmkernels.sampler"]
    assert "dmkernels.policies.base" in graph["dmkernels.policies.heuristics"]
    assert "dmkernels.sampler" in graph["dmkernels"]


def test_no_import_cycle_among_dmkernels_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
