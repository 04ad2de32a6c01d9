"""The backup marker: how a node tells a restored data dir, and a restored old one."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import Rejected
from dynd import backup
from dynd.storage import Batch, Storage


def test_a_backup_has_the_data_and_a_marker_that_a_start_reads(tmp_path: Path) -> None:
    storage = Storage.open(str(tmp_path / "data"), sync="none")
    try:
        storage.stage(Batch().put(3, "b", b"k", b"staged, not yet committed"))
        size = backup.write_backup(storage, str(tmp_path / "copy"), "n1", 4)
        with pytest.raises(Rejected, match="exists"):
            backup.write_backup(storage, str(tmp_path / "copy"), "n1", 4)
        with pytest.raises(Rejected, match="absolute"):
            backup.write_backup(storage, "copy", "n1", 4)
    finally:
        storage.close()
    assert size == backup.directory_bytes(str(tmp_path / "copy")) > 0
    marker = backup.restored_from(str(tmp_path / "copy"))
    assert marker is not None and (marker["node"], marker["incarnation"]) == ("n1", 4)
    assert backup.restored_from(str(tmp_path / "data")) is None
    copy = Storage.open(str(tmp_path / "copy"), sync="none")
    try:
        assert copy.get(3, "b", b"k") == b"staged, not yet committed"
    finally:
        copy.close()
    (tmp_path / "copy" / backup.MARKER).write_text("not json")
    assert backup.restored_from(str(tmp_path / "copy")) == {}  # damaged, still a restore
    backup.finish_restore(str(tmp_path / "copy"))
    assert backup.restored_from(str(tmp_path / "copy")) is None


def test_a_backup_older_than_the_tombstone_grace_is_told_apart() -> None:
    assert not backup.older_than_grace({"created": 1000.0}, now=1000.0 + 86400, grace=86400)
    assert backup.older_than_grace({"created": 1000.0}, now=1001.0 + 86400, grace=86400)
    assert backup.older_than_grace({}, now=0.0, grace=86400)  # unreadable: assume old
