"""The import graph of upanets_keras and the CLI has no circle (imports inside functions included)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"upanets_keras": ROOT / "upanets_keras", "upanets_keras_cli": ROOT / "cli"}


def module_files():
    """`{module name: path}` of every module of the two packages (a package is its `__init__.py`)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imported(node, name, is_package, modules):
    """The project's modules that one `import` or `from ... import` statement of module `name` loads by name."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if node.level:  # relative: from the module's package, up `level - 1` packages
        base = name.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module
    found = set()
    for alias in node.names:
        if f"{source}.{alias.name}" in modules:  # `from package import module`
            found.add(f"{source}.{alias.name}")
        elif source in modules:
            found.add(source)
    return found


def import_graph():
    """`{module: the project's modules it imports}`, from every import statement in the module, at any depth."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= imported(node, name, is_package, modules) - {name}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules (its first module repeated at the end), or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read():
    graph = import_graph()
    assert "upanets_keras.tuning.trials" in graph["upanets_keras.tuning.search"]
    assert "upanets_keras.tuning.space" in graph["upanets_keras.tuning.config"]
    assert "upanets_keras.layers.attention" in graph["upanets_keras.layers"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_collectives_room_reads_no_data():
    """`distribute/` shards and spreads what `training.assemble` builds; it imports nothing of `data/`."""
    graph = import_graph()
    for module, imports in graph.items():
        if module.startswith("upanets_keras.distribute"):
            assert not {m for m in imports if m.startswith("upanets_keras.data")}, module
