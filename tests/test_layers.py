"""The package's layout holds its rules: imports run down the layers, no two modules import each
other (directly or round a loop), and no `_`-name is used outside its module. Read from the
package's own source (every import statement, those inside functions and TYPE_CHECKING too)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cliptool"

# Lowest first. A module may import its own layer's unit and anything in a lower layer; two units
# of one layer (index and search, models and store, serve and bench) do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("durable",),  # writing files in an order a crash cannot break (imports nothing of cliptool)
    ("errors", "config"),  # the ground floor
    ("media",),  # files, decoding, time
    ("models", "store"),  # pixels and words to vectors; the three LevelDB stores
    ("analysis",),  # one pass over a video
    ("vectors",),  # search structures derived from the stores
    ("index", "search"),  # an index run and check; queries and ranking
    ("writers",),  # frames, clips, sheets, timelines, players
    ("api",),  # the public face: cliptool.Index (api.py) and the names `import cliptool` gives
    ("serve", "bench"),  # the web app; benchmarks
    ("cli",),  # the command line
    ("__main__",),  # `python -m cliptool`
]


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: dict[str, set[str]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)  # "importer: what"


def _module_names(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def read_graph(root: Path) -> Graph:
    """The import graph of the package at `root` (module -> modules of the package it imports)."""
    pkg = root.name
    graph = Graph(_module_names(root))

    def owner(name: str) -> str | None:
        while name and name not in graph.modules:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in graph.modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}  # local name -> a package module it stands for
        for node in ast.walk(tree):
            targets: list[tuple[str, str | None, str]] = []  # (module, name imported from it, local name)
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = module.split(".") if is_pkg else module.split(".")[:-1]
                    here = here[: len(here) - node.level + 1]
                    base = ".".join(here + ([node.module] if node.module else []))
                for alias in node.names:
                    if f"{base}.{alias.name}" in graph.modules:
                        targets.append((f"{base}.{alias.name}", None, alias.asname or alias.name))
                    else:
                        targets.append((base, alias.name, alias.asname or alias.name))
            elif isinstance(node, ast.Import):
                targets = [(alias.name, None, alias.asname or alias.name) for alias in node.names]
            for target, name, local in targets:
                if target != pkg and not target.startswith(pkg + "."):
                    continue
                found = owner(target)
                if found is None:
                    continue
                if found != module:
                    graph.edges.setdefault(module, set()).add(found)
                    if name is not None and _is_private(name):
                        graph.private.append(f"{module}: {found}.{name}")
                    hidden = [p for p in found.split(".")[1:] if _is_private(p)]
                    if hidden and found.rpartition(".")[0] != module.rpartition(".")[0]:
                        graph.private.append(f"{module}: {found}")
                if name is None:
                    aliases[local] = found
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _is_private(node.attr)
                    and aliases.get(node.value.id, module) != module):
                graph.private.append(f"{module}: {aliases[node.value.id]}.{node.attr}")
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.edges.get(v, ())):
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

    for v in sorted(graph.modules):
        if v not in index:
            visit(v)
    return groups


def unit_of(module: str) -> str:
    """The top-level module or folder a module belongs to; the package itself is the face."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "api"


def layer_of(module: str) -> int:
    unit = unit_of(module)
    for rank, units in enumerate(LAYERS):
        if unit in units:
            return rank
    raise KeyError(f"{module}: its unit {unit!r} is in no layer (add it to LAYERS)")


def upward(graph: Graph) -> list[str]:
    """Imports that point up the layers, or sideways between two units of one layer."""
    wrong = []
    for module, targets in sorted(graph.edges.items()):
        for target in sorted(targets):
            if unit_of(module) == unit_of(target):
                continue
            if layer_of(target) >= layer_of(module):
                wrong.append(f"{module} -> {target}")
    return wrong


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_graph(PACKAGE)


def test_no_import_cycles(graph: Graph) -> None:
    assert cycles(graph) == []


def test_no_private_name_is_used_outside_its_module(graph: Graph) -> None:
    assert graph.private == []


def test_every_unit_has_a_layer(graph: Graph) -> None:
    for module in graph.modules:
        layer_of(module)


def test_imports_point_down_the_layers(graph: Graph) -> None:
    assert upward(graph) == []


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """A made-up package with a loop, a private import, an upward import and a `mod._name`."""
    root = tmp_path / "cliptool"
    (root / "media").mkdir(parents=True)
    (root / "search").mkdir()
    (root / "__init__.py").write_text("")
    (root / "media" / "__init__.py").write_text("")
    (root / "search" / "__init__.py").write_text("")
    (root / "errors.py").write_text("from cliptool.media import decode\n")
    (root / "media" / "decode.py").write_text("from cliptool.errors import Boom\nfrom .frames import _cut\n")
    (root / "media" / "frames.py").write_text("def _cut(): ...\n")
    (root / "search" / "rank.py").write_text("from cliptool.media import frames\n\nframes._cut()\n")
    found = read_graph(root)
    assert cycles(found) == [["cliptool.errors", "cliptool.media.decode"]]
    assert sorted(found.private) == ["cliptool.media.decode: cliptool.media.frames._cut",
                                     "cliptool.search.rank: cliptool.media.frames._cut"]
    assert upward(found) == ["cliptool.errors -> cliptool.media.decode"]


def test_the_largest_module_and_function_stay_readable(graph: Graph) -> None:
    """No module over 1,200 lines, no function over 160: the sizes a newcomer can read."""
    sizes = {m: len(p.read_text().splitlines()) for m, p in graph.modules.items()}
    assert max(sizes.values()) <= 1200, max(sizes, key=sizes.__getitem__)
    longest = []
    for module, path in graph.modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                longest.append((node.end_lineno - node.lineno + 1, f"{module}.{node.name}"))
    assert max(longest)[0] <= 160, max(longest)
