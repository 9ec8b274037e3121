"""The layout: the library is one package, and no module imports another that imports it back,
at module level or inside a function (a cycle makes a module run half-initialised)."""

import ast
import glob
import os

from conftest import ROOT


def project_modules():
    """{module name: path} of the checkout's top-level modules and the package's."""
    paths = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "mbemlib", "*.py"))
    names = {}
    for path in paths:
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        names[name.removesuffix(".__init__")] = path
    return names


def imports(path, modules):
    """The project modules `path` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & set(modules)


def cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def graph():
    modules = project_modules()
    edges = {name: imports(path, modules) - {name} for name, path in modules.items()}
    edges["mbemlib"] = set()  # `from mbemlib import x` names the package, whose __init__ imports nothing
    return edges


def test_no_import_cycle():
    assert cycle(graph()) is None, " -> ".join(cycle(graph()))


def test_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_needs_no_top_level_module_but_noise_sim():
    """Installed (`pip install .`), mbemlib has noise_sim beside it and nothing else of the checkout."""
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("mbemlib"):
            outside = {t for t in targets if not t.startswith("mbemlib")}
            assert outside <= {"noise_sim"}, f"{name} imports {outside}"


def test_the_trainer_files_are_what_the_trainers_import():
    """store.TRAINER_FILES (whose digest keys every checkpoint) holds both trainers and every project
    module they reach, so that no edit to a trainer's code goes unnoticed on resume."""
    from mbemlib import store

    modules, edges = project_modules(), graph()
    reached, todo = set(), ["resnet", "resnet_torch"]
    while todo:
        name = todo.pop()
        if name not in reached and name != "mbemlib":
            reached.add(name)
            todo += edges[name]
    files = {os.path.relpath(modules[name], ROOT) for name in reached}
    assert files <= set(store.TRAINER_FILES), files - set(store.TRAINER_FILES)
