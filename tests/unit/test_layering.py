"""dynd and dynctl share code only through ``common``: neither imports the other, and
``common`` imports neither (every import counts, ``TYPE_CHECKING`` ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# package -> the top-level packages it must never import
FORBIDDEN = {"dynd": {"dynctl"}, "dynctl": {"dynd"}, "common": {"dynd", "dynctl"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages named by any absolute import in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


MODULES = [path for package in FORBIDDEN for path in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_keeps_to_its_layer(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    crossed = imported_packages(path) & FORBIDDEN[package]
    assert not crossed, f"{path.relative_to(ROOT)} imports {sorted(crossed)}"


def test_the_check_sees_a_type_checking_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from dynctl.client import Client\n")
    assert "dynctl" in imported_packages(sample)
