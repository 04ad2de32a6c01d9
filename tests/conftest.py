"""Fixtures for every tier: ``make_node``, an in-process node on a temp data dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dynd.node import Node
from tests.integration.harness import STARTED
from tests.support.nodes import open_node

LOG_TAIL_LINES = 40  # of each running node's log, in a failing test's report


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """``make_node(node_id="n1", *, transport=None, state=None, **config)``: a Node on
    RocksDB in tmp_path (tests/support/nodes.py: open_node). Calling it again after
    ``node.storage.close()`` restarts the node on the same directory; every storage it
    opened is closed at teardown."""
    opened = []

    def make(node_id: str = "n1", **kwargs: Any) -> Node:
        node = open_node(tmp_path, node_id, **kwargs)
        opened.append(node.storage)
        return node

    yield make
    for storage in opened:
        storage.close()  # idempotent: a test may have closed it already


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failing test's report ends with the last lines of every dynd process still
    running: what the nodes saw (refused connections, timeouts, crashes) is in their logs,
    which are gone with the temporary directory by the time a CI failure is read."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for node in STARTED:
        if node.running():
            tail = node.log().splitlines()[-LOG_TAIL_LINES:]
            report.sections.append((f"log of {node.node_id} ({node.addr})", "\n".join(tail)))
