"""The layout's rules, checked on the source (issue: layout by flow).

Imports run one way — ``chukan.errorcodes`` ← ``codecs``/``keys``/``permits`` ←
``gateway`` ← ``simulators`` ← ``simulators.devnet`` ← ``chukan.cli`` — inside
``gateway`` the shared plumbing (``core``) imports no flow, and the flows'
packages form no cycle; no module cycle anywhere; every import at module level
(none hidden in a function); no private name imported from another module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Import root → source folder (as pyproject.toml maps them).
PACKAGES = {
    "chukan.codecs": "codecs",
    "chukan.keys": "keys",
    "chukan.permits": "permits",
    "chukan.gateway": "gateway",
    "chukan.simulators": "simulators",
}
ROOT_MODULES = ("errorcodes", "cli", "__main__", "testing", "testing_fixtures")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (a submodule when one is named)
    names: tuple[str, ...]
    line: int
    top_level: bool


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for prefix, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((prefix, *parts))] = path
    for name in ROOT_MODULES:
        found[f"chukan.{name}"] = ROOT / "chukan" / f"{name}.py"
    return found


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str) -> Iterator[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    top: set[int] = set()
    for statement in tree.body:
        if isinstance(statement, ast.If) and _type_checking(statement):
            top.update(id(n) for n in statement.body)
        top.add(id(statement))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("chukan"):
                    yield Import(module, alias.name, (), node.lineno, id(node) in top)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if not target.startswith("chukan"):
                continue
            names = tuple(a.name for a in node.names)
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            for sub in submodules:
                yield Import(module, sub, (), node.lineno, id(node) in top)
            rest = tuple(n for n in names if f"{target}.{n}" not in MODULES)
            if rest or not submodules:
                yield Import(module, target, rest, node.lineno, id(node) in top)


IMPORTS = [imp for module in MODULES for imp in _imports(module)]


def _layer(module: str) -> int:
    if module == "chukan.errorcodes":
        return 0
    if module.startswith(("chukan.codecs", "chukan.keys", "chukan.permits")):
        return 1
    if module.startswith("chukan.gateway"):
        return 2
    if module.startswith("chukan.simulators.devnet"):
        return 4
    if module.startswith("chukan.simulators"):
        return 3
    return 5  # chukan.cli, chukan.__main__, chukan.testing (the pytest plugin): the top


def _where(imp: Import) -> str:
    return f"{MODULES[imp.module].relative_to(ROOT)}:{imp.line} imports {imp.target}"


def test_every_import_points_down_the_layers() -> None:
    upward = [_where(i) for i in IMPORTS if _layer(i.target) > _layer(i.module)]
    assert upward == []


def _flow(module: str) -> str | None:
    """The gateway sub-package of ``module`` (``core``, ``query``, …; a flow's package
    itself too, as ``from chukan.gateway import console`` names it), None for the top."""
    parts = module.split(".")
    if parts[:2] != ["chukan", "gateway"] or len(parts) < 3:
        return None
    if len(parts) == 3 and not (module in MODULES and _is_package(module)):
        return None  # a module at the top: app, network_face, openapi, serve
    return parts[2]


def test_gateway_core_imports_no_flow() -> None:
    found = [
        _where(i)
        for i in IMPORTS
        if _flow(i.module) == "core"
        and i.target.startswith("chukan.gateway.")
        and _flow(i.target) not in ("core", None)
    ]
    assert found == []


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    edges: dict[str, set[str]] = {}
    for imp in IMPORTS:
        if imp.target in MODULES and imp.target != imp.module:
            edges.setdefault(imp.module, set()).add(imp.target)
    assert _cycles(edges) == []


def test_the_gateway_flows_form_no_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for imp in IMPORTS:
        source, target = _flow(imp.module), _flow(imp.target)
        if source and target and source != target:
            edges.setdefault(source, set()).add(target)
    assert _cycles(edges) == []


def test_no_import_is_hidden_in_a_function() -> None:
    hidden = [_where(i) for i in IMPORTS if not i.top_level]
    assert hidden == []


def test_no_private_name_is_imported_from_another_module() -> None:
    private = [
        f"{_where(i)}: {name}"
        for i in IMPORTS
        for name in i.names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("chukan.gateway.query.routes", 2),
        ("chukan.simulators.devnet.network", 4),
        ("chukan.codecs.envelope", 1),
        ("chukan.cli", 5),
        ("chukan.testing", 5),
        ("chukan.testing_fixtures", 5),
    ],
)
def test_layers_are_assigned_as_documented(module: str, expected: int) -> None:
    assert module in MODULES
    assert _layer(module) == expected


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("chukan.gateway.console", "console"),
        ("chukan.gateway.console.pages", "console"),
        ("chukan.gateway.cli.persons", "cli"),
        ("chukan.gateway.app", None),
        ("chukan.gateway", None),
    ],
)
def test_flows_are_assigned_by_package(module: str, expected: str | None) -> None:
    assert module in MODULES
    assert _flow(module) == expected


def test_the_checker_sees_a_cycle_and_an_upward_import() -> None:
    """The rules would fail: a made-up cycle is found, a made-up upward import is named."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("chukan.simulators.hub") > _layer("chukan.gateway.core.db")
