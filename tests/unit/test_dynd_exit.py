"""How dynd ends when its node dies of a failed disk: trio hands the StorageError over in
an ExceptionGroup (a nursery's), and dynd must still log one event=fatal line and exit 1,
not print a traceback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from dynd import __main__ as dynd_main
from dynd.storage import StorageError


def test_a_disk_failure_in_the_node_is_one_fatal_line_and_exit_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def node_died(*args: Any, **kwargs: Any) -> None:
        raise BaseExceptionGroup("nursery", [StorageError("write failed: [Errno 5] EIO")])

    monkeypatch.setattr(trio, "run", node_died)
    monkeypatch.setattr(dynd_main, "setup_logging", lambda config: None)
    with caplog.at_level(logging.ERROR, logger="dynd"):
        result = CliRunner().invoke(dynd_main.main, ["--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, BaseExceptionGroup)
    fatal = [r.getMessage() for r in caplog.records if "event=fatal" in r.getMessage()]
    assert len(fatal) == 1 and "EIO" in fatal[0] and str(tmp_path / "d") in fatal[0]
