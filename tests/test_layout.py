"""The package's layers: no import cycle, and dependencies that point one way.

Every import statement in lmm_jax is read from the source (module level and
inside functions alike; only ``if TYPE_CHECKING:`` blocks, which never run,
are skipped) and the module graph is checked for cycles and for imports that
reach up the layering

    errors, distributions <- runtime <- core <- build <- inference, batched, report <- results, glmm <- model <- lmm_jax
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

import lmm_jax

PACKAGE = Path(lmm_jax.__file__).parent
# Lower number: lower layer. A module may import its own layer and the layers below.
LAYERS = {"errors": -1, "distributions": -1, "runtime": 0, "datasets": 0, "core": 1, "build": 2, "inference": 3, "batched": 3,
          "report": 3, "results": 4, "glmm": 4, "model": 5, "planning": 6, "__main__": 6}
# Same-rank packages that may import each other, one way: plotting draws profiles, the CLI runs bootstraps.
ALLOWED_ACROSS = {("report", "inference"), ("report", "batched")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    modules = {module_name(f): f for f in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        skipped = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                candidates = [source] + [f"{source}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (cycle := visit(v)):
            return cycle
    return None


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) == 1:
        return "lmm_jax", 7
    return parts[1], LAYERS[parts[1]]


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "lmm_jax.batched.batch" in graph["lmm_jax.model"]       # imported inside LMM.fit_batch
    assert "lmm_jax.inference.tests" in graph["lmm_jax.results"]    # imported inside LMMResult.coefs


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", sorted(import_graph()))
def test_imports_point_down_the_layers(module):
    own, rank = layer(module)
    for target in import_graph()[module]:
        other, other_rank = layer(target)
        if other == "lmm_jax" and own == "report":
            continue  # the CLI reads the package's version and its public functions
        assert other_rank < rank or other == own or (own, other) in ALLOWED_ACROSS, \
            f"{module} imports {target}: {other} is not below {own}"


def test_core_imports_no_pandas():
    for path in (PACKAGE / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {"pandas", "formulaic", "scipy"} & names, path.name
