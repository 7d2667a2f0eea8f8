"""The package layout, checked: folders are layers, imports go down, no cycles, units a reader can hold.

The layer order is the list in ``docs/architecture.md`` (top first); the
layers themselves are the sub-packages of ``polyasr`` on disk. A module may
import from its own layer or a lower one, never a higher one; only the ``api``
layer (and the two entry points) may import FastAPI. A new folder must be
placed in that list, which is the point: where it sits is a decision, not an
accident of what it happened to import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "polyasr"
ARCHITECTURE = REPO / "docs" / "architecture.md"
WEB_LAYER = "api"
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250


def _documented_layers() -> list[str]:
    """Layer names from the architecture page's ``text`` block, lowest first."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    block = text.split("## Layers", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    return [line.split()[0] for line in block.strip().splitlines()][::-1]


LAYERS = _documented_layers()


def _dotted(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, ast.Module] = {
    _dotted(path): ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.rglob("*.py"))
}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _imports(tree: ast.Module) -> set[str]:
    """Absolute module names this module imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _service_deps(name: str) -> set[str]:
    return {dep for dep in _imports(MODULES[name]) if dep in MODULES and dep != name and dep != "polyasr"}


def test_the_folders_are_the_documented_layers() -> None:
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert sorted(LAYERS) == folders
    print("layers, lowest first:", " → ".join(LAYERS))


@pytest.mark.parametrize("name", sorted(m for m in MODULES if _layer(m)))
def test_imports_go_down_the_layers(name: str) -> None:
    rank = LAYERS.index(_layer(name))
    upward = sorted(dep for dep in _service_deps(name) if LAYERS.index(_layer(dep)) > rank)
    assert upward == [], f"{name} ({_layer(name)}) imports a higher layer: {upward}"


def test_the_basr_socket_does_not_import_realtime() -> None:
    wrong = {
        name: sorted(dep for dep in _service_deps(name) if dep.startswith("polyasr.live.realtime"))
        for name in MODULES
        if name.startswith("polyasr.live") and not name.startswith("polyasr.live.realtime")
    }
    assert {name: deps for name, deps in wrong.items() if deps} == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_api_layer_knows_fastapi(name: str) -> None:
    web = {dep.split(".")[0] for dep in _imports(MODULES[name])} & {"fastapi", "starlette", "uvicorn"}
    assert _layer(name) == WEB_LAYER or not web, f"{name} imports {sorted(web)}"


def test_no_import_cycles() -> None:
    graph = {name: _service_deps(name) for name in MODULES}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            pytest.fail("import cycle: " + " → ".join(cycle))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_units_fit_a_reader(name: str) -> None:
    too_long = []
    for node in ast.walk(MODULES[name]):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                too_long.append(f"{node.name}: {lines} lines (limit {limit})")
    assert too_long == [], f"{name}: {too_long}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_its_job(name: str) -> None:
    assert ast.get_docstring(MODULES[name]), f"{name} has no docstring"


def test_the_architecture_page_names_every_module() -> None:
    """Its module table is the newcomer's map: a module missing from it is a
    module nobody is told the job of."""
    named = set(re.findall(r"`(polyasr/[\w/]+\.py)`", ARCHITECTURE.read_text(encoding="utf-8")))
    on_disk = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert sorted(on_disk - named) == []
    assert sorted(named - on_disk) == []  # no stale rows


def test_no_code_edits_sys_path() -> None:
    """The package is installed (``pip install -e .``): entry points, benches and
    tests import it as it is, without putting folders on ``sys.path`` by hand."""
    sources = [REPO / "server.py", *REPO.glob("cuda/*.py"), *REPO.glob("bench/*.py"), *PACKAGE.rglob("*.py")]
    sources += [p for p in (REPO / "tests").rglob("*.py") if p != Path(__file__)]
    editing = [str(p.relative_to(REPO)) for p in sources if "sys.path." in p.read_text(encoding="utf-8")]
    assert editing == []
