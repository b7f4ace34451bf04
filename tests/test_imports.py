"""The package's import graph, read from the source (no import runs): no cycles, counting the
imports inside functions too, and no import inside a function that is not on a list saying why.

An import moved into a function to dodge a cycle still is the cycle (it only fails later, on
the first call); so every function-level import of this package is an edge here, and every
function-level import at all must be a heavy or optional dependency, or be listed below.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "reranker_serve"
NAME = "reranker_serve"

# Third-party packages imported inside functions on purpose: optional extras (the server runs
# without them) or imports that cost seconds, which `--help`, the tests and paths that never
# use them should not pay for.
LAZY_DEPENDENCIES = {
    "redis": "optional extra (RERANKER_REDIS_URL)",
    "opentelemetry": "optional extra (RERANKER_OTEL_*)",
    "ray": "optional extra (Ray Serve deployment)",
    "openvino": "optional extra; imported only through models/openvino._openvino (telemetry hidden)",
    "nncf": "optional extra (OpenVINO weight compression)",
    "bm25s": "evaluation extra",
    "transformers": "seconds to import; loaded only when a model is",
    "sentence_transformers": "seconds to import; loaded only when a cross-encoder is",
    "huggingface_hub": "imported when the hub is used, not by --help",
    "torch": "device probes import its optional submodules only where they exist",
    "uvicorn": "the CLI validates its arguments before importing the server",
    "starlette": "ray: built inside the worker process",
    "prometheus_client": "multiprocess mode is chosen at run time (its import reads the environment)",
    "dotenv": "the CLI reads an env file only when asked",
    "httpx": "evaluation against a running server, and allowed image URLs (media.py), only",
    "tqdm": "evaluation progress only",
    "loguru": "the CLI configures logging before anything logs",
    "PIL": "images are decoded only when a request carries one (media.py)",
}

# Imports of this package inside functions, each with why it is not at module level. None may
# be there to dodge a cycle: the graph below counts them, and must still have no cycle.
LAZY_INTERNAL = {
    "__main__": "the CLI parses and validates its arguments before importing the server (fast --help, usage errors)",
    "app": "worker-process set-up (logging, offline mode, shared state) runs when the app is built",
    "bootstrap": "logging is configured after the offline environment is set (observability imports prometheus_client, "
                 "which reads its multiprocess variable on import)",
    "evaluation.harness": "the evaluation builds an engine only when it scores in-process",
    "models.layerwise": "the native layer-wise architectures import transformers' model code",
    "ray": "Ray pickles the deployment by reference; the worker imports the app itself",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import that runs (not under TYPE_CHECKING), and whether it is inside a function."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> tuple[set[str], set[str]]:
    """(modules of this package, top-level outside packages) that ``node`` imports."""
    internal: set[str] = set()
    external: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == NAME or alias.name.startswith(NAME + "."):
                internal.add(alias.name.removeprefix(NAME).lstrip("."))
            else:
                external.add(alias.name.split(".")[0])
        return internal, external
    if node.level == 0:
        if node.module and (node.module == NAME or node.module.startswith(NAME + ".")):
            base = node.module.removeprefix(NAME).lstrip(".")
        else:
            external.add((node.module or "").split(".")[0])
            return internal, external
    else:
        is_package = MODULES[module].name == "__init__.py"
        here = module.split(".") if module else []
        parent = here if is_package else here[:-1]
        parent = parent[: len(parent) - (node.level - 1)]
        base = ".".join(parent + ([node.module] if node.module else []))
    for alias in node.names:
        sub = f"{base}.{alias.name}".lstrip(".")
        internal.add(sub if sub in MODULES else base)
    return internal, external


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    lazy: list[tuple[str, int, str]] = []  # (module, line, what) for function-level imports
    for module, path in MODULES.items():
        for node, in_function in _imports(ast.parse(path.read_text(), str(path))):
            internal, external = _targets(module, node)
            edges[module] |= {t for t in internal if t in MODULES and t != module}
            if in_function:
                lazy += [(module, node.lineno, f".{t}") for t in internal] + [(module, node.lineno, t) for t in external]
    return edges, lazy


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def test_the_graph_reads_the_package():
    edges, _ = _graph()
    # A few edges the package certainly has: if these are missing, the parser is wrong, not the code.
    assert "engine" in MODULES and "models" in MODULES and "models.base" in MODULES
    assert "models.base" in edges["models"] or any("models.base" in edges[m] for m in edges if m.startswith("models."))
    assert "errors" in set().union(*edges.values())
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_counting_imports_inside_functions():
    cycles = _cycles(_graph()[0])
    assert not cycles, f"import cycles (module-level and function-level imports): {cycles}"


def test_every_import_inside_a_function_is_listed_with_its_reason():
    _, lazy = _graph()
    unexplained = [
        f"{module}:{line} imports {what}" for module, line, what in lazy
        if not (what in sys.stdlib_module_names or what in LAZY_DEPENDENCIES
                or (what.startswith(".") and module in LAZY_INTERNAL) or what == "__future__")
    ]
    assert not unexplained, "function-level imports with no listed reason (a cycle dodged?):\n" + "\n".join(unexplained)
    used = {module for module, _, what in lazy if what.startswith(".")}
    assert set(LAZY_INTERNAL) <= used, f"listed but no longer lazy: {set(LAZY_INTERNAL) - used}"
