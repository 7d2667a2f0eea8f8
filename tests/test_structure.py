"""The layout of DESIGN.md, checked: layers, no import cycles, units a reader can hold.

Entry points → app and routers → protocol, sessions and alignment → manager,
scheduler and the services under them → the engine seam and the foundations.
A module may import from its own layer or a lower one, never a higher one;
only the app layer (and the two entry points) may import FastAPI. A new module
must be placed in a layer here, which is the point: where it sits is a
decision, not an accident of what it happened to import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

LAYERS: dict[str, int] = {
    # 0: the engine seam and foundations every part agrees on
    **dict.fromkeys(
        ["constants", "config", "languages", "engine", "text", "audio", "realtime_audio", "weights"], 0
    ),
    # 1: model residency, scheduling, decoding and what runs beside it
    **dict.fromkeys(
        ["scheduler", "unit", "manager", "decode", "health", "metrics", "archive", "speech", "stopstore"],
        1,
    ),
    # 2: the wire protocols, dictation sessions and alignment (no FastAPI)
    **dict.fromkeys(
        [
            "protocol",
            "journal",
            "gate",
            "recognizer",
            "stream",
            "sessions",
            "ws",
            "realtime_events",
            "realtime",
            "align",
            "openai",
        ],
        2,
    ),
    # 3: the app, its routers and the cross-cutting HTTP concerns
    **dict.fromkeys(
        [
            "access",
            "http",
            "services",
            "app",
            "drain",
            "routes_ops",
            "routes_openai",
            "routes_align",
            "routes_dictation",
        ],
        3,
    ),
}
APP_LAYER = 3
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250


def _modules() -> dict[str, ast.Module]:
    return {
        path.stem.removeprefix("polyasr_"): ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(REPO.glob("polyasr_*.py"))
    }


MODULES = _modules()


def _imports(tree: ast.Module) -> set[str]:
    """Top-level package names this module imports (``polyasr_x`` as ``x``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return {n.removeprefix("polyasr_") if n.startswith("polyasr_") else f"<{n}>" for n in names}


def _service_deps(name: str) -> set[str]:
    return {dep for dep in _imports(MODULES[name]) if dep in MODULES and dep != name}


def test_every_module_has_a_layer() -> None:
    assert sorted(set(MODULES) - set(LAYERS)) == []
    assert sorted(set(LAYERS) - set(MODULES)) == []  # no stale entries


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers(name: str) -> None:
    upward = sorted(dep for dep in _service_deps(name) if LAYERS[dep] > LAYERS[name])
    assert upward == [], f"polyasr_{name} (layer {LAYERS[name]}) imports a higher layer: {upward}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_app_layer_knows_fastapi(name: str) -> None:
    web = {"<fastapi>", "<starlette>", "<uvicorn>"} & _imports(MODULES[name])
    assert LAYERS[name] == APP_LAYER or not web, f"polyasr_{name} imports {sorted(web)}"


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
    assert too_long == [], f"polyasr_{name}: {too_long}"


def test_the_readme_map_names_every_module() -> None:
    """The README's "How it is built" table is the newcomer's map: a module
    missing from it is a module nobody is told the job of."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"polyasr_(\w+)\.py", section))
    for row in re.findall(r"`polyasr_routes_\w+\.py`((?:, `_\w+\.py`)*)", section):
        named |= {f"routes_{n}" for n in re.findall(r"`_(\w+)\.py`", row)}
    assert sorted(set(MODULES) - named) == []
