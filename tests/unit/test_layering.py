"""The project's layers, checked from the source (every import counts, ``TYPE_CHECKING``
ones included):

- dynd and dynctl share code only through ``common``: neither imports the other, and
  ``common`` imports neither;
- ``dynd.node`` assembles the node and is imported by ``dynd/__main__.py`` alone: the
  services reach each other through the parts and callables Node hands them, never
  through Node;
- the import graph of common, dynd and dynctl has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "dynd", "dynctl")
# package -> the top-level packages it must never import
FORBIDDEN = {"dynd": {"dynctl"}, "dynctl": {"dynd"}, "common": {"dynd", "dynctl"}}
# The only module that may import dynd.node: it starts the node.
NODE_IMPORTERS = {"dynd.__main__"}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import in ``path`` names: ``import a.b`` gives a.b,
    ``from a import b`` gives a and a.b (b may be a module or a name in a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def imported_packages(path: Path) -> set[str]:
    """Top-level packages named by any absolute import in ``path``."""
    return {name.split(".")[0] for name in imported_modules(path)}


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the project modules it imports (names that are no module of the
    project, such as a class imported from a module, are left out)."""
    paths = {module_name(root, p): p for package in packages
             for p in sorted((root / package).rglob("*.py"))}
    return {name: {m for m in imported_modules(path) if m in paths and m != name}
            for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for imported in sorted(graph.get(module, ())):
            if imported in on_path:
                return path[path.index(imported):] + [imported]
            if imported not in done:
                cycle = visit(imported)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def node_importers(graph: dict[str, set[str]]) -> set[str]:
    """Modules that import dynd.node but may not."""
    return {m for m, imported in graph.items() if "dynd.node" in imported} - NODE_IMPORTERS


MODULES = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_keeps_to_its_layer(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    crossed = imported_packages(path) & FORBIDDEN[package]
    assert not crossed, f"{path.relative_to(ROOT)} imports {sorted(crossed)}"


def test_only_the_entry_point_imports_the_node() -> None:
    assert not node_importers(import_graph(ROOT))


def test_the_import_graph_has_no_cycle() -> None:
    assert find_cycle(import_graph(ROOT)) is None


def test_the_check_sees_a_type_checking_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from dynctl.client import Client\n")
    assert "dynctl" in imported_packages(sample)


def _sample_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"dynd/__init__.py": "", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_checks_see_a_service_that_imports_the_node(tmp_path: Path) -> None:
    root = _sample_tree(tmp_path, {
        "dynd/node.py": "",
        "dynd/__main__.py": "from dynd.node import Node\n",
        "dynd/gossip.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from dynd.node import Node\n",
        "dynd/admin.py": "from dynd import node\n",
    })
    assert node_importers(import_graph(root, ("dynd",))) == {"dynd.gossip", "dynd.admin"}


def test_the_checks_see_a_cycle_through_a_type_checking_import(tmp_path: Path) -> None:
    root = _sample_tree(tmp_path, {
        "dynd/a.py": "from dynd.b import B\n",
        "dynd/b.py": "from dynd import c\n",
        "dynd/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from dynd.a import A\n",
    })
    assert find_cycle(import_graph(root, ("dynd",))) == ["dynd.a", "dynd.b", "dynd.c", "dynd.a"]
    (root / "dynd" / "c.py").write_text("")
    assert find_cycle(import_graph(root, ("dynd",))) is None
