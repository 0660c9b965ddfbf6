"""The package's layers, read from the import statements of every module.

    data_workers, .parallel_workers, .torch,       public modules: may use any layer
    .sharding, .ray_source
        _caffe2/   the Caffe2 sink and upstream API    -> _core, _workers, _compat
        _compat    upstream's class and private names  -> _core
        _torch/    the PyTorch sink and Loader parts   -> _core, _workers
        _workers/  thread and process fetchers         -> _core
        _core/     the engine                          -> _core only; no Caffe2, no torch

Every import counts, function-local ones included (they hide cycles, they do not
remove them); only ``if TYPE_CHECKING:`` blocks are left out.  The rules hold
for the whole repository: no module imports the package root from inside the
package, and no import cycle exists among the repository's own modules.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "data_workers"
#: Top-level folders whose modules import each other by package name.
TREES = ("data_workers", "benchmarks", "tests", "examples", "scripts")
#: Layer -> the layers (besides itself) it may import.
ALLOWED = {
    "_core": set(),
    "_workers": {"_core"},
    "_torch": {"_core", "_workers"},
    "_compat": {"_core"},
    "_caffe2": {"_core", "_workers", "_compat"},
}
#: Layers that are one module rather than a folder.
MODULE_LAYERS = {"_compat"}
#: Third-party packages a layer must not import.
FORBIDDEN_THIRD_PARTY = {
    "_core": {"caffe2", "torch"},
    "_workers": {"caffe2", "torch"},
    "_torch": {"caffe2"},
    "_compat": {"caffe2", "torch"},
}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    if rel[0] in ("tests", "examples", "scripts"):
        rel = rel[1:]  # run with their folder on sys.path, imported by bare name
    return ".".join(rel)


def _modules() -> Dict[str, str]:
    found = {}
    for tree in TREES:
        for folder, _, files in os.walk(os.path.join(ROOT, tree)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    found[_module_name(path)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: str, known: Set[str]) -> List[str]:
    """Every module ``module`` imports, resolved to a module of ``known`` where it is one."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    base = module.split(".") if is_package else module.split(".")[:-1]
    found: List[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = base[:len(base) - child.level + 1]
                    target = ".".join(parts + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    sub = "%s.%s" % (target, alias.name)
                    found.append(sub if sub in known else target)
            visit(child)

    visit(tree)
    return found


@pytest.fixture(scope="module")
def graph() -> Dict[str, List[str]]:
    modules = _modules()
    known = set(modules)
    return {m: _imports(m, p, known) for m, p in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2 or parts[1] not in ALLOWED:
        return ""
    return parts[1] if len(parts) > 2 or parts[1] in MODULE_LAYERS else ""


def test_the_layers_are_folders() -> None:
    for layer in ALLOWED:
        path = layer + ".py" if layer in MODULE_LAYERS else os.path.join(layer, "__init__.py")
        assert os.path.isfile(os.path.join(ROOT, PACKAGE, path)), layer


def test_each_layer_imports_only_the_layers_below_it(graph: Dict[str, List[str]]) -> None:
    wrong: List[Tuple[str, str]] = []
    for module, imported in graph.items():
        layer = _layer(module)
        if not layer:
            continue
        for target in imported:
            top = target.split(".")[0]
            if top in FORBIDDEN_THIRD_PARTY.get(layer, ()):
                wrong.append((module, target))
            elif top == PACKAGE:
                other = _layer(target)
                if other != layer and other not in ALLOWED[layer]:
                    wrong.append((module, target))
    assert not wrong, "imports across the layer rules: %s" % wrong


def test_nothing_inside_the_package_imports_its_root(graph: Dict[str, List[str]]) -> None:
    wrong = [(m, t) for m, targets in graph.items() if m.startswith(PACKAGE + ".")
             for t in targets if t == PACKAGE]
    assert not wrong, "modules importing the package root from below: %s" % wrong


def _cycles(graph: Dict[str, List[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-imports."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]

    def strongconnect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                strongconnect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return found


def test_no_import_cycle_in_the_repository(graph: Dict[str, List[str]]) -> None:
    assert not _cycles(graph)


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import() -> None:
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _cycles({"a": ["b"], "b": []}) == []
