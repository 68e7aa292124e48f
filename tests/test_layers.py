"""The package layering stays true: every module imports only from its own layer or the layers below it, no
two modules import each other (directly or round a circle), and an import inside a function says why.

Read from the source with `ast` (nothing is imported), so a new upward import fails here before it can
make an import order matter. `pytest tests/test_layers.py -s` prints the layer table and each layer's
imports."""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("evosearch", "workers", "fitness", "storage")

# Lowest first. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors and config files", ("evosearch", "evosearch.errors", "evosearch.config_file")),
    ("merge methods (the registry)", ("evosearch.merge.methods",)),
    ("recipes", ("evosearch.recipe", "evosearch.mergekit_config")),
    ("merge engine", ("evosearch.merge",)),
    ("search spaces", ("evosearch.spaces",)),
    ("optimizers", ("evosearch.optimizers",)),
    ("storage", ("storage",)),
    ("fitness", ("fitness",)),
    ("zoo (test bed)", ("evosearch.zoo",)),
    ("workers", ("workers",)),
    ("search (orchestration)", ("evosearch.search",)),
    ("views", ("evosearch.views", "evosearch.api")),
    ("command line", ("evosearch.cli",)),
]


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported project module
    line: int
    in_function: bool
    explained: bool  # a comment on the import's line or just above it says why it is here


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
            if "migrations" not in p.parts}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer of tests/test_layers.py; add it"
    return rank


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found: list[Import] = []

    def target_modules(node) -> list[str]:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = _resolve(module, path.name == "__init__.py", node)
            # `from pkg import mod` imports the module pkg.mod when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        out = []
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.append(name)
        return out

    def explained(group: list) -> bool:
        """A comment on the line above a block of consecutive imports, or on one of its lines."""
        return any("#" in line for line in lines[max(0, group[0].lineno - 2):group[-1].end_lineno])

    def visit(node, in_function: bool) -> None:
        group: list = []
        children = list(ast.iter_child_nodes(node)) + [None]
        for child in children:
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                group.append(child)
                continue
            if group:
                said = explained(group)
                for imp in group:
                    targets = [t for t in target_modules(imp) if t != module]
                    found.extend(Import(module, t, imp.lineno, in_function, said) for t in targets)
                    if in_function and not said and not targets:
                        found.append(Import(module, "", imp.lineno, True, False))  # a library, unexplained
                group = []
            if child is None or (isinstance(child, ast.If) and _type_checking_only(child)):
                continue  # annotations only: never imported at run time
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    modules = project_modules()
    known = set(modules)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, known)]


def test_every_import_points_down(graph):
    upward = [f"{i.source}:{i.line} imports {i.target} ({LAYERS[layer_of(i.target)][0]} is above "
              f"{LAYERS[layer_of(i.source)][0]})"
              for i in graph if i.target and layer_of(i.target) > layer_of(i.source)]
    print("\nlayers, lowest first:")
    for rank, (name, prefixes) in enumerate(LAYERS):
        below = sorted({LAYERS[layer_of(i.target)][0] for i in graph
                        if i.target and layer_of(i.source) == rank and layer_of(i.target) < rank})
        print(f"  {rank:2d} {name:30s} {', '.join(prefixes):45s} imports from: {', '.join(below) or '-'}")
    print(f"{len([i for i in graph if i.target])} imports between project modules, {len(upward)} upward")
    assert not upward, "\n".join(upward)


def test_no_import_circles(graph):
    edges: dict[str, set[str]] = defaultdict(set)
    for i in graph:
        if i.target:
            edges[i.source].add(i.target)
    circles, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    print(f"\n{len(edges)} importing modules, {len(circles)} import circles")
    assert not circles, "\n".join(circles)


def test_imports_inside_functions_say_why(graph):
    silent = sorted({f"{i.source}:{i.line}" for i in graph if i.in_function and not i.explained})
    print(f"\n{len({(i.source, i.line) for i in graph if i.in_function})} imports inside functions, each with its reason")
    assert not silent, "imports inside a function without a comment saying why (start-up time?):\n" + "\n".join(silent)


def test_the_checker_sees_an_upward_import_and_an_unexplained_one(tmp_path):
    """A fitness module importing the search layer is upward; one under TYPE_CHECKING is not an import; a
    library imported inside a function without a comment is unexplained."""
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\nfrom evosearch.search import job\n"
                   "if TYPE_CHECKING:\n    from workers import pool\n\ndef f():\n    import torch\n")
    found = imports_of("fitness.bad", bad, {"evosearch.search.job", "workers.pool", "fitness.bad"})
    assert [(i.target, i.in_function, i.explained) for i in found] == [
        ("evosearch.search.job", False, False), ("", True, False)]
    assert layer_of("evosearch.search.job") > layer_of("fitness.bad")
