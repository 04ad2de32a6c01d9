"""Backups of one node's store, and how a node recognises that it starts on one.

A backup is a RocksDB checkpoint of the data dir (every column family at one
sequence number; hard links to the SST files where the backup is on the same file
system) plus the marker file ``MARKER``. Restoring is putting those files in
place of the data dir. The marker is what makes a restored node safe: its copy
is older than what it minted since, so a node that finds the marker never keeps
its actor (a clean-stop record in the copy describes a life that went on after
it), and takes an incarnation above every one the cluster knows of it
(Identity.renew_after_restore) before it serves; then it removes the marker.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from common.errors import Rejected
from dynd.storage import DATA_FORMAT, Storage, StorageError

log = logging.getLogger("dynd.backup")

MARKER = "DYND_BACKUP"  # a file in the backup's root directory


def write_backup(storage: Storage, path: str, node_id: str, incarnation: int) -> int:
    """Checkpoint ``storage`` into the new directory ``path`` with the marker; the bytes
    the backup's files take. Rejected if ``path`` exists or is not absolute (it names a
    place on the node's host, not the caller's); StorageError if RocksDB fails."""
    if not os.path.isabs(path):
        raise Rejected(f"backup directory {path!r} must be an absolute path on the node's host")
    if os.path.lexists(path):
        raise Rejected(f"backup directory {path} exists; name a new one")
    storage.checkpoint(path)
    marker = {"format": DATA_FORMAT, "node": node_id, "incarnation": incarnation,
              "created": time.time()}
    _write_synced(os.path.join(path, MARKER), json.dumps(marker).encode())
    log.info("event=backup_written node=%s path=%s", node_id, path)
    return directory_bytes(path)


def directory_bytes(path: str) -> int:
    """Bytes of the regular files directly in ``path`` (a RocksDB dir has no subdirs)."""
    with os.scandir(path) as entries:
        return sum(entry.stat(follow_symlinks=False).st_size for entry in entries
                   if entry.is_file(follow_symlinks=False))


def restored_from(data_dir: str) -> dict[str, Any] | None:
    """The marker of the backup ``data_dir`` was restored from; None if it was not."""
    try:
        with open(os.path.join(data_dir, MARKER), "rb") as marker:
            raw = marker.read()
    except FileNotFoundError:
        return None
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    return found if isinstance(found, dict) else {}  # a damaged marker still marks


def older_than_grace(marker: dict[str, Any], now: float, grace: float) -> bool:
    """Whether the backup predates the tombstone grace: its copy may hold values deleted
    since whose tombstones every replica has reaped, which anti-entropy would spread
    again. (A marker without a readable time counts as old.)"""
    created = marker.get("created")
    return not isinstance(created, int | float) or now - created > grace


def finish_restore(data_dir: str) -> None:
    """Remove the marker once the restored node's new incarnation is durable: from here on
    it is a node like any other (a crash before this renews once more, which is harmless)."""
    try:
        os.unlink(os.path.join(data_dir, MARKER))
    except FileNotFoundError:
        return
    _fsync_dir(data_dir)


def _write_synced(path: str, data: bytes) -> None:
    try:
        with open(path, "xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        _fsync_dir(os.path.dirname(path))
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
