"""embedkit's import graph: no circle, and no arrow from a lower layer to a higher one (issue 12, DESIGN.md).

Every module under embedkit/ is parsed with ``ast``; module-level AND function-level imports of embedkit modules are
edges (imports under ``if TYPE_CHECKING:`` too: they are what a type checker follows).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "embedkit"

# Bottom to top. A module may import from its own layer or any lower one, never from a higher one.
# Names are top-level modules / packages of embedkit ("__init__" is embedkit/__init__.py itself).
LAYERS: list[set[str]] = [
    {"errors", "_io", "_optional", "_format", "textio", "models", "dtypes", "demo_data"},
    {"folder"},
    {"spec", "pooling", "batching", "verify", "search"},
    {"backends", "precision"},
    {"embedder", "m3", "rerank", "__init__"},
    {"checkpoint", "export", "eval", "parity", "recipe", "corpus", "distributed"},
    {"train", "release", "serve"},
    {"cli", "demo", "__main__"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _edges(modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(importer, imported, line)`` for every import of an embedkit module, wherever it sits in the file."""
    edges = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "embedkit"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                if module.split(".")[0] != "embedkit":
                    continue
                # `from embedkit import pooling` imports the module embedkit.pooling, not embedkit/__init__
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            else:
                continue
            edges += [(name, t, node.lineno) for t in dict.fromkeys(targets) if t != name]
    return edges


def _top(module: str) -> str:
    parts = module.split(".")
    if parts[-1] == "__main__":  # an entry point (`python -m embedkit.train`) runs the command line: the top layer
        return "__main__"
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    top = _top(module)
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: its top-level name {top!r} is in no layer of tests/test_layering.py LAYERS; "
                         "add it to the layer it belongs to")


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_imports_point_downward_only():
    modules = _modules()
    upward = [f"{a}:{line} imports {b} (layer {_layer(a)} -> {_layer(b)})" for a, b, line in _edges(modules)
              if _layer(b) > _layer(a)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for a, b, _ in _edges(modules):
        graph.setdefault(a, set()).add(b)
    circle = _cycle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_check_sees_function_level_imports():
    """The graph includes imports inside functions (the circles of issue 12 hid there)."""
    edges = {(a, b) for a, b, _ in _edges(_modules())}
    assert ("embedkit.checkpoint.convert", "embedkit.embedder") in edges  # inside _embedding_cosine
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
