"""The package's layout: each module imports only from its own layer or a lower one, no import cycle, short modules.

Layers, lowest first: `common/`; `data/`; the paper's concepts at the top of the package (quantizers, networks,
models, the dense tasks' heads); `training/` and `evaluation/` (one layer: training reports held-out measures, and
evaluation opens trained run folders); `experiments/`; `cli/`.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fsq_ref"
LAYERS = {"common": 0, "data": 1, "": 2, "training": 3, "evaluation": 3, "experiments": 4, "cli": 5}
MAX_LINES = 300


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    sub = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""
    return LAYERS[sub]


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fsq_ref"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fsq_ref"))
    return found


def test_layer_of_a_module():
    assert layer("fsq_ref.fsq") == 2 and layer("fsq_ref") == 2
    assert layer("fsq_ref.common.errors") == 0 and layer("fsq_ref.data") == 1
    assert layer("fsq_ref.cli.commands") == 5 and layer("fsq_ref.cli") == 5


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_stay_in_their_layer_or_below(name):
    known = set(modules())
    above = {m: layer(m) for m in imports(modules()[name], known) if layer(m) > layer(name)}
    assert not above, f"{name} (layer {layer(name)}) imports from higher layers: {above}"


def test_no_import_cycle():
    known = set(modules())
    graph = {name: imports(path, known) - {name} for name, path in modules().items()}
    # A package imports its own submodules (cli/__init__ -> cli.commands); that edge is not a cycle by itself.
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(cycle, cycle[1:])):
                    pytest.fail("import cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_modules_are_short():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
