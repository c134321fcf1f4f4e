"""No import cycle in mimo_ds, between files or between its parts (read from the source with `ast`, nothing run).

A part is a subpackage (`data/`, `models/`, `objectives/`, …; `kernels/` is installed as `mimo_ds.kernels`) or a
top-level module (`config`, `batch`, …). Part A imports part B when any file of A imports any file of B, lazily
inside a function or not. Parts must form layers: no part reaches itself again through the others, so a reader can
take them bottom-up and each part can be tested on the ones below it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mimo_ds"
#: Folders installed under the package from elsewhere in the tree (pyproject's package-dir mapping).
MAPPED = {"mimo_ds.kernels": ROOT / "kernels"}


def module_files(package: str, folder: Path, mapped: dict[str, Path]) -> dict[str, Path]:
    """Module name → file for `package` in `folder` and the folders mapped into it."""
    files = {}
    for name, root in {package: folder, **mapped}.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join([name, *parts])] = path
    return files


def import_graph(files: dict[str, Path], package: str) -> dict[str, set[str]]:
    """Module → the modules of the package it imports (a `from X import name` of a submodule counts as X.name)."""
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = module.split(".") if is_package else module.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a name inside a module: its module
                    target = target.rpartition(".")[0]
                if target.startswith(package) and target != module:
                    found.add(target)
        graph[module] = found
    return graph


def part_of(module: str, files: dict[str, Path], package: str) -> str:
    """`data/` for mimo_ds.data.loader, `config` for mimo_ds.config, `__init__` for the package itself."""
    names = module.split(".")
    if len(names) == 1:
        return "__init__"
    top = ".".join(names[:2])
    is_subpackage = files[top].name == "__init__.py" if top in files else True
    return f"{names[1]}/" if is_subpackage else names[1]


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def part_graph(graph: dict[str, set[str]], files: dict[str, Path], package: str) -> dict[str, dict[str, set[str]]]:
    """Part → part it imports → the `file -> file` imports that make the arrow."""
    parts: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for module, targets in graph.items():
        for target in targets:
            a, b = part_of(module, files, package), part_of(target, files, package)
            if a != b:
                parts[a][b].add(f"{module} -> {target}")
    return parts


def describe(component: set[str], arrows: dict[str, dict[str, set[str]]]) -> str:
    return "; ".join(f"{a} -> {b} ({', '.join(sorted(arrows[a][b]))})"
                     for a in sorted(component) for b in sorted(arrows.get(a, {})) if b in component)


def check(package: str, folder: Path, mapped: dict[str, Path]) -> tuple[list[set[str]], list[set[str]], dict]:
    files = module_files(package, folder, mapped)
    graph = import_graph(files, package)
    arrows = part_graph(graph, files, package)
    return cycles(graph), cycles({a: set(b) for a, b in arrows.items()}), arrows


def test_no_file_level_cycle():
    file_cycles, _, _ = check(PACKAGE, ROOT / PACKAGE, MAPPED)
    assert not file_cycles, "files that import each other in a loop: " + " | ".join(map(str, file_cycles))


def test_no_part_imports_back_up():
    _, part_cycles, arrows = check(PACKAGE, ROOT / PACKAGE, MAPPED)
    assert not part_cycles, "parts that import each other: " + " | ".join(describe(c, arrows) for c in part_cycles)


def test_an_uninstalled_checkout_says_to_install():
    """The checkout on sys.path with no site-packages at all (no editable finder, no torch): one ImportError."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import mimo_ds.kernels"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "ImportError: mimo_ds.kernels is not installed (it is the repository's kernels/ folder, mapped into the "
        "package at install time): run `pip install -e .` in the repository, then import mimo_ds")
    assert "ModuleNotFoundError" not in proc.stderr


def test_the_checks_find_cycles(tmp_path):
    """A package made to hold both kinds of cycle: the walk must name them (relative and lazy imports included)."""
    pkg = tmp_path / "pkg"
    for path, text in {
        "__init__.py": "",
        "top.py": "def f():\n    from pkg.a import x\n",
        "a/__init__.py": "",
        "a/x.py": "X = 1\n",
        "a/v.py": "from ..b import y\n",
        "b/__init__.py": "",
        "b/y.py": "import pkg.top\n",
        "b/z.py": "from pkg.b import w\n",
        "b/w.py": "from . import z\n",
    }.items():
        (pkg / path).parent.mkdir(parents=True, exist_ok=True)
        (pkg / path).write_text(text)
    file_cycles, part_cycles, arrows = check("pkg", pkg, {})
    assert file_cycles == [{"pkg.b.z", "pkg.b.w"}]
    assert part_cycles == [{"top", "a/", "b/"}]
    assert describe(part_cycles[0], arrows) == ("a/ -> b/ (pkg.a.v -> pkg.b.y); b/ -> top (pkg.b.y -> pkg.top); "
                                                "top -> a/ (pkg.top -> pkg.a.x)")
