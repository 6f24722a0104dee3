"""The package's import graph is a DAG: no module imports, even lazily, one that imports it back.

Every ``import`` statement counts wherever it stands (module level, inside a function or a method,
under ``try``), except under ``if TYPE_CHECKING:``, which never runs. ``from pkg import name`` is an
edge to the module ``pkg.name`` when that is a module, to ``pkg`` otherwise. A package's
``__init__`` that Python runs before one of its submodules is not counted as an edge (every
submodule would otherwise import its own package back).
"""

from __future__ import annotations

import ast
from pathlib import Path

import roboflamingo

PACKAGE_ROOT = Path(roboflamingo.__file__).resolve().parent


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package rooted at ``root``."""
    out = {}
    for file in sorted(root.rglob("*.py")):
        parts = [root.name, *file.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = file
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(base module, names imported from it) of every import that can run."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (see the module docstring for what counts)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        edges: set[str] = set()
        for base, names in _imported(ast.parse(file.read_text(), str(file)), name, file.name == "__init__.py"):
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            if len(targets) < len(names) or not names:  # `import base`, or attributes of base
                targets.append(base)
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first, inside the component)."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE_ROOT)
    assert len(graph) > 50 and "roboflamingo.models.policy" in graph  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_the_checker_finds_lazy_and_relative_imports_and_skips_type_checking(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        # a cycle only through an import inside a function
        "pkg/b.py": "def f():\n    from pkg.c import g\n    return g\n",
        "pkg/c.py": "import pkg.a\n",
        # a relative import inside a subpackage closes a second cycle
        "pkg/sub/__init__.py": "from .x import X\n",
        "pkg/sub/x.py": "from ..d import D\nX = 1\n",
        "pkg/d.py": "from pkg.sub import X as D\n",
        # typing-only imports never run: no cycle e <-> f
        "pkg/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.f import F\nelse:\n    import json\n",
        "pkg/f.py": "import typing\nfrom pkg import e\nif typing.TYPE_CHECKING:\n    import pkg.e\nF = 1\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.e"] == set() and graph["pkg.f"] == {"pkg.e"}
    assert graph["pkg.sub"] == {"pkg.sub.x"} and graph["pkg.sub.x"] == {"pkg.d"} and graph["pkg.d"] == {"pkg.sub"}
    assert sorted(find_cycles(graph)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"], ["pkg.d", "pkg.sub", "pkg.sub.x", "pkg.d"]]


# docs/development.md, "Layout": the layers, lowest first. A module may import its own top-level package and any
# lower layer, never a higher one. Keys are module-name prefixes (the longest one that matches wins).
LAYERS = [
    # foundation: vocabulary, config and file plumbing, shared loops
    {"roboflamingo", "roboflamingo.types", "roboflamingo.config", "roboflamingo.io", "roboflamingo.transforms",
     "roboflamingo.threads", "roboflamingo.process", "roboflamingo.subtask", "roboflamingo.batching",
     # recording expert rollouts into our split layout: both generators (tabletop, Meta-World) use it
     "roboflamingo.recording",
     # loading triton before Mesa's EGL: every simulator that renders through EGL needs it (tabletop, Meta-World)
     "roboflamingo.sim.egl"},
    # the parts: pure-torch models, datasets, the simulators (the tabletop, Meta-World), and the wire
    # side of deploy (what a remote policy needs to talk to a server)
    {"roboflamingo.models", "roboflamingo.data", "roboflamingo.sim", "roboflamingo.deploy.client",
     "roboflamingo.deploy.auth", "roboflamingo.deploy.codec", "roboflamingo.metaworld"},
    # where a policy comes from (checkpoint, expert, random, remote)
    {"roboflamingo.policies"},
    # the commands' engines
    {"roboflamingo.train", "roboflamingo.eval", "roboflamingo.deploy"},
    # what runs engines: the demo pipeline, the vla-eval benchmark, `roboflamingo env`, Meta-World's eval
    {"roboflamingo.demo", "roboflamingo.benchmarks", "roboflamingo.envinfo", "roboflamingo.metaworld.evaluate"},
    {"roboflamingo.cli"},
]


# The package's own namespace is the Python API (README's first screen): ``roboflamingo/__init__``'s
# ``__getattr__`` hands out ``RoboFlamingoPolicy`` on first use, so ``import roboflamingo`` stays light.
# That one lazy re-export is the only import allowed to point up from the foundation; the cycle check
# above still covers it.
API_EXPORTS = {"roboflamingo": {"roboflamingo.models.policy"}}


def layer_of(module: str) -> tuple[int, str]:
    """(layer, the prefix that placed it) for a module of the package."""
    best = max((p for layer in LAYERS for p in layer if module == p or module.startswith(p + ".")), key=len,
               default=None)
    assert best is not None, f"{module} is in no layer of LAYERS (tests/test_import_graph.py): add it"
    return next(i for i, layer in enumerate(LAYERS) if best in layer), best


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        level, _ = layer_of(module)
        for target in sorted(targets - API_EXPORTS.get(module, set())):
            t_level, _ = layer_of(target)
            same_package = module.split(".")[:2] == target.split(".")[:2]  # e.g. within roboflamingo.deploy
            if t_level > level or (t_level == level and level > 0 and not same_package):
                out.append(f"{module} (layer {level}) imports {target} (layer {t_level})")
    return out


def test_imports_point_down_the_layers_readme_states():
    violations = layer_violations(import_graph(PACKAGE_ROOT))
    assert not violations, "imports against the layering in docs/development.md:\n" + "\n".join(violations)


def test_the_layer_check_refuses_an_upward_or_sideways_import():
    graph = {"roboflamingo.models.policy": {"roboflamingo.eval.run"},  # up
             "roboflamingo.sim.env": {"roboflamingo.data.dataset"},  # sideways, between two parts
             "roboflamingo.eval.run": {"roboflamingo.sim.env", "roboflamingo.eval.config"}}  # fine
    assert layer_violations(graph) == [
        "roboflamingo.models.policy (layer 1) imports roboflamingo.eval.run (layer 3)",
        "roboflamingo.sim.env (layer 1) imports roboflamingo.data.dataset (layer 1)",
    ]
