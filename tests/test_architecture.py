"""The layout is the architecture: imports point down the request's path, no circles, small
modules that say what they are for, and the runtime free of offline tools and training code."""

from __future__ import annotations

import ast

import pytest

from tests.support import REPO
from tools.imports import cycles, graph, imports_of, layer_of, modules, upward_imports

RUNTIME_MODULE_LINES = 400
# settings.py is one declaration per knob (env var, default, trade-off): it grows with the knobs.
LONGER = {"serving.settings.fields": 450}


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return graph()


def test_no_import_circle_in_serving(edges):
    assert cycles(edges) == []


def test_lower_layers_never_import_higher_ones(edges):
    assert upward_imports(edges) == []


def test_every_module_is_in_a_layer(edges):
    for name in edges:
        layer_of(name)  # raises for a module no layer claims


def test_runtime_imports_no_offline_code():
    """serving/ ships in the image alone: tools/, tests/, benchmarks/, loadtest/ and deploy/ do
    not (the devmodel command shim finds tools/ in a checkout and says so elsewhere)."""
    outside = {"tools", "tests", "benchmarks", "loadtest", "deploy", "training"}
    for name, path in modules("serving").items():
        if name == "serving.devmodel":
            continue
        found = imports_of(path, outside)
        assert not found, f"{name} imports {sorted(found)}"


def test_training_code_never_imports_serving():
    """code/ runs in stock SageMaker training containers and under AWS's toolkit."""
    for path in sorted((REPO / "code").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("serving", "tools")], f"{path} imports {names}"


def test_runtime_modules_are_small():
    for name, path in modules("serving").items():
        lines = len(path.read_text().splitlines())
        assert lines <= LONGER.get(name, RUNTIME_MODULE_LINES), f"{name} has {lines} lines; split it by concern"


@pytest.mark.parametrize("package", ["serving", "tools", "code"])
def test_every_module_says_what_it_is_for(package):
    for path in sorted((REPO / package).rglob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        if path.name == "__init__.py" and path.stat().st_size == 0:
            continue
        assert docstring and docstring.split("\n", 1)[0].strip(), f"{path} has no opening sentence"
