"""The architecture, checked: the core imports no framework and no matplotlib when imported,
and its modules depend one way down (analysis -> result -> view), without cycles.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import rfest

SRC = Path(rfest.__file__).parent
HEAVY = ("torch", "jax", "jaxlib", "flax", "keras", "tensorflow", "matplotlib", "PIL")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> Iterator[str]:
    """Modules ``path`` imports when run, anywhere in it, except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {
        name: {m for m in _runtime_imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_importing_rfest_imports_no_framework_and_no_matplotlib() -> None:
    code = (
        "import json, sys, rfest, rfest.compat.types\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# Lazy imports only, each inside a function: the compat shims copy a framework-specific API,
# and the CLI loads a model file in its own framework.
FRAMEWORK_SHIMS = {"rfest.compat.pytorch", "rfest.compat.keras", "rfest._cli"}


def test_no_core_module_names_a_framework() -> None:
    offenders = {
        name: sorted(m for m in _runtime_imports(path) if m.split(".")[0] in HEAVY[:6])
        for name, path in ((_module_name(p), p) for p in SRC.rglob("*.py"))
        if name not in FRAMEWORK_SHIMS
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_views_import_no_analysis() -> None:
    allowed = {"rfest._result", "rfest._units", "rfest._image", "rfest._errors"}
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("rfest._plots"):
            assert {d for d in deps if not d.startswith("rfest._plots")} <= allowed, name


def test_results_do_not_import_their_analysis() -> None:
    deps = _graph()["rfest._effective._result"]
    assert "rfest._effective._analysis" not in deps
    assert not any(d.startswith(("rfest._registry", "rfest._api")) for d in deps)


def test_core_modules_import_each_other_without_cycles() -> None:
    graph = {
        name: {d for d in deps if d != "rfest" and not name.startswith(f"{d}.")}
        for name, deps in _graph().items()
    }
    # package __init__ modules only re-export: their edges point down, never up
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle.extend([*stack[stack.index(dep) :], dep])
                return True
            if dep not in state and visit(dep, [*stack, dep]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if start not in state and visit(start, [start]):
            break
    assert cycle == []
