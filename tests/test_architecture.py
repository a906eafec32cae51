"""The package's shape: no import circles, no oversized files, layers that import downwards."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llmjax"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every llmjax module `path` imports, at module level or inside functions (including
    imports only made for type checking): a circle of any of them is a circle."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # `from pkg import sub` imports the submodule when there is one.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    graph = _graph()
    # A package's __init__ re-exports its own modules; importing a sibling through it is not
    # a circle of the design, so edges into one's own package's __init__ are left out.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and t != "llmjax")}
    circles = _circles(graph)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("llmjax.config", ("llmjax.models", "llmjax.train", "llmjax.attention", "llmjax.layers")),
        ("llmjax.runs", ("llmjax.train", "llmjax.decode", "llmjax.hf", "llmjax.cli")),
        ("llmjax.decode", ("llmjax.train", "llmjax.cli")),
        ("llmjax.hf", ("llmjax.train", "llmjax.cli")),
        ("llmjax.eval", ("llmjax.train", "llmjax.cli")),
        ("llmjax.objectives", ("llmjax.train", "llmjax.runs", "llmjax.cli")),
        ("llmjax.models", ("llmjax.train", "llmjax.objectives", "llmjax.runs")),
    ],
)
def test_layers_import_downwards(lower, upper):
    graph = _graph()
    wrong = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m == lower or m.startswith(lower + ".")
        for t in targets
        if any(t == u or t.startswith(u + ".") for u in upper)
    )
    assert not wrong, f"{lower} imports a layer above it: {wrong}"


def test_no_file_is_oversized():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines (split them by concept): {long}"
