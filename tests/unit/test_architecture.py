"""The package layering of docs/architecture.md, checked on the source: no import cycles, imports only downwards.

``features`` knows nothing of the others; ``training`` may import ``features``; ``serving`` may import both; the
app package ``propensity`` (CLI, settings, BentoML service definition) sits on top and no library imports it.
Every import counts, at module level or inside a function, except those under ``if TYPE_CHECKING:`` for cycles
(they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("features", "training", "serving", "propensity")
# what each top-level package may import from the project (itself included)
ALLOWED = {
    "features": {"features"},
    "training": {"features", "training"},
    "serving": {"features", "training", "serving"},
    "propensity": {"features", "training", "serving", "propensity"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """``(imported project module, runs at run time)`` for every import in the module's source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:  # a name inside a module: the module itself
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES and target != name:
                found.append((target, node.lineno not in typing_only))
    return found


def graph() -> dict[str, dict[str, bool]]:
    modules = project_modules()
    known = set(modules)
    edges: dict[str, dict[str, bool]] = {}
    for name, path in modules.items():
        out: dict[str, bool] = {}
        for target, runtime in imports_of(name, path, known):
            out[target] = out.get(target, False) or runtime
        edges[name] = out
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def test_the_graph_sees_the_packages() -> None:
    edges = graph()
    assert len(edges) > 60
    assert "features.build.builder" in edges["training.job"]  # a module-level import
    assert "serving.batch.run" in edges["propensity.cli.serving"] or any(
        "serving.batch.run" in edges[m] for m in edges if m.startswith("propensity.cli")
    )  # imports inside functions count too


def test_no_import_cycle_between_modules() -> None:
    runtime = {m: {t for t, rt in out.items() if rt and not m.startswith(t + ".")} for m, out in graph().items()}
    assert find_cycles(runtime) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_only_downwards(package: str) -> None:
    wrong = sorted(
        f"{m} imports {t}" for m, out in graph().items() if m.split(".")[0] == package
        for t in out if t.split(".")[0] not in ALLOWED[package]
    )
    assert wrong == []


def test_cycle_finder_and_import_parser_catch_planted_problems(tmp_path: Path) -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    planted = tmp_path / "mod.py"
    planted.write_text(
        "from typing import TYPE_CHECKING\n"
        "from features.spec.definition import FeatureSpec\n"
        "from . import sibling\n"
        "def f():\n    from propensity.config import Settings\n"
        "if TYPE_CHECKING:\n    from serving.store.base import ScoreStore\n"
    )
    known = {"features.spec.definition", "propensity.config", "serving.store.base", "features.x.sibling"}
    assert sorted(imports_of("features.x.mod", planted, known)) == [
        ("features.spec.definition", True), ("features.x.sibling", True), ("propensity.config", True),
        ("serving.store.base", False),
    ]
