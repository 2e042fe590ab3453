"""The import graph, read from the source: one direction, no circles.

Layers, bottom to top (docs/architecture.md)::

    fedtitan      the library: data, models, selection, devices, training, results, config
    clients       Flower's ClientApp, the boards' proxy and deployment helpers
    strategies    Flower's ServerApp: the round in parts, aggregation, the fleet policy
    simulations   the launcher (run, sweep, the command line, the Python API's verbs) and,
                  in rooms of their own, the papers' experiments and the benchmarks

A module may import its own layer and the layers below it, never above, whether the import
is at module level or inside a function. The one exception is :data:`FORWARD`: ``import
fedtitan as ft; ft.run(...)`` reaches the launcher through ``fedtitan/__init__.py``'s lazy
``__getattr__``. And no set of modules imports itself round in a circle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("fedtitan", "clients", "strategies", "simulations")
# the one documented upward import: fedtitan/__init__.py's lazy forward to the launcher
FORWARD = {("fedtitan", "simulations.api")}


def _name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {_name(p, root): p for layer in LAYERS for p in (root / layer).rglob("*.py")}


def imports(known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project's modules it imports (anywhere in its body), each resolved to
    the longest module name that exists (``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in known.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                while parts and ".".join(parts) not in known:
                    parts.pop()
                if parts and ".".join(parts) != mod:
                    graph[mod].add(".".join(parts))
    return graph


def _layer(mod: str) -> int:
    return LAYERS.index(mod.split(".")[0])


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in graph.items() for t in targets
                  if _layer(t) > _layer(m) and (m, t) not in FORWARD)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward_ = upward(imports(modules()))
    assert not upward_, "imports against the layers:\n" + "\n".join(f"  {m} -> {t}" for m, t in upward_)


def test_the_documented_forward_exists() -> None:
    graph = imports(modules())
    for src, dst in FORWARD:
        assert dst in graph.get(src, set()), f"{src} no longer forwards to {dst}: update FORWARD and the docs"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(set(graph) | {t for ts in graph.values() for t in ts}):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_circles() -> None:
    found = cycles(imports(modules()))
    assert not found, "import circles:\n" + "\n".join("  " + " <-> ".join(c) for c in found)


def test_the_checker_sees_function_level_imports_and_circles(tmp_path: Path) -> None:
    """The checker itself, on a tree made here: an upward import inside a function is found,
    and so is a circle that runs through a relative import."""
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "__init__.py").write_text("")
    (tmp_path / "simulations" / "run.py").write_text("X = 1\n")
    (tmp_path / "fedtitan" / "a.py").write_text("def f():\n    from simulations.run import X\n    return X\n")
    (tmp_path / "fedtitan" / "b.py").write_text("from . import c\n")
    (tmp_path / "fedtitan" / "c.py").write_text("import fedtitan.b\n")
    graph = imports(modules(tmp_path))
    assert upward(graph) == [("fedtitan.a", "simulations.run")]
    assert cycles(graph) == [["fedtitan.b", "fedtitan.c"]]
