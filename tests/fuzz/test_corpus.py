"""Replay the kept fuzz corpus (and any saved crash) through the fuzz properties.

Every input atheris found interesting stays a regression test in ``make test``, without
atheris installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.properties import check_stream

HERE = Path(__file__).parent
INPUTS = sorted(p for d in ("corpus", "crashes") if (HERE / d).is_dir()
                for p in (HERE / d).iterdir() if p.is_file())


def test_corpus_is_kept() -> None:
    assert len(INPUTS) >= 7  # at least the seeds of properties.seed


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name[:12]}")
def test_fuzz_input_keeps_the_properties(path: Path) -> None:
    check_stream(path.read_bytes())
