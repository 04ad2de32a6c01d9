"""Every test under tests/sim carries the ``sim`` marker: ``pytest -m sim`` selects the
simulator's tests from anywhere (registered in pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest

SIM_DIR = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's hook sees the whole session's items: mark only the ones in this directory.
    for item in items:
        if item.path.is_relative_to(SIM_DIR):
            item.add_marker(pytest.mark.sim)
