"""The package's architecture, checked from its source: no import cycles, imports only go
down the layers, no module over 600 lines, and no heavy import on ``import energydsl`` or
``energydsl --help``.

Imports are read with :mod:`ast`, so imports inside functions count, and so do those under
``if TYPE_CHECKING``; relative imports are resolved.  ``from energydsl.x import name``
is an import of the module ``energydsl.x.name`` when that is a module, else of ``energydsl.x``.

    python -m pytest tests/test_architecture.py -q   # the checks
    python tests/test_architecture.py                # cycles=N, then each layer violation
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from collections import deque
from functools import lru_cache
from pathlib import Path

MAX_LINES = 600

# bottom to top: a module may import from its own layer and the layers below it.
# A module belongs to the layer of the longest prefix that names it or a package above it.
LAYERS = [
    ("foundation", ["energydsl.errors", "energydsl._version", "energydsl.registry", "energydsl.atomic"]),
    ("lang", ["energydsl.lang"]),
    ("ops", ["energydsl.ops"]),
    ("expr", ["energydsl.expr"]),
    ("mechanisms", ["energydsl.mechanisms"]),
    ("data", ["energydsl.data"]),
    ("terms", ["energydsl.terms"]),
    ("solvers", ["energydsl.solvers"]),
    ("optim", ["energydsl.optim"]),
    ("compiler", ["energydsl.compiler"]),
    ("model", ["energydsl.model", "energydsl.building"]),
    ("training", ["energydsl.training"]),
    ("runs", ["energydsl.runs"]),
    ("reporting", ["energydsl.reporting"]),
    ("top", ["energydsl.api", "energydsl.cli", "energydsl.sklearn", "energydsl"]),
]

HEAVY_ON_IMPORT = ("matplotlib", "numba", "tensorboard")


def package_dir() -> Path:
    """The directory of the ``energydsl`` that Python imports (the installed one, or PYTHONPATH's)."""
    import energydsl

    return Path(energydsl.__file__).resolve().parent


@lru_cache(maxsize=None)
def modules(root: Path) -> dict[str, Path]:
    """Every module of the package: dotted name → file (a package is its ``__init__.py``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@lru_cache(maxsize=None)
def imports(root: Path) -> dict[str, dict[str, int]]:
    """module → {imported module of the package: line of the first such import}."""
    mods = modules(root)
    edges: dict[str, dict[str, int]] = {name: {} for name in mods}
    for name, path in mods.items():
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = base.split(".")
                    package = package[: len(package) - (node.level - 1)]
                    source = ".".join(package + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in mods else source
                           for alias in node.names]  # fmt: skip
            else:
                continue
            for target in targets:
                while target and target not in mods and "." in target:
                    target = target.rpartition(".")[0]
                if target in mods and target != name:
                    edges[name].setdefault(target, node.lineno)
    return edges


def cycles(root: Path) -> list[tuple[list[str], list[str]]]:
    """The import cycles: for each strongly connected component of two or more modules,
    its modules and the shortest cycle through the first of them, ``[a, b, ..., a]``."""
    edges = {name: sorted(targets) for name, targets in imports(root).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for start in edges:  # Tarjan, iteratively
        if start in index:
            continue
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(edges[start]))]
        while work:
            v, targets = work[-1]
            w = next(targets, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = set()
                    while True:
                        x = stack.pop()
                        on_stack.discard(x)
                        component.add(x)
                        if x == v:
                            break
                    if len(component) > 1:
                        components.append(component)
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                on_stack.add(w)
                work.append((w, iter(edges[w])))
            elif w in on_stack:
                low[v] = min(low[v], index[w])
    return [(sorted(c), _shortest_cycle(min(c), c, edges)) for c in sorted(components, key=len, reverse=True)]


def _shortest_cycle(start: str, component: set[str], edges: dict[str, list[str]]) -> list[str]:
    came_from = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in edges[v]:
            if w == start:
                path = [v]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return path[::-1] + [start]
            if w in component and w not in came_from:
                came_from[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # unreachable: a component of 2+ modules has one


def layer_of(module: str) -> int | None:
    best, best_length = None, -1
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = level, len(prefix)
    return best


def layer_violations(root: Path) -> list[str]:
    """``module -> imported  (layer > layer, line N)`` for each import of a higher layer."""
    found = []
    for name, targets in sorted(imports(root).items()):
        for target, line in sorted(targets.items()):
            mine, theirs = layer_of(name), layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                found.append(f"{name} -> {target}  ({LAYERS[mine][0]} imports {LAYERS[theirs][0]}, "
                             f"{modules(root)[name].relative_to(root.parent)}:{line})")  # fmt: skip
    return found


def describe_cycle(members: list[str], cycle: list[str]) -> str:
    return f"{len(members)} modules ({' '.join(members)}), e.g. {' -> '.join(cycle)}"


def test_no_import_cycles():
    found = cycles(package_dir())
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(describe_cycle(*c) for c in found)


def test_every_module_has_a_layer():
    missing = [name for name in modules(package_dir()) if layer_of(name) is None]
    assert not missing, "modules in no layer (add them to LAYERS): " + ", ".join(missing)


def test_imports_only_go_down_the_layers():
    found = layer_violations(package_dir())
    assert not found, f"{len(found)} import(s) of a higher layer:\n" + "\n".join(found)


def test_no_module_is_over_600_lines():
    root = package_dir()
    long = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules(root).items()}
    long = {name: lines for name, lines in long.items() if lines > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(f"{n} ({k})" for n, k in sorted(long.items()))


def test_the_checks_see_imports_inside_functions_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("from ..a import f\n")
    assert imports(package) == {"pkg": {}, "pkg.a": {"pkg.sub.b": 2}, "pkg.sub": {},
                                "pkg.sub.b": {"pkg.sub.c": 1}, "pkg.sub.c": {"pkg.a": 1}}  # fmt: skip
    members = ["pkg.a", "pkg.sub.b", "pkg.sub.c"]
    assert cycles(package) == [(members, members + ["pkg.a"])]


def test_the_public_names_resolve_lazily():
    import energydsl
    from energydsl._version import __version__

    assert energydsl.__version__ == __version__
    assert sorted(energydsl.__all__) == sorted(energydsl._EXPORTS)
    assert set(energydsl.__all__) <= set(dir(energydsl))
    for name in energydsl.__all__:
        value = getattr(energydsl, name)
        assert value.__name__ == name and getattr(importlib.import_module(energydsl._EXPORTS[name]), name) is value, name
    try:
        energydsl.no_such_name
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("energydsl.no_such_name did not raise AttributeError")


def _python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports the same energydsl as this test."""
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package_dir().parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip


def test_import_energydsl_loads_nothing_heavy():
    result = _python(f"""
        import sys
        import energydsl
        from energydsl import load  # the names are there, loaded on first use
        print(sorted(m for m in {HEAVY_ON_IMPORT!r} if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]", result.stdout


def test_cli_help_and_fmt_do_not_import_torch(tmp_path):
    spec = tmp_path / "sparse_coding.energy"
    spec.write_text((Path(__file__).resolve().parents[1] / "specs" / "sparse_coding.energy").read_text())
    result = _python(f"""
        import sys
        from energydsl.cli import main
        try:
            main(["--help"])
        except SystemExit as stop:
            assert stop.code == 0, stop.code
        print("after --help:", "torch" in sys.modules)
        print("fmt:", main(["fmt", "--check", {str(spec)!r}]))
        print("fmt --diff:", main(["fmt", "--check", "--diff", {str(spec)!r}]))
        print("after fmt:", "torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert {"after --help: False", "fmt: 0", "fmt --diff: 0", "after fmt: False"} <= set(lines), result.stdout


if __name__ == "__main__":
    root = package_dir()
    found_cycles = cycles(root)
    for found in found_cycles:
        print("cycle:", describe_cycle(*found))
    print(f"cycles={len(found_cycles)}")
    violations = layer_violations(root)
    for violation in violations:
        print(violation)
    print(f"layer_violations={len(violations)}")
    for name, path in modules(root).items():
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES:
            print(f"over {MAX_LINES} lines: {name} ({lines})")
    sys.exit(1 if found_cycles or violations else 0)
