"""The packages are layered, and the layers point down:

    launch   the commands: may import every package below
    actors   the Ray actors: import drgrpo only
    demo     the CPU demo's task and base model, tiny models for tests: import drgrpo only
    drgrpo   the algorithm and its pure pieces: imports none of the others

and no module imports another that imports it back, through a chain of any length. Every
import statement counts, wherever it is (inside a function, a branch, `if __name__ ...`): a
lazy import is still a dependency, only a later one. Imports of other packages (third-party,
the standard library) are not checked. The modules are read with `ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("drgrpo", "demo", "actors", "launch")
# Which packages a module of each package may import (its own included).
ALLOWED = {
    "drgrpo": {"drgrpo"},
    "demo": {"drgrpo", "demo"},
    "actors": {"drgrpo", "actors"},
    "launch": {"drgrpo", "demo", "actors", "launch"},
}
# Importing one of these from the packages above is a violation too (they sit on top).
OUTSIDE = ("benchmarks", "tests")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(dotted name, line) for every import in `source`, at any depth. `from a import b` gives
    `a.b` (b may be a module; `resolve` falls back to `a`); relative imports are made absolute."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            prefix = node.module or ""
            if node.level:
                parts = module.split(".")
                base = parts[: len(parts) - node.level + is_package]
                prefix = ".".join(base + ([node.module] if node.module else []))
            names += [(f"{prefix}.{alias.name}" if alias.name != "*" else prefix, node.lineno)
                      for alias in node.names]
    return names


def resolve(name: str, modules: Iterable[str]) -> str | None:
    """The module of ours that importing `name` runs: its longest prefix that is one of
    `modules`; the top-level package itself for one we do not have (e.g. `benchmarks.x`);
    None for other packages."""
    modules = set(modules)
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return parts[0] if parts[0] in PACKAGES + OUTSIDE else None


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """module -> {module of ours it imports: line of the first such import}."""
    paths = {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for module, path in paths.items():
        edges = graph.setdefault(module, {})
        names = imported_names(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
        for name, line in names:
            target = resolve(name, paths)
            if target is not None and target != module:
                edges.setdefault(target, line)
    return graph


def layer_violations(graph: Mapping[str, Mapping[str, int]],
                     allowed: Mapping[str, set[str]] = ALLOWED) -> list[str]:
    """One line per import that points up or sideways: "a.b:LINE imports c.d (a may import ...)"."""
    out = []
    for module, edges in sorted(graph.items()):
        mine = module.split(".")[0]
        for target, line in sorted(edges.items()):
            if target.split(".")[0] not in allowed.get(mine, {mine}):
                ok = ", ".join(sorted(allowed.get(mine, {mine})))
                out.append(f"{module}:{line} imports {target} ({mine} may import only {ok})")
    return out


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Each group of modules that import each other (a strongly connected component of more than
    one module), as one chain through it that returns to its start: [a, b, c, a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graphs are small enough to recurse
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_chain(graph, set(group), group[0]) for group in groups)


def _chain(graph: Mapping[str, Iterable[str]], group: set[str], start: str) -> list[str]:
    """A shortest path from `start` back to itself inside `group` (breadth first)."""
    paths = {w: [start, w] for w in sorted(graph.get(start, ())) if w in group}
    frontier = list(paths)
    while start not in paths:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w in group and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return paths[start]


# ---------------------------------------------------------------- the rules, on the code


def test_layers_point_down():
    problems = layer_violations(import_graph())
    assert not problems, "imports against the layers:\n  " + "\n  ".join(problems)


def test_no_module_imports_one_that_imports_it_back():
    found = cycles(import_graph())
    assert not found, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in found)


def test_every_package_is_seen():
    graph = import_graph()
    for pkg in PACKAGES:
        assert pkg in graph and any(m.startswith(pkg + ".") for m in graph), pkg
    assert any(graph[m] for m in graph if m.startswith("launch.")), "no imports found at all?"


# ---------------------------------------------------------------- the checker, on examples


def test_imports_inside_functions_and_relative_ones_count():
    source = (
        "import os\n"
        "from drgrpo import algorithm\n"
        "def f():\n"
        "    from launch.train import main\n"
        "    if True:\n"
        "        import actors.learner as learner\n"
        "class C:\n"
        "    def g(self):\n"
        "        from . import sibling\n"
        "        from ..other import thing\n"
    )
    names = dict(imported_names(source, "drgrpo.sub.mod"))
    assert names == {"os": 1, "drgrpo.algorithm": 2, "launch.train.main": 4,
                     "actors.learner": 6, "drgrpo.sub.sibling": 9, "drgrpo.other.thing": 10}
    assert dict(imported_names("from . import x\n", "drgrpo", is_package=True)) == {"drgrpo.x": 1}
    modules = {"drgrpo", "drgrpo.algorithm", "launch.train", "actors.learner"}
    assert resolve("launch.train.main", modules) == "launch.train"  # a name in a module
    assert resolve("drgrpo.algorithm", modules) == "drgrpo.algorithm"
    assert resolve("drgrpo.gone", modules) == "drgrpo"  # `from drgrpo import gone`
    assert resolve("benchmarks.common", modules) == "benchmarks"
    assert resolve("torch.nn", modules) is None


def test_violations_are_found_and_named():
    graph = {
        "drgrpo.a": {"drgrpo.b": 3, "launch.run": 7},
        "drgrpo.b": {},
        "demo.tiny": {"drgrpo.b": 1, "actors.x": 2},
        "actors.x": {"drgrpo.a": 1, "launch.recovery": 40, "demo.tiny": 5},
        "launch.run": {"actors.x": 1, "demo.tiny": 2, "drgrpo.a": 3, "benchmarks": 4},
    }
    assert layer_violations(graph) == [
        "actors.x:5 imports demo.tiny (actors may import only actors, drgrpo)",
        "actors.x:40 imports launch.recovery (actors may import only actors, drgrpo)",
        "demo.tiny:2 imports actors.x (demo may import only demo, drgrpo)",
        "drgrpo.a:7 imports launch.run (drgrpo may import only drgrpo)",
        "launch.run:4 imports benchmarks (launch may import only actors, demo, drgrpo, launch)",
    ]
    assert layer_violations({"launch.run": {"actors.x": 1}, "actors.x": {"drgrpo.a": 1}}) == []


def test_cycles_are_found_with_their_chain():
    graph = {
        "a": {"b"}, "b": {"c"}, "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"}, "e": {"d"},  # d -> e -> d
        "f": {"a"}, "g": set(),  # on no cycle
    }
    assert cycles(graph) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    # The config modules' old shape: a function-level import back is a cycle too.
    source_config = "def parse_args():\n    from drgrpo.config_docs import help_text\n"
    source_docs = "from drgrpo.config import Config\n"
    modules = {"drgrpo.config", "drgrpo.config_docs"}
    graph = {m: {resolve(n, modules) for n, _ in imported_names(s, m)} - {None}
             for m, s in (("drgrpo.config", source_config), ("drgrpo.config_docs", source_docs))}
    assert cycles(graph) == [["drgrpo.config", "drgrpo.config_docs", "drgrpo.config"]]


def test_a_tree_on_disk_is_read(tmp_path):
    (tmp_path / "drgrpo").mkdir()
    (tmp_path / "drgrpo" / "__init__.py").write_text("")
    (tmp_path / "drgrpo" / "a.py").write_text("def f():\n    from launch import b\n")
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "b.py").write_text("import drgrpo.a\n")
    for pkg in ("demo", "actors"):
        (tmp_path / pkg).mkdir()
    graph = import_graph(tmp_path)
    assert graph == {"drgrpo": {}, "drgrpo.a": {"launch.b": 2}, "launch.b": {"drgrpo.a": 1}}
    assert layer_violations(graph) == ["drgrpo.a:2 imports launch.b (drgrpo may import only drgrpo)"]
    assert cycles(graph) == [["drgrpo.a", "launch.b", "drgrpo.a"]]
