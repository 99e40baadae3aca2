"""The shape of the house, read from the source (the ``ast`` of every module in src/gdlab):

- each module imports at module level only from its own layer or the layers below it;
- an import inside a function points downward too, or defers a heavy edge (``plots``, ``progress``);
- the import graph, those deferred edges aside, has no cycle;
- no underscore name is used outside its module;
- rich, matplotlib, typer, tensorboard and lightning are imported only at the edges;
- no module finds hooks by ``hasattr``: one dispatcher (:class:`gdlab.loop.Hooks`) decides which hooks answer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "gdlab"

LAYERS = [  # bottom to top; a name stands for the module and, for a package, everything in it
    ("basics", ["errors", "guard", "resources", "resolve", "records", "data", "optim", "store", "checkpoint", "config",
                "models", "metrics", "threads", "distributed"]),
    ("core", ["problem"]),
    ("engine", ["loop", "population", "instruments", "callbacks", "run"]),
    ("studies", ["lr_select", "sweeps", "doctor", "lab"]),
    ("front doors", ["train", "watching", "experiment", "__init__"]),
    ("edges", ["cli", "plots", "progress", "integrations", "reports", "notebook"]),
]
# heavy edges a function may reach lazily (matplotlib, rich, tensorboard; notebook: a result's view in Jupyter,
# which draws with plots)
DEFERRABLE = {"gdlab.plots", "gdlab.progress", "gdlab.integrations.tensorboard", "gdlab.notebook"}
EDGE_ONLY = ("rich", "matplotlib", "typer", "tensorboard", "lightning", "transformers")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    for rank, (_, names) in enumerate(LAYERS):
        if head in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py")


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[tuple[str, list[str]]]:
    """The gdlab modules an import statement loads, each with the names it takes from it."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names if a.name.split(".")[0] == "gdlab"]
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "gdlab":
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append((sub, []) if sub in MODULES else (base, [alias.name]))
    return out


def _imports(module: str) -> list[tuple[str, list[str], bool, int]]:
    """(target module, names taken, inside a function, line) for every gdlab import of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    found = []

    def walk(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((target, names, nested, child.lineno) for target, names in _resolve(module, child))
            walk(child, inside)

    walk(tree, False)
    return found


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_imports_point_downward() -> None:
    wrong = []
    for module in MODULES:
        for target, _, nested, line in _imports(module):
            if target not in MODULES or _layer(target) <= _layer(module):
                continue
            if nested and target in DEFERRABLE:
                continue
            wrong.append(f"{module}:{line} imports {target} ({LAYERS[_layer(target)][0]} above "
                         f"{LAYERS[_layer(module)][0]})")
    assert not wrong, "\n".join(wrong)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, nested, _ in _imports(module):
            if target in MODULES and target != module and not (nested and target in DEFERRABLE):
                graph[module].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour and (found := visit(nxt)):
                return found
        colour[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in colour and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_underscore_name_is_used_outside_its_module() -> None:
    wrong = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        bound: dict[str, str] = {}  # local name -> gdlab module it refers to
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, names in _resolve(module, node):
                wrong.extend(f"{module}:{node.lineno} imports {target}.{n}" for n in names if _private(n))
                if not names:
                    alias = next(a for a in node.names if target.endswith(a.name))
                    if alias.asname or isinstance(node, ast.ImportFrom):
                        bound[alias.asname or alias.name.split(".")[-1]] = target
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound \
                    and _private(node.attr):
                wrong.append(f"{module}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("library", EDGE_ONLY)
def test_edge_libraries_stay_at_the_edges(library: str) -> None:
    wrong = []
    for module, path in MODULES.items():
        if _layer(module) == len(LAYERS) - 1:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            wrong.extend(f"{module}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == library)
    assert not wrong, "\n".join(wrong)


def _hook_discovery(source: str) -> list[int]:
    """The lines of ``source`` that find a hook of :data:`gdlab.loop.HOOKS` by name themselves: ``hasattr(x,
    "on_step_end")``, ``getattr(x, "close", None)`` (a default: the hook may be missing) or ``getattr(type(x),
    "on_diverge", ...)``."""
    from gdlab.loop import HOOKS

    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2):
            continue
        name = node.args[1]
        if not (isinstance(name, ast.Constant) and name.value in HOOKS):
            continue
        on_type = isinstance(node.args[0], ast.Call) and isinstance(node.args[0].func, ast.Name) and \
            node.args[0].func.id == "type"
        if node.func.id == "hasattr" or (node.func.id == "getattr" and (len(node.args) == 3 or on_type)):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_module_finds_hooks_by_hasattr() -> None:
    wrong = [f"{module}:{line}" for module, path in MODULES.items() for line in _hook_discovery(path.read_text())]
    assert not wrong, "hooks found outside gdlab.loop.Hooks:\n" + "\n".join(wrong)


def test_the_hook_discovery_finder_finds_discovery() -> None:
    source = """
handlers = [h.on_step_end for h in hooks if hasattr(h, "on_step_end")]
close = getattr(hook, "close", None)
mine = getattr(type(hook), "on_diverge", None) is not None
ahead = getattr(hook, "next_before", None)
fine = hasattr(model, "modules") and getattr(hook, "cost", "cheap") and getattr(hook, "on_fit_end")
"""
    assert _hook_discovery(source) == [2, 3, 4, 5]


# -- sizes: no class over 400 lines, no function over 100 (loop.run reads as one commented loop) ----------------
# a function is measured without its docstring: fit's documents 36 parameters; its code is what must stay short

CLASS_LINES, FUNCTION_LINES = 400, 100
TOO_BIG = {  # what is still over, at most as big as it is now; each is to be split (issue 25: one run, watch)
    "gdlab.loop.run": 140,  # the one commented loop: allowed by the rule itself
}


_CLASSES: set[str] = set()  # the names _sizes found to be classes (a private class is a class too)


def _sizes() -> dict[str, int]:
    found: dict[str, int] = {}
    for module, path in MODULES.items():
        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{prefix}.{child.name}"
                    if isinstance(child, ast.ClassDef):
                        _CLASSES.add(name)
                    first = child.lineno
                    if not isinstance(child, ast.ClassDef) and ast.get_docstring(child) is not None:
                        first = child.body[0].end_lineno + 1  # type: ignore[operator]
                    found[name] = child.end_lineno - first + 1  # type: ignore[operator]
                    visit(child, name)
        visit(ast.parse(path.read_text()), module)
    return found


def test_fit_is_a_short_composition() -> None:
    """fit reads like the lecture's steps: the run's start and end are gdlab.run.Run's, the loop is loop.run."""
    assert _sizes()["gdlab.train.fit"] <= 80


def test_no_class_over_400_lines_and_no_function_over_100() -> None:
    sizes = _sizes()
    over = {name: n for name, n in sizes.items() if "." in name and
            n > (CLASS_LINES if name in _CLASSES else FUNCTION_LINES)}
    grown = {name: n for name, n in over.items() if n > TOO_BIG.get(name, 0)}
    assert not grown, f"over the size rule (classes {CLASS_LINES} lines, functions {FUNCTION_LINES}): {grown}"
    gone = [name for name in TOO_BIG if name not in over]
    assert not gone, f"no longer over the rule: take them out of TOO_BIG: {gone}"
