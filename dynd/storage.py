"""The node's RocksDB (the only rocksdict user): column families and group commit.

Column families: ``data`` (objects), ``hints`` (hinted handoff), ``meta`` (node
id, cluster state, ...), plus RocksDB's ``default``, unused.

Key layouts (big-endian lengths, so that ordering is byte ordering):

- data: ``partition (4) | len(bucket) (1) | bucket | len(key) (2) | key [| sk]``.
  One partition is one contiguous range, so handoff, Merkle builds and repair are
  range scans. An item's sort key comes last and has no length prefix: the key's
  length says where the key ends, whatever follows is the sort key, so the items
  of one (bucket, key) are contiguous and ordered bytewise by sort key, and a plain
  key (no sort key) is exactly the bytes it had before sort keys existed.
- hints: ``len(target) (1) | target | <data key>``: one target is one range.
- meta: the UTF-8 name.

Limits (from the layout): partition 0..2**32-1, bucket and hint target at most
255 bytes of UTF-8, key at most 65535 bytes; beyond them ValueError.

Writes go through group commit: ``stage()`` queues a Batch and makes its writes
visible at once to every read through an in-memory overlay of not-yet-committed
writes; ``run()`` (one service task) drains the queue into one RocksDB
WriteBatch, writes it (fsync under ``sync="batch"``), and wakes every waiter of
that drain. Reads call rocksdict directly (a worker thread's hop costs more than a
read: about 160 us). A synced write goes to a worker thread: RocksDB releases the GIL
through the write and its fsync, so the node goes on serving and staging the next
group meanwhile instead of stalling for every fsync; one write at a time, in staging
order (``_write_lock``). A read-modify-write without an ``await`` between read and
``stage()`` is thus atomic. The overlay holds only the writes of the current drain and the ones
staged while it was written, so scans merge it cheaply.

If a RocksDB write fails, every waiter of that drain gets StorageError, the
failed writes leave the overlay (readers may have seen them meanwhile), and
``run()`` raises it: a node whose disk fails stops (dynd exits 1 with
``event=fatal``) and the cluster routes around it, as for a crash.

The data dir carries its format version (meta ``data_format``, written on the
first open): a dynd refuses to open a dir written by a newer format than
``DATA_FORMAT``, since it could misread or rewrite what it does not know. A dir
from before the record existed is format 1, the layout above.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import rocksdict
import trio

from common.skrange import prefix_end as _prefix_end

log = logging.getLogger("dynd.storage")

CF_DATA = "data"
CF_HINTS = "hints"
CF_META = "meta"
_COLUMN_FAMILIES = (CF_DATA, CF_HINTS, CF_META)
_MAX_PARTITION = 2**32 - 1
_MAX_NAME_BYTES = 255
_MAX_KEY_BYTES = 65535
_BLOCK_CACHE_BYTES = 64 * 1024 * 1024
_MAX_OPEN_FILES = 512
_BLOOM_BITS_PER_KEY = 10
DATA_FORMAT = 1  # the layout above; raise it with any change an older dynd would misread
META_DATA_FORMAT = "data_format"
SCAN_PAGE = 256  # rows iter_partition reads between two checkpoints (about 0.4 ms of hashing)
# Data deletes (reaped objects, dropped partitions) staged since the last compaction pass
# that start the next one (run_compactions).
COMPACT_AFTER_DELETES = 1000

_Op = tuple[str, bytes, bytes | None]  # (column family, raw key, value or None = delete)
ItemId = tuple[str, bytes, bytes | None]  # (bucket, key, sort key or None): one item
Row = tuple[str, bytes, bytes | None, bytes]  # (bucket, key, sort key or None, value)


class StorageError(Exception):
    """RocksDB could not open, or could not write a batch; the node should stop."""


class StorageClosed(StorageError):
    """The storage was used after close()."""


class NewerDataFormat(StorageError):
    """The data dir was written by a newer dynd than this one."""


# --- key layout --------------------------------------------------------------------


def _name_bytes(what: str, name: str) -> bytes:
    raw = name.encode()
    if len(raw) > _MAX_NAME_BYTES:
        raise ValueError(f"{what} is {len(raw)} bytes of UTF-8, at most {_MAX_NAME_BYTES}")
    return raw


def _partition_prefix(partition: int) -> bytes:
    if not 0 <= partition <= _MAX_PARTITION:
        raise ValueError(f"partition {partition} is outside 0..{_MAX_PARTITION}")
    return partition.to_bytes(4, "big")


def _as_bytes(what: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, got {type(value).__name__}")


def data_key(partition: int, bucket: str, key: bytes, sk: bytes | None = None) -> bytes:
    """The data column family key of (partition, bucket, key) or of its item ``sk``."""
    key = _as_bytes("key", key)
    raw_bucket = _name_bytes("bucket name", bucket)
    if len(key) > _MAX_KEY_BYTES:
        raise ValueError(f"key is {len(key)} bytes, at most {_MAX_KEY_BYTES}")
    if sk is None:
        return b"".join((_partition_prefix(partition), bytes((len(raw_bucket),)), raw_bucket,
                         len(key).to_bytes(2, "big"), key))
    sk = _as_bytes("sort key", sk)
    if not sk:  # b"" would be the plain key's bytes
        raise ValueError("a sort key must not be empty")
    return b"".join((_partition_prefix(partition), bytes((len(raw_bucket),)), raw_bucket,
                     len(key).to_bytes(2, "big"), key, sk))


def _decode_data_key(raw: bytes, offset: int = 0) -> tuple[int, str, bytes, bytes | None]:
    """Inverse of data_key() for the data key starting at ``offset`` of ``raw``:
    (partition, bucket, key, sort key or None)."""
    try:
        partition = int.from_bytes(raw[offset:offset + 4], "big")
        bucket_end = offset + 5 + raw[offset + 4]
        bucket = raw[offset + 5:bucket_end].decode()
        (key_len,) = struct.unpack_from(">H", raw, bucket_end)
    except (IndexError, UnicodeDecodeError, struct.error) as exc:
        raise StorageError(f"corrupt storage key {raw!r}") from exc
    key_end = bucket_end + 2 + key_len
    key = raw[bucket_end + 2:key_end]
    if len(key) != key_len:
        raise StorageError(f"corrupt storage key {raw!r}")
    return partition, bucket, key, raw[key_end:] or None


def _hint_prefix(target: str) -> bytes:
    raw_target = _name_bytes("hint target", target)
    return bytes((len(raw_target),)) + raw_target


def hint_key(target: str, partition: int, bucket: str, key: bytes,
             sk: bytes | None = None) -> bytes:
    """The hints column family key of a hint for ``target``."""
    return _hint_prefix(target) + data_key(partition, bucket, key, sk)


def _decode_hint_key(raw: bytes) -> tuple[str, int, str, bytes, bytes | None]:
    try:
        target = raw[1:1 + raw[0]].decode()
    except (IndexError, UnicodeDecodeError) as exc:
        raise StorageError(f"corrupt hint key {raw!r}") from exc
    return (target, *_decode_data_key(raw, 1 + raw[0]))


# --- batches and tickets -----------------------------------------------------------


class Batch:
    """Writes to apply atomically, built by the caller, then staged or written.

    Keys are encoded (and validated) as they are added, so a bad key is a
    ValueError at the call site, never a failed commit.
    """

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[_Op] = []

    def __len__(self) -> int:
        return len(self.ops)

    def put(self, partition: int, bucket: str, key: bytes, value: bytes,
            sk: bytes | None = None) -> Batch:
        self.ops.append((CF_DATA, data_key(partition, bucket, key, sk),
                         _as_bytes("value", value)))
        return self

    def delete(self, partition: int, bucket: str, key: bytes, sk: bytes | None = None
               ) -> Batch:
        self.ops.append((CF_DATA, data_key(partition, bucket, key, sk), None))
        return self

    def put_hint(self, target: str, partition: int, bucket: str, key: bytes,
                 value: bytes, sk: bytes | None = None) -> Batch:
        raw_key = hint_key(target, partition, bucket, key, sk)
        self.ops.append((CF_HINTS, raw_key, _as_bytes("value", value)))
        return self

    def delete_hint(self, target: str, partition: int, bucket: str, key: bytes,
                    sk: bytes | None = None) -> Batch:
        self.ops.append((CF_HINTS, hint_key(target, partition, bucket, key, sk), None))
        return self

    def put_meta(self, name: str, value: bytes) -> Batch:
        self.ops.append((CF_META, name.encode(), _as_bytes("value", value)))
        return self

    def delete_meta(self, name: str) -> Batch:
        self.ops.append((CF_META, name.encode(), None))
        return self


class Ticket:
    """Completion of one staged batch: ``await ticket.wait()`` until it is durable, or
    ``on_done(callback)`` to be called then (no task needed to wait)."""

    __slots__ = ("_done", "_error", "_callbacks")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[StorageError | None], None]] = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        self._done.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self._failure())
            except Exception:  # one waiter's bug must not stop the group commit
                log.exception("event=ticket_callback_crash")

    def _failure(self) -> StorageError | None:
        if self._error is None:
            return None
        failure = StorageError(f"write failed: {self._error}")
        failure.__cause__ = self._error
        return failure

    def on_done(self, callback: Callable[[StorageError | None], None]) -> None:
        """Call ``callback(None)`` once the batch is committed, ``callback(StorageError)``
        if the commit failed; at once if that is already known."""
        if self._done.is_set():
            callback(self._failure())
        else:
            self._callbacks.append(callback)

    async def wait(self) -> None:
        """Return once the batch is committed; raise StorageError if the commit failed.

        Cancelling the wait does not cancel the write: a staged batch is committed.
        """
        await self._done.wait()
        failure = self._failure()
        if failure is not None:
            raise failure


@dataclass(slots=True)
class _Staged:
    seq: int
    ops: tuple[_Op, ...]
    ticket: Ticket = field(default_factory=Ticket)


# --- storage -----------------------------------------------------------------------


def _cf_options(cache: rocksdict.Cache) -> rocksdict.Options:
    options = rocksdict.Options(raw_mode=True)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_bloom_filter(_BLOOM_BITS_PER_KEY, False)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    options.set_block_based_table_factory(table)
    options.set_compression_type(rocksdict.DBCompressionType.lz4())
    options.set_level_compaction_dynamic_level_bytes(True)
    return options


def _db_options(cache: rocksdict.Cache) -> rocksdict.Options:
    options = _cf_options(cache)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    options.set_max_open_files(_MAX_OPEN_FILES)
    options.set_keep_log_file_num(5)
    options.set_max_background_jobs(2)
    return options


class Storage:
    """One node's RocksDB with an overlay of staged writes and a group-commit writer.

    Not thread-safe: use it from the one trio thread. Run ``run()`` in a nursery
    for ``write()`` and ticket waits to complete.
    """

    def __init__(self, db: rocksdict.Rdict, path: str, fsync: bool, max_batch_ops: int) -> None:
        """Use Storage.open(); this takes over an open Rdict (and closes it on failure)."""
        self._db: rocksdict.Rdict | None = db
        self._path = path
        self._max_batch_ops = max_batch_ops
        self._write_options = rocksdict.WriteOptions()
        self._write_options.sync = fsync
        self._synced_options = rocksdict.WriteOptions()
        self._synced_options.sync = True
        # One RocksDB write at a time, groups in staging order, whichever thread writes;
        # the groups a worker wrote wait in _written for the trio thread to finish them.
        self._write_lock = threading.Lock()
        self._written: list[tuple[list[_Staged], BaseException | None]] = []
        # Column-family views (reads) and handles (WriteBatch): both pin the DB open,
        # so close() drops every one of them before closing it.
        self._views = {name: db.get_column_family(name) for name in _COLUMN_FAMILIES}
        self._handles = {name: db.get_column_family_handle(name) for name in _COLUMN_FAMILIES}
        self._overlay: dict[str, dict[bytes, tuple[bytes | None, int]]] = {
            name: {} for name in _COLUMN_FAMILIES}
        self._queue: deque[_Staged] = deque()
        self._has_work = trio.Event()
        self._next_seq = 0
        self._hint_counts: dict[str, int] = {}
        self._deletes: dict[int, int] = {}  # partition -> data deletes since its compaction
        self._deletes_total = 0
        self._compaction_due = trio.Event()
        try:
            self._rebuild_hint_counts()
        except BaseException:
            self.close()
            raise
        self.group_commits = 0  # RocksDB WriteBatches written (each one fsync under "batch")
        self.batches_committed = 0  # staged Batches those covered

    @classmethod
    def open(cls, path: str, *, sync: str = "batch", max_batch_ops: int = 4096) -> Storage:
        """Open (creating if needed) the database in directory ``path``.

        ``sync``: "batch" fsyncs every group commit, "none" never does.
        ``max_batch_ops``: a group commit stops adding batches past this many
        operations (one larger batch is still written whole). Raises
        StorageError if RocksDB cannot open (e.g. another process holds it).
        """
        if sync not in ("batch", "none"):
            raise ValueError(f"sync must be 'batch' or 'none', got {sync!r}")
        if max_batch_ops < 1:
            raise ValueError(f"max_batch_ops must be at least 1, got {max_batch_ops}")
        cache = rocksdict.Cache(_BLOCK_CACHE_BYTES)
        try:
            os.makedirs(path, exist_ok=True)
            db = rocksdict.Rdict(path, _db_options(cache),
                                 column_families={n: _cf_options(cache)
                                                  for n in _COLUMN_FAMILIES})
        except Exception as exc:  # rocksdict raises plain Exception
            raise StorageError(f"cannot open RocksDB at {path}: {exc}") from exc
        storage = cls(db, path, sync == "batch", max_batch_ops)
        try:
            storage._check_data_format()
        except BaseException:
            storage.close()
            raise
        return storage

    def _check_data_format(self) -> None:
        """Refuse a dir of a newer format; record ours in a dir that has none yet."""
        raw = self.get_meta(META_DATA_FORMAT)
        if raw is None:  # written before the node stages anything, outside the counters
            write_batch = self._build_batch([_Staged(-1, tuple(Batch().put_meta(
                META_DATA_FORMAT, str(DATA_FORMAT).encode()).ops))])
            synced = rocksdict.WriteOptions()
            synced.sync = True
            assert self._db is not None
            try:
                self._db.write(write_batch, synced)
            except Exception as exc:  # rocksdict raises plain Exception
                raise StorageError(f"cannot record the data format in {self._path}: "
                                   f"{exc}") from exc
            return
        try:
            found = int(raw)
        except ValueError:
            raise StorageError(f"data dir {self._path} has an unreadable data format "
                               f"record {raw!r:.40}") from None
        if found > DATA_FORMAT:
            raise NewerDataFormat(
                f"data dir {self._path} was written by data format {found}, newer than the "
                f"{DATA_FORMAT} this dynd reads: run the newer dynd (or restore a backup "
                f"taken before the upgrade)")

    @property
    def path(self) -> str:
        """The database directory."""
        return self._path

    # -- reads (all see staged writes) --

    def _check_open(self) -> None:
        if self._db is None:
            raise StorageClosed(f"storage {self._path} is closed")

    def _lookup(self, cf: str, raw_key: bytes) -> bytes | None:
        self._check_open()
        staged = self._overlay[cf].get(raw_key)
        if staged is not None:
            return staged[0]
        return self._views[cf].get(raw_key)

    def get(self, partition: int, bucket: str, key: bytes, sk: bytes | None = None
            ) -> bytes | None:
        return self._lookup(CF_DATA, data_key(partition, bucket, key, sk))

    def get_hint(self, target: str, partition: int, bucket: str, key: bytes,
                 sk: bytes | None = None) -> bytes | None:
        return self._lookup(CF_HINTS, hint_key(target, partition, bucket, key, sk))

    def get_meta(self, name: str) -> bytes | None:
        return self._lookup(CF_META, name.encode())

    def meta_names(self, prefix: str) -> list[str]:
        """Names of the meta entries that start with ``prefix``, in order."""
        low = prefix.encode()
        rows = self._range(CF_META, low, _prefix_end(low), None, values=False)
        return [raw.decode() for raw, _ in rows]

    def _range(self, cf: str, low: bytes, high: bytes | None, limit: int | None,
               values: bool = True, reverse: bool = False) -> list[tuple[bytes, bytes]]:
        """Keys in [low, high), RocksDB merged with the overlay, at most ``limit``: in
        order, or with ``reverse`` in descending order (RocksDB's own reverse iterator,
        so a reverse scan costs what a forward one does).

        With ``values=False`` the values are returned as b"" (counting, key scans).
        """
        self._check_open()
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        staged = sorted(((k, v) for k, (v, _) in self._overlay[cf].items()
                         if k >= low and (high is None or k < high)), reverse=reverse)
        read_options = rocksdict.ReadOptions()
        if high is not None and not reverse:
            # Only the upper bound: set_iterate_lower_bound sets the upper bound; seek instead.
            read_options.set_iterate_upper_bound(high)
        found: list[tuple[bytes, bytes]] = []
        i = 0
        it = self._views[cf].iter(read_options)
        try:
            if not reverse:
                it.seek(low)
            elif high is None:
                it.seek_to_last()
            else:
                it.seek_for_prev(high)  # the last key <= high: high itself is excluded
                if it.valid() and it.key() == high:
                    it.prev()
            step = it.prev if reverse else it.next
            while limit is None or len(found) < limit:
                db_key = it.key() if it.valid() else None
                if reverse and db_key is not None and db_key < low:
                    db_key = None  # walked below the range
                staged_key = staged[i][0] if i < len(staged) else None
                if db_key is None and staged_key is None:
                    break
                if staged_key is not None and (db_key is None or staged_key == db_key
                                               or (staged_key < db_key) != reverse):
                    if staged_key == db_key:
                        step()  # the staged write shadows the stored one
                    value = staged[i][1]
                    i += 1
                    if value is not None:
                        found.append((staged_key, value if values else b""))
                else:
                    assert db_key is not None
                    found.append((db_key, it.value() if values else b""))
                    step()
            it.status()
        finally:
            del it  # a live iterator keeps the DB lock after close()
        return found

    def scan_items(self, partition: int, bucket: str, key: bytes, lo: bytes,
                   hi: bytes | None, *, reverse: bool, limit: int | None,
                   hint_for: str | None = None) -> list[tuple[bytes, bytes]]:
        """(sort key, stored value) of the items of (bucket, key) whose sort key is in
        [lo, hi) (``hi`` None: no upper bound), ascending or with ``reverse`` descending,
        at most ``limit``; with ``hint_for`` the hints held for that node instead. Never
        the plain key: its storage key is the items' common prefix, below every lo."""
        if not lo:
            raise ValueError("lo must not be empty: no sort key is empty")
        prefix = data_key(partition, bucket, key)
        cf = CF_DATA
        if hint_for is not None:
            prefix, cf = _hint_prefix(hint_for) + prefix, CF_HINTS
        high = _prefix_end(prefix) if hi is None else prefix + hi
        rows = self._range(cf, prefix + lo, high, limit, reverse=reverse)
        return [(raw[len(prefix):], value) for raw, value in rows]

    def scan_partition(self, partition: int, after: ItemId | None = None,
                       limit: int | None = None) -> list[Row]:
        """(bucket, key, sort key or None, value) of one partition in storage key order,
        resuming after the item ``after``."""
        prefix = _partition_prefix(partition)
        low = prefix if after is None else data_key(partition, *after) + b"\x00"
        rows = self._range(CF_DATA, low, _prefix_end(prefix), limit)
        return [(*_decode_data_key(raw)[1:], value) for raw, value in rows]

    async def iter_partition(self, partition: int) -> AsyncIterator[Row]:
        """Every (bucket, key, sort key, value) of one partition in key order, read SCAN_PAGE rows
        at a time with a checkpoint between two pages (tree builds, repair, reaping).

        A 50k-key partition read in one go held the event loop for about 80 ms. The
        checkpoint comes only once the consumer has taken every row of the page, so
        while other tasks run, every row read so far has been handed out: a write
        meanwhile is either to a key already handed out, or visible when its page is
        read (see Replica.rebuild_tree)."""
        after = None
        while rows := self.scan_partition(partition, after=after, limit=SCAN_PAGE):
            for row in rows:
                yield row
            if len(rows) < SCAN_PAGE:
                return
            after = rows[-1][:3]
            await trio.sleep(0)

    def scan_hints(self, target: str | None = None, limit: int | None = None,
                   after: tuple[int, str, bytes, bytes | None] | None = None
                   ) -> list[tuple[str, int, str, bytes, bytes | None, bytes]]:
        """(target, partition, bucket, key, sort key or None, value) of hints, for one
        target or all; with ``target``, resuming after the (partition, bucket, key, sort
        key) ``after``."""
        if target is None:
            low, high = b"", None
        else:
            high = _prefix_end(_hint_prefix(target))
            low = _hint_prefix(target) if after is None else hint_key(target, *after) + b"\x00"
        return [(*_decode_hint_key(raw), value)
                for raw, value in self._range(CF_HINTS, low, high, limit)]

    def holds_objects(self) -> bool:
        """True when any object or hint is stored (staged ones included)."""
        return any(self._range(cf, b"", None, 1, values=False) for cf in (CF_DATA, CF_HINTS))

    def hint_counts(self) -> dict[str, int]:
        """Pending hints per target, staged ones included; O(targets)."""
        self._check_open()
        return dict(self._hint_counts)

    def _rebuild_hint_counts(self) -> None:
        counts: dict[str, int] = {}
        for raw, _ in self._range(CF_HINTS, b"", None, None, values=False):
            target = _decode_hint_key(raw)[0]
            counts[target] = counts.get(target, 0) + 1
        self._hint_counts = counts

    def approximate_size(self) -> int:
        """Bytes on disk: every file of the database directory (SSTs, WAL, manifest)."""
        self._check_open()
        total = 0
        with os.scandir(self._path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        pass  # removed by a compaction meanwhile
        return total

    def disk_space(self) -> tuple[int, int]:
        """(bytes free for the node, bytes in all) of the data dir's file system; what is
        reserved for root does not count as free, as dynd should not run as root."""
        stat = os.statvfs(self._path)
        return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize

    # -- writes --

    def stage(self, batch: Batch) -> Ticket:
        """Queue ``batch`` for the writer; its writes are visible to reads at once.

        Synchronous on purpose: a caller that read, decided and staged without an
        await in between did an atomic read-modify-write. An empty batch is a
        barrier: its ticket completes once everything staged before is durable.
        """
        self._check_open()
        staged = _Staged(self._next_seq, tuple(batch.ops))
        self._next_seq += 1
        for cf, raw_key, value in staged.ops:
            if cf == CF_HINTS:
                self._count_hint(raw_key, value is not None)
            elif cf == CF_DATA and value is None:
                partition = int.from_bytes(raw_key[:4], "big")
                self._deletes[partition] = self._deletes.get(partition, 0) + 1
                self._deletes_total += 1
            self._overlay[cf][raw_key] = (value, staged.seq)
        if self._deletes_total >= COMPACT_AFTER_DELETES:
            self._compaction_due.set()
        self._queue.append(staged)
        self._has_work.set()
        return staged.ticket

    def _count_hint(self, raw_key: bytes, present_after: bool) -> None:
        present_before = self._lookup(CF_HINTS, raw_key) is not None
        if present_before != present_after:
            target = _decode_hint_key(raw_key)[0]
            count = self._hint_counts.get(target, 0) + (1 if present_after else -1)
            if count:
                self._hint_counts[target] = count
            else:
                del self._hint_counts[target]

    def commit_synced(self, batch: Batch) -> None:
        """Commit everything staged, then ``batch``, and fsync them whatever the sync mode.

        For the few writes whose loss would be unsafe rather than just a lost write (the
        clean-stop record and its consumption, see Identity.record_clean_stop): the fsync of
        the last group makes every earlier one durable too. Raises StorageError if a
        write failed (then ``batch`` may not be written).
        """
        self._check_open()
        self.stage(batch)
        failure = self._commit_all(self._synced_options)
        if failure is not None:
            raise failure

    async def write(self, batch: Batch) -> None:
        """Stage ``batch`` and wait until it is durable; StorageError if it failed."""
        await self.stage(batch).wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The group-commit writer service; loops until cancelled.

        After a wake-up it yields once so that every runnable task can stage
        its writes, then commits everything queued (up to max_batch_ops per
        WriteBatch). On cancellation it commits what is still staged.
        """
        task_status.started()
        try:
            while True:
                await self._has_work.wait()
                await trio.lowlevel.checkpoint()  # let ready tasks join this group
                if self._db is None:
                    return
                if self._write_options.sync:  # the fsync off the event loop
                    await trio.to_thread.run_sync(self._write_group, self._write_options)
                else:
                    self._write_group(self._write_options)
                failure = self._finish_written()
                if failure is not None:
                    raise failure  # every waiter has it; the node stops (module docstring)
                if not self._queue:
                    self._has_work = trio.Event()
        finally:
            self._commit_all(self._write_options)

    def _commit_all(self, options: rocksdict.WriteOptions) -> StorageError | None:
        """Write every staged group now, from the trio thread (after a worker's write in
        progress): the first failure, if a write failed."""
        failure = self._finish_written()
        while failure is None and self._queue and self._db is not None:
            self._write_group(options)
            failure = self._finish_written()
        return failure

    def _take_group(self) -> list[_Staged]:
        group = [self._queue.popleft()]
        ops = len(group[0].ops)
        while self._queue and ops + len(self._queue[0].ops) <= self._max_batch_ops:
            ops += len(self._queue[0].ops)
            group.append(self._queue.popleft())
        return group

    def _write_batch(self, write_batch: rocksdict.WriteBatch,
                     options: rocksdict.WriteOptions) -> None:
        assert self._db is not None
        self._db.write(write_batch, options)

    def _build_batch(self, group: list[_Staged]) -> rocksdict.WriteBatch:
        write_batch = rocksdict.WriteBatch(raw_mode=True)
        for staged in group:
            for cf, raw_key, value in staged.ops:
                if value is None:
                    write_batch.delete(raw_key, self._handles[cf])
                else:
                    write_batch.put(raw_key, value, self._handles[cf])
        return write_batch

    def _write_group(self, options: rocksdict.WriteOptions) -> None:
        """Write the next group, if any is left (in the trio thread or a worker): only
        the queue, the batch and RocksDB are touched here; the trio thread finishes it."""
        with self._write_lock:
            if not self._queue or self._db is None:
                return
            group = self._take_group()
            error: BaseException | None = None
            try:
                self._write_batch(self._build_batch(group), options)
            except Exception as exc:  # rocksdict raises plain Exception
                error = exc
            self._written.append((group, error))

    def _finish_written(self) -> StorageError | None:
        """Finish the groups written (trio thread): the first failure, if any failed."""
        failure = None
        while self._written:
            group, error = self._written.pop(0)
            self._finish_group(group, error)
            if error is not None and failure is None:
                failure = group[0].ticket._failure()
        return failure

    def _finish_group(self, group: list[_Staged], error: BaseException | None) -> None:
        for staged in group:
            for cf, raw_key, _ in staged.ops:
                overlay = self._overlay[cf]
                entry = overlay.get(raw_key)
                if entry is not None and entry[1] == staged.seq:
                    del overlay[raw_key]  # not re-staged since: RocksDB has it now
        if error is not None and self._db is not None:
            self._rebuild_hint_counts()  # the failed hints are gone again
        self.group_commits += 1
        self.batches_committed += len(group)
        for staged in group:
            staged.ticket._finish(error)

    async def run_compactions(self) -> None:
        """Service: once COMPACT_AFTER_DELETES data deletes were staged, compact the key
        range of every partition that had some, one at a time in a worker thread (RocksDB
        releases the GIL there, so the node keeps serving), then flush the small column
        families. Loops until cancelled.

        RocksDB returns a deleted object's space only when a compaction drops it, and the
        write-ahead log that holds it only once every column family with writes in it is
        flushed: without this, a cache that reaps as fast as it inserts still grows."""
        while True:
            await self._compaction_due.wait()
            self._compaction_due = trio.Event()
            partitions, self._deletes, self._deletes_total = sorted(self._deletes), {}, 0
            for partition in partitions:
                await self._in_thread(f"compact partition {partition}", self._compact,
                                      partition)
            await self._in_thread("flush", self._flush_small)

    async def _in_thread(self, what: str, work: Callable[..., None], *args: int) -> None:
        """Run one RocksDB maintenance call in a worker thread; a failure is logged, not
        fatal (the data stays as it was)."""
        try:
            await trio.to_thread.run_sync(work, *args)
        except Exception as exc:  # rocksdict raises plain Exception
            log.warning("event=compaction_failed what=%r error=%r", what, str(exc))

    def _compact(self, partition: int) -> None:
        self._check_open()
        low = _partition_prefix(partition)
        self._views[CF_DATA].compact_range(low, _prefix_end(low))

    def _flush_small(self) -> None:
        """Flush hints and meta, whose few writes would otherwise keep every write-ahead
        log alive, and with it every reaped object written there."""
        self._check_open()
        for cf in (CF_HINTS, CF_META):
            self._views[cf].flush()

    def checkpoint(self, path: str) -> None:
        """Write a consistent copy of the whole database (every column family at one
        sequence number) into the new directory ``path``, after committing everything
        staged: RocksDB's checkpoint, hard links to the immutable SST files where ``path``
        is on the same file system, copies elsewhere. StorageError if it fails (``path``
        existing included: RocksDB refuses it)."""
        self._check_open()
        self.commit_synced(Batch())
        assert self._db is not None
        try:
            rocksdict.Checkpoint(self._db).create_checkpoint(path)
        except Exception as exc:  # rocksdict raises plain Exception
            raise StorageError(f"cannot write a checkpoint into {path}: {exc}") from exc

    def close(self) -> None:
        """Commit what is staged, then close every view, handle and the DB; idempotent."""
        if self._db is None:
            return
        self._commit_all(self._write_options)
        views, self._views = list(self._views.values()), {}
        self._handles.clear()
        db, self._db = self._db, None
        try:
            for view in views:
                view.close()
            db.close()
        except Exception as exc:  # rocksdict raises plain Exception
            # After a failed write (a full disk) RocksDB refuses to flush at close ("Writer
            # has previous error"): what it held is in the WAL or lost with the failed
            # write, whose waiters were told. The failure that stopped the node is the one
            # to report, once; this is a consequence.
            log.warning("event=close_failed error=%r", str(exc))
        self._has_work.set()  # a running writer notices and returns
