"""The layers of server/ (docs/architecture.md): each folder imports only from itself and the
layers below it, and only the app factory names the single-hub baseline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.docs import ROOT

SERVER = ROOT / "server"

ALLOWED = {
    "wire": {"wire"},
    "ops": {"ops", "wire"},
    "transport": {"transport", "ops", "wire"},
    "bot": {"bot", "ops", "wire"},
    "rooms": {"rooms", "bot", "transport", "ops", "wire"},
    "web": {"web", "rooms", "bot", "transport", "ops", "wire"},
}
"""What each layer may import, itself included (the entry points at the top may import all)."""


def imported_layers(path: Path) -> set[str]:
    """The layers of server/ that the module at ``path`` imports."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]  # ("server", layer, ...)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                parts = (*base, *(node.module.split(".") if node.module else ()))
                names = (
                    [(*parts, alias.name) for alias in node.names] if not node.module else [parts]
                )
            else:
                names = [tuple((node.module or "").split("."))]
        elif isinstance(node, ast.Import):
            names = [tuple(alias.name.split(".")) for alias in node.names]
        else:
            continue
        found |= {name[1] for name in names if name[0] == "server" and len(name) > 1}
    return found


LAYERED = sorted(p for p in SERVER.rglob("*.py") if p.parent != SERVER)


@pytest.mark.parametrize("path", LAYERED, ids=lambda p: str(p.relative_to(SERVER)))
def test_a_module_imports_only_its_own_layer_and_those_below(path: Path) -> None:
    layer = path.relative_to(SERVER).parts[0]
    assert imported_layers(path) <= ALLOWED[layer]


def test_every_layer_folder_has_its_rule() -> None:
    folders = {p.name for p in SERVER.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(ALLOWED)


def names_in_code(path: Path) -> set[str]:
    """Every name the code of ``path`` uses or imports (docstrings and comments aside)."""
    tree = ast.parse(path.read_text())
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
    return names


def test_only_the_app_factory_names_the_baseline() -> None:
    naming = {
        str(p.relative_to(SERVER)) for p in SERVER.rglob("*.py") if "GlobalHub" in names_in_code(p)
    }
    assert naming == {"rooms/baseline.py", "web/app.py"}
