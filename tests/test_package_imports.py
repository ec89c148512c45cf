"""The package's import graph, read from the source with ast (every import statement, at module level or inside
a function): no cycle between rnnfast's modules, the engine (rnnfast/_core) never imports a public module, and
nothing in rnnfast/ imports the checkout's bench/ or tests/ or any package outside the standard library and
the dependencies the package declares."""
from __future__ import annotations

import ast
import pathlib
import sys

import pytest

import rnnfast

PACKAGE_DIR = pathlib.Path(rnnfast.__file__).parent
# What rnnfast/ may import besides itself and the standard library: its compiled modules, its hard
# dependencies (numpy; ml_dtypes for the bfloat16 dtype), and the optional ones each imported only where used (torch by rnnfast.torch, cupy by the CUDA
# path, tqdm/matplotlib by the training utilities and examples' helpers, keras, jax and tensorflow by rnnfast.keras alone).
ALLOWED_OUTSIDE = {"_rnnfast", "numpy", "ml_dtypes", "torch", "cupy", "tqdm", "matplotlib", "keras", "jax", "tensorflow"}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The absolute names of the modules name imports (for ``from X import y``: X.y when that is a module of
    the package, else X)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            if origin == "__future__":
                continue
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                found.add(sub if sub in known else origin)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_the_graph_sees_the_package():
    g = graph()
    assert {"rnnfast", "rnnfast.layers", "rnnfast._core.functional", "rnnfast._core.dispatch"} <= set(g)
    assert "rnnfast._core.tuning" in g["rnnfast._core.dispatch"]  # a relative import, resolved
    assert "rnnfast._core.checks" in g["rnnfast.module"]


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """A cycle among the package's modules (a list of names, first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if nxt not in g:
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(g):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"numpy"}}) is None


def test_no_import_cycle_in_the_package():
    # The package's __init__ imports the public modules; a module that imported the package itself back
    # (``from rnnfast import x`` for a name, not a module) would show up here as a cycle through "rnnfast".
    # rnnfast.__main__ runs after the package is imported (python -m) and is left out of that one edge.
    g = graph()
    g["rnnfast.__main__"] = {m for m in g["rnnfast.__main__"] if m != "rnnfast"}
    assert find_cycle(g) is None, " -> ".join(find_cycle(g))


def test_the_engine_never_imports_a_public_module():
    for name, deps in graph().items():
        if name.startswith("rnnfast._core"):
            public = sorted(d for d in deps if d.startswith("rnnfast") and not d.startswith("rnnfast._core"))
            assert not public, f"{name} imports {public}"


def test_nothing_outside_the_package_its_dependencies_and_the_standard_library():
    for name, deps in graph().items():
        for dep in deps:
            top = dep.split(".")[0]
            if top == "rnnfast" or top in sys.stdlib_module_names:
                continue
            assert top in ALLOWED_OUTSIDE, f"{name} imports {dep}"


@pytest.mark.parametrize("forbidden", ["bench", "tests", "examples"])
def test_nothing_imports_the_checkouts_folders(forbidden):
    for name, deps in graph().items():
        assert not any(d.split(".")[0] == forbidden for d in deps), f"{name} imports {forbidden}"


def test_only_the_keras_adapter_imports_keras_jax_and_tensorflow():
    g = graph()
    assert {"rnnfast.keras", "rnnfast.keras._jax", "rnnfast.keras._tf"} <= set(g)
    for name, deps in g.items():
        if name == "rnnfast.keras" or name.startswith("rnnfast.keras."):
            continue
        bad = sorted(d for d in deps if d.split(".")[0] in ("keras", "jax", "tensorflow") or d.startswith("rnnfast.keras"))
        assert not bad, f"{name} imports {bad} (only rnnfast/keras/ may)"
