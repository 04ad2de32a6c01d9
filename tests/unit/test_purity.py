"""The pure core imports nothing that does I/O or reads a clock (I/O at the edges)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = sorted(ROOT.glob("common/*.py")) + [
    ROOT / "dynd" / f"{name}.py"
    for name in ("claim", "membership", "auth", "detector", "quorum", "merkle", "routing",
                 "clocks", "querymerge")
] + [ROOT / "dynctl" / "topology.py"]
FORBIDDEN = {"trio", "socket", "rocksdict", "time", "random", "asyncio", "os", "subprocess",
             "threading", "selectors", "ssl", "dynd.storage", "dynd.transport", "dynd.server",
             "dynd.node", "dynctl"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_nothing_impure(path: Path) -> None:
    bad = {m for m in imported_modules(path)
           if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_check_sees_an_impure_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import trio\nfrom time import monotonic\n")
    assert imported_modules(sample) == {"trio", "time"}
