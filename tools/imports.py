"""The drawing of serving/'s imports: which module imports which, the layers they sit in, and
the check that imports only ever point down (tests/test_architecture.py runs it).

    python -m tools.imports            # package-level drawing, as in docs/architecture.md
    python -m tools.imports --modules  # every module and what it imports

Layers, bottom to top: foundation (settings, errors, types, metrics, version) -> models ->
engines -> scheduling -> http -> process (server, cli). A module may import its own layer and
the layers below it, never above; the package ``__init__`` (the public surface) and the two
command shims (``serving.convert``, ``serving.devmodel``) sit on top. Static: every import
statement counts, including those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("serving.version", "serving.types", "serving.settings", "serving.errors", "serving.metrics",
                    "serving.threads")),
    ("models", ("serving.models",)),
    ("engines", ("serving.engines",)),
    ("scheduling", ("serving.scheduling",)),
    ("http", ("serving.http",)),
    ("process", ("serving.server", "serving.cli")),
    ("surface", ("serving", "serving.convert", "serving.devmodel")),
)


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str = "serving", root: Path = REPO) -> dict[str, Path]:
    """Every module of a package, by dotted name."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def imports_of(path: Path, known: Iterable[str]) -> set[str]:
    """The modules among ``known`` that a file imports (``from a import b`` counts as a.b when
    a.b is a module, else as a)."""
    known = set(known)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # import a.b.c of a package a.b: count a.b
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph(package: str = "serving", root: Path = REPO) -> dict[str, set[str]]:
    """module -> the package's modules it imports (itself excluded)."""
    found = modules(package, root)
    return {name: imports_of(path, found) - {name} for name, path in found.items()}


def layer_of(module: str) -> int:
    best, level = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    if level < 0:
        raise ValueError(f"{module} is in no layer: add it to tools/imports.py LAYERS")
    return level


def upward_imports(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a lower layer imports a higher one."""
    return sorted((a, b) for a, targets in edges.items() for b in targets if layer_of(b) > layer_of(a))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import circles: the strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    """serving.http.routes.info -> serving.http; top-level modules stay as they are."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, targets in edges.items():
        pa = package_of(a)
        out.setdefault(pa, set()).update(package_of(b) for b in targets if package_of(b) != pa)
    return out


def drawing(edges: dict[str, set[str]]) -> str:
    """The packages layer by layer, top first, each with what it imports."""
    packages = package_edges(edges)
    lines = []
    for level in reversed(range(len(LAYERS))):
        members = sorted(p for p in packages if layer_of(p) == level)
        if not members:
            continue
        lines.append(f"{LAYERS[level][0]}:")
        for member in members:
            targets = ", ".join(sorted(packages[member])) or "-"
            lines.append(f"  {member:<20} -> {targets}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.imports", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", action="store_true", help="every module, not only the packages")
    args = parser.parse_args(argv)
    edges = graph()
    if args.modules:
        for name in sorted(edges, key=lambda m: (-layer_of(m), m)):
            print(f"{name:<40} -> {', '.join(sorted(edges[name])) or '-'}")
    else:
        print(drawing(edges))
    problems = [f"upward: {a} -> {b}" for a, b in upward_imports(edges)]
    problems += [f"circle: {' -> '.join(c)}" for c in cycles(edges)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
