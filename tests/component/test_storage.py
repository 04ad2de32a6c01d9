"""dynd/storage.py against a real RocksDB in tmp_path."""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dynd.storage import COMPACT_AFTER_DELETES, Batch, Storage, StorageClosed, StorageError


def _count(storage: Storage, partition: int) -> int:
    """Objects in one partition, tombstones included."""
    return len(storage.scan_partition(partition))


def _staged(storage: Storage) -> int:
    """Writes staged but not committed yet (each key once)."""
    return sum(len(overlay) for overlay in storage._overlay.values())


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Storage]:
    """An open Storage with its group-commit writer running."""
    store = Storage.open(str(tmp_path / "db"))
    await nursery.start(store.run)
    yield store
    store.close()


async def test_put_get_delete_through_batches(storage: Storage) -> None:
    await storage.write(Batch().put(3, "default", b"k1", b"v1").put(3, "default", b"k2", b"v2"))
    assert storage.get(3, "default", b"k1") == b"v1"
    assert storage.get(3, "default", b"k2") == b"v2"
    assert storage.get(3, "other", b"k1") is None
    assert storage.get(4, "default", b"k1") is None
    await storage.write(Batch().delete(3, "default", b"k1").put(3, "default", b"k2", b"v3"))
    assert storage.get(3, "default", b"k1") is None
    assert storage.get(3, "default", b"k2") == b"v3"


async def test_staged_writes_are_visible_before_commit(storage: Storage) -> None:
    await storage.write(Batch().put(1, "b", b"old", b"stored"))
    ticket = storage.stage(Batch().put(1, "b", b"new", b"staged").delete(1, "b", b"old"))
    assert not ticket.done
    assert storage.get(1, "b", b"new") == b"staged"
    assert storage.get(1, "b", b"old") is None
    assert storage.scan_partition(1) == [("b", b"new", None, b"staged")]
    assert _count(storage, 1) == 1
    assert _staged(storage) == 2
    await ticket.wait()
    assert ticket.done
    assert _staged(storage) == 0
    assert storage.get(1, "b", b"new") == b"staged"
    assert storage.get(1, "b", b"old") is None


async def test_a_restaged_key_stays_in_the_overlay_until_its_own_commit(
        tmp_path: Path) -> None:
    store = Storage.open(str(tmp_path / "db"), max_batch_ops=1)  # one batch per commit
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.write(Batch().put(1, "b", b"k", b"one"))
        second = store.stage(Batch().put(1, "b", b"k", b"two"))
        third = store.stage(Batch().put(1, "b", b"k", b"three"))
        assert store.get(1, "b", b"k") == b"three"
        await second.wait()
        assert store.get(1, "b", b"k") == b"three"  # committing "two" must not unshadow it
        assert store.scan_partition(1) == [("b", b"k", None, b"three")]
        await third.wait()
        assert store.get(1, "b", b"k") == b"three"
        assert _staged(store) == 0
        nursery.cancel_scope.cancel()
    store.close()


async def test_scans_stay_in_one_partition_and_resume(storage: Storage) -> None:
    batch = Batch()
    for partition in (6, 7, 8):
        for i in range(10):
            batch.put(partition, "b", b"key%02d" % i, b"p%d-%d" % (partition, i))
    await storage.write(batch)
    rows = storage.scan_partition(7)
    assert [key for _, key, _, _ in rows] == [b"key%02d" % i for i in range(10)]
    assert {value[:2] for _, _, _, value in rows} == {b"p7"}
    page1 = storage.scan_partition(7, limit=4)
    page2 = storage.scan_partition(7, after=page1[-1][:3], limit=4)
    page3 = storage.scan_partition(7, after=page2[-1][:3], limit=4)
    assert page1 + page2 + page3 == rows
    assert len(page3) == 2
    assert storage.scan_partition(7, after=rows[-1][:3]) == []
    assert storage.scan_partition(7, limit=0) == []
    assert _count(storage, 7) == 10
    assert _count(storage, 9) == 0


async def test_scan_orders_buckets_and_merges_staged_writes(storage: Storage) -> None:
    await storage.write(Batch().put(2, "bb", b"a", b"1").put(2, "a", b"z", b"2")
                        .put(2, "a", b"b", b"3"))
    storage.stage(Batch().put(2, "a", b"c", b"4").delete(2, "a", b"z").put(2, "bb", b"a", b"5"))
    assert storage.scan_partition(2) == [("a", b"b", None, b"3"), ("a", b"c", None, b"4"),
                                         ("bb", b"a", None, b"5")]
    assert storage.scan_partition(2, after=("a", b"b", None), limit=1) == [
        ("a", b"c", None, b"4")]


async def test_first_and_last_partition(storage: Storage) -> None:
    last = 2**32 - 1
    await storage.write(Batch().put(0, "b", b"k", b"first").put(last, "b", b"k", b"last"))
    assert storage.scan_partition(0) == [("b", b"k", None, b"first")]
    assert storage.scan_partition(last) == [("b", b"k", None, b"last")]


async def test_hints_per_target_and_counts(storage: Storage) -> None:
    await storage.write(Batch().put_hint("n1", 5, "b", b"k1", b"h1")
                        .put_hint("n1", 6, "b", b"k2", b"h2")
                        .put_hint("n10", 5, "b", b"k1", b"h3"))
    assert storage.get_hint("n1", 5, "b", b"k1") == b"h1"
    assert storage.get_hint("n2", 5, "b", b"k1") is None
    assert storage.scan_hints("n1") == [("n1", 5, "b", b"k1", None, b"h1"),
                                        ("n1", 6, "b", b"k2", None, b"h2")]
    assert storage.scan_hints("n10") == [("n10", 5, "b", b"k1", None, b"h3")]
    assert len(storage.scan_hints()) == 3
    assert len(storage.scan_hints(limit=2)) == 2
    assert storage.hint_counts() == {"n1": 2, "n10": 1}
    # staged changes count at once; overwriting or deleting a missing hint changes nothing
    storage.stage(Batch().put_hint("n1", 5, "b", b"k1", b"again").delete_hint("n10", 5, "b", b"k1")
                  .delete_hint("n3", 1, "b", b"missing").put_hint("n4", 1, "b", b"k", b"h"))
    assert storage.hint_counts() == {"n1": 2, "n4": 1}
    await storage.write(Batch())  # barrier: everything staged before is durable
    assert storage.hint_counts() == {"n1": 2, "n4": 1}
    assert storage.get_hint("n1", 5, "b", b"k1") == b"again"


async def test_meta(storage: Storage) -> None:
    assert storage.get_meta("node_id") is None
    await storage.write(Batch().put_meta("node_id", b"n1").put_meta("ring", b"\x00\x01"))
    assert storage.get_meta("node_id") == b"n1"
    await storage.write(Batch().delete_meta("ring"))
    assert storage.get_meta("ring") is None


async def test_everything_persists_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    store = Storage.open(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.write(Batch().put(1, "b", b"k", b"v").put_hint("n2", 1, "b", b"k", b"h")
                          .put_meta("m", b"x"))
        nursery.cancel_scope.cancel()
    # iterators and views used before close must not keep the lock
    assert store.scan_partition(1) and store.scan_hints("n2")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageClosed):
        store.get(1, "b", b"k")
    with pytest.raises(StorageClosed):
        store.stage(Batch())
    reopened = Storage.open(path)
    try:
        assert reopened.get(1, "b", b"k") == b"v"
        assert reopened.get_hint("n2", 1, "b", b"k") == b"h"
        assert reopened.get_meta("m") == b"x"
        assert reopened.hint_counts() == {"n2": 1}
        assert reopened.approximate_size() > 0
    finally:
        reopened.close()


async def test_opening_a_database_held_open_is_a_storage_error(storage: Storage,
                                                               tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open RocksDB"):
        Storage.open(str(tmp_path / "db"))


async def test_cancelling_the_writer_flushes_what_is_staged(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    store = Storage.open(path)
    ticket = store.stage(Batch().put(1, "b", b"k", b"v"))
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.run()
    assert ticket.done
    await ticket.wait()
    store.close()
    reopened = Storage.open(path)
    assert reopened.get(1, "b", b"k") == b"v"
    reopened.close()


async def test_close_commits_staged_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    store = Storage.open(path, sync="none")
    ticket = store.stage(Batch().put(1, "b", b"k", b"v"))
    store.close()
    assert ticket.done
    reopened = Storage.open(path)
    assert reopened.get(1, "b", b"k") == b"v"
    reopened.close()


async def test_concurrent_writes_share_group_commits(storage: Storage) -> None:
    async def writer(task: int) -> None:
        for i in range(10):
            await storage.write(Batch().put(task % 8, "b", b"%d-%d" % (task, i), b"v"))

    async with trio.open_nursery() as nursery:
        for task in range(100):
            nursery.start_soon(writer, task)
    assert storage.batches_committed == 1000
    assert storage.group_commits <= 50  # ~10 rounds of 100 writers; one by one would be 1000
    assert sum(_count(storage, p) for p in range(8)) == 1000


async def test_a_commit_synced_waits_for_the_group_a_worker_is_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A synced group is written by a worker thread while the node goes on; a commit_synced
    meanwhile (cluster state, the clean-stop record) must not overtake that write, or the
    older value would land last and be what a read gets once the overlay lets go."""
    path = str(tmp_path / "db")
    store = Storage.open(path)
    writing = threading.Event()
    write_batch = Storage._write_batch

    def slow_in_a_worker(self: Storage, batch: object, options: object) -> None:
        if threading.current_thread() is not threading.main_thread():
            writing.set()
            time.sleep(0.05)
        write_batch(self, batch, options)

    monkeypatch.setattr(Storage, "_write_batch", slow_in_a_worker)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        older = store.stage(Batch().put(1, "b", b"k", b"older"))
        while not writing.is_set():
            await trio.sleep(0.001)
        store.commit_synced(Batch().put(1, "b", b"k", b"newer"))
        await older.wait()
        nursery.cancel_scope.cancel()
    assert store.get(1, "b", b"k") == b"newer"
    store.close()
    reopened = Storage.open(path)
    try:
        assert reopened.get(1, "b", b"k") == b"newer"
    finally:
        reopened.close()


async def test_a_group_commit_stops_at_max_batch_ops(tmp_path: Path) -> None:
    store = Storage.open(str(tmp_path / "db"), max_batch_ops=10)
    tickets = [store.stage(Batch().put(1, "b", b"%d" % i, b"v")) for i in range(95)]
    big = Batch()
    for i in range(12):
        big.put(1, "b", b"big%d" % i, b"v")
    tickets.append(store.stage(big))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for ticket in tickets:
            await ticket.wait()
        nursery.cancel_scope.cancel()
    assert store.group_commits == 11  # 9 x 10 singles, the last 5, the 12-op batch whole
    assert _count(store, 1) == 107
    store.close()


async def test_sync_none_writes_and_reads(tmp_path: Path) -> None:
    store = Storage.open(str(tmp_path / "db"), sync="none")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.write(Batch().put(1, "b", b"k", b"v"))
        assert store.get(1, "b", b"k") == b"v"
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_write_error_reaches_every_waiter_and_stops_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed disk: every waiter of the group gets StorageError, the failed writes leave
    the overlay, and the writer service raises it, which stops the node (dynd exits 1)."""
    storage = Storage.open(str(tmp_path), sync="none")
    stopped: list[StorageError] = []
    failures: list[str] = []

    async def writer_service(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        try:
            await storage.run(task_status=task_status)
        except StorageError as exc:
            stopped.append(exc)

    def broken(write_batch: object, options: object) -> None:
        raise RuntimeError("IO error: No space left on device")

    async def writer(i: int) -> None:
        try:
            await storage.write(Batch().put(1, "b", b"kept", b"new%d" % i)
                                .put_hint("n2", 1, "b", b"%d" % i, b"h"))
        except StorageError as exc:
            failures.append(str(exc))

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer_service)
            await storage.write(Batch().put(1, "b", b"kept", b"old")
                                .put_hint("n1", 1, "b", b"k", b"h"))
            monkeypatch.setattr(storage, "_write_batch", broken)
            async with trio.open_nursery() as writers:
                for i in range(20):
                    writers.start_soon(writer, i)
        assert len(failures) == 20
        assert all("No space left on device" in message for message in failures)
        assert len(stopped) == 1 and "No space left on device" in str(stopped[0])
        assert storage.get(1, "b", b"kept") == b"old"  # the failed writes left the overlay
        assert storage.hint_counts() == {"n1": 1}
        monkeypatch.undo()
    finally:
        storage.close()
    reopened = Storage.open(str(tmp_path), sync="none")
    try:
        assert reopened.get(1, "b", b"kept") == b"old"
    finally:
        reopened.close()


async def test_deletes_give_their_space_back_once_enough_accumulated(tmp_path: Path) -> None:
    """Reaped objects free their disk: without the compaction pass the write-ahead log
    holding them stays (a memtable far below its size is never flushed)."""
    store = Storage.open(str(tmp_path / "db"))
    rng = random.Random(7)
    keys = [f"k{i}".encode() for i in range(COMPACT_AFTER_DELETES)]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        nursery.start_soon(store.run_compactions)
        for key in keys:  # incompressible values: about 4 MiB in all
            store.stage(Batch().put(5, "default", key, rng.randbytes(4096)))
        await store.write(Batch().put_meta("note", b"a write in another column family"))
        written = store.approximate_size()
        assert written > len(keys) * 4096
        for key in keys[:-1]:
            store.stage(Batch().delete(5, "default", key))
        await store.write(Batch())
        assert store.approximate_size() >= written  # one delete short of a pass: nothing back
        await store.write(Batch().delete(5, "default", keys[-1]))
        with trio.fail_after(30):
            while store.approximate_size() > written / 4:
                await trio.sleep(0.05)
        assert _count(store, 5) == 0
        nursery.cancel_scope.cancel()
    store.close()


@pytest.mark.parametrize(("call", "message"), [
    (lambda b: b.put(-1, "b", b"k", b"v"), "partition -1"),
    (lambda b: b.put(2**32, "b", b"k", b"v"), "partition"),
    (lambda b: b.put(1, "x" * 256, b"k", b"v"), "bucket name is 256 bytes"),
    (lambda b: b.put(1, "b", b"k" * 65536, b"v"), "key is 65536 bytes"),
    (lambda b: b.put_hint("t" * 300, 1, "b", b"k", b"v"), "hint target"),
])
def test_keys_outside_the_layout_are_refused(call: Callable[[Batch], object],
                                             message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(Batch())


def test_values_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="value must be bytes"):
        Batch().put(1, "b", b"k", 5)  # type: ignore[arg-type]
    assert len(Batch().put(1, "b", b"k", bytearray(b"v"))) == 1


def test_open_refuses_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync"):
        Storage.open(str(tmp_path / "a"), sync="always")
    with pytest.raises(ValueError, match="max_batch_ops"):
        Storage.open(str(tmp_path / "b"), max_batch_ops=0)


# A model check of the overlay merge: any mix of staged and committed writes reads
# back like a plain dict.
_KEYS = st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from(["a", "bb"]),
                  st.sampled_from([b"", b"k", b"k\x00", b"z"]))
_OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), _KEYS, st.binary(max_size=4)),
    st.tuples(st.just("delete"), _KEYS, st.none()),
    st.tuples(st.just("commit"), st.none(), st.none()),
), max_size=30)


@settings(max_examples=25, deadline=None)
@given(ops=_OPS)
def test_reads_match_a_dict_whatever_is_staged(ops: list) -> None:
    async def check(store: Storage) -> None:
        model: dict[tuple[int, str, bytes], bytes] = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for op, address, value in ops:
                if op == "commit":
                    await store.write(Batch())
                elif op == "put":
                    store.stage(Batch().put(*address, value))
                    model[address] = value
                else:
                    store.stage(Batch().delete(*address))
                    model.pop(address, None)
                for partition in (0, 1, 2):
                    expected = sorted((b, k, None, v) for (p, b, k), v in model.items()
                                      if p == partition)
                    rows = store.scan_partition(partition)
                    assert sorted(rows) == expected
                    assert _count(store, partition) == len(expected)
            nursery.cancel_scope.cancel()

    with tempfile.TemporaryDirectory() as directory:
        store = Storage.open(directory, sync="none")
        try:
            trio.run(check, store)
        finally:
            store.close()


@pytest.mark.slow
async def test_benchmark_synced_writes(tmp_path: Path, nursery: trio.Nursery) -> None:
    store = Storage.open(str(tmp_path / "db"))
    await nursery.start(store.run)
    count = 2000
    start = time.perf_counter()
    for i in range(count):
        await store.write(Batch().put(1, "b", b"one-%d" % i, b"x" * 100))
    one_by_one = count / (time.perf_counter() - start)

    async def writer(task: int) -> None:
        for i in range(count // 200):
            await store.write(Batch().put(2, "b", b"%d-%d" % (task, i), b"x" * 100))

    groups_before = store.group_commits
    start = time.perf_counter()
    async with trio.open_nursery() as writers:
        for task in range(200):
            writers.start_soon(writer, task)
    concurrent = count / (time.perf_counter() - start)
    groups = store.group_commits - groups_before

    start = time.perf_counter()
    for chunk in range(20):
        batch = Batch()
        for i in range(1000):
            batch.put(3, "b", b"%d-%d" % (chunk, i), b"x" * 100)
        await store.write(batch)
    batched = 20_000 / (time.perf_counter() - start)
    print(f"\nsynced writes/s: one by one {one_by_one:,.0f}; 200 concurrent writers "
          f"{concurrent:,.0f} ({groups} group commits for {count} writes); "
          f"batches of 1000 keys {batched:,.0f} keys/s")
    store.close()
    assert batched > one_by_one


async def test_meta_names_by_prefix_see_staged_and_committed_entries(storage: Storage) -> None:
    await storage.write(Batch().put_meta("xfer:1:0", b"a").put_meta("xfer:2:5", b"b")
                        .put_meta("state", b"s"))
    storage.stage(Batch().put_meta("xfer:2:6", b"c").delete_meta("xfer:1:0"))
    assert storage.meta_names("xfer:") == ["xfer:2:5", "xfer:2:6"]
    assert storage.meta_names("xfer:3:") == []
    assert storage.meta_names("") == ["data_format", "state", "xfer:2:5", "xfer:2:6"]


# --- item scans (scan_items): one key's sort keys in [lo, hi), forward and reverse -----

_SORT_KEYS = [b"\x00", b"\x00\x00", b"a", b"a\x00", b"a\xff", b"b", b"\xff", b"\xff\xff"]


def _expected_items(model: dict[bytes, bytes], lo: bytes, hi: bytes | None,
                    reverse: bool) -> list[tuple[bytes, bytes]]:
    return sorted(((sk, v) for sk, v in model.items()
                   if sk >= lo and (hi is None or sk < hi)), reverse=reverse)


async def test_item_scans_merge_the_overlay_at_the_ends_in_the_middle_and_over_stored_keys(
        storage: Storage) -> None:
    stored = Batch().put(1, "b", b"k", b"plain")  # the plain key is never an item
    for sk in (b"b", b"c", b"d"):
        stored.put(1, "b", b"k", b"old-" + sk, sk)
    stored.put(1, "b", b"k\x00", b"neighbour", b"a").put(1, "b", b"j", b"before", b"z")
    await storage.write(stored)
    storage.stage(Batch().put(1, "b", b"k", b"first", b"a")       # before every stored one
                  .put(1, "b", b"k", b"middle", b"bb")            # between two stored ones
                  .put(1, "b", b"k", b"new-c", b"c")              # shadows a stored one
                  .delete(1, "b", b"k", b"d")                     # hides a stored one
                  .put(1, "b", b"k", b"last", b"e"))              # after every stored one
    forward = storage.scan_items(1, "b", b"k", b"\x00", None, reverse=False, limit=None)
    assert forward == [(b"a", b"first"), (b"b", b"old-b"), (b"bb", b"middle"),
                       (b"c", b"new-c"), (b"e", b"last")]
    reverse = storage.scan_items(1, "b", b"k", b"\x00", None, reverse=True, limit=None)
    assert reverse == forward[::-1]
    assert storage.scan_items(1, "b", b"k", b"b", b"c", reverse=True, limit=None) == [
        (b"bb", b"middle"), (b"b", b"old-b")]  # hi is exclusive, lo inclusive
    assert storage.scan_items(1, "b", b"k", b"\x00", None, reverse=True, limit=2) == [
        (b"e", b"last"), (b"c", b"new-c")]


async def test_item_scans_of_hints_stay_with_their_target(storage: Storage) -> None:
    await storage.write(Batch().put_hint("n2", 1, "b", b"k", b"v1", b"a")
                        .put_hint("n3", 1, "b", b"k", b"v2", b"b")
                        .put(1, "b", b"k", b"data", b"c"))
    assert storage.scan_items(1, "b", b"k", b"\x00", None, reverse=True, limit=None,
                              hint_for="n2") == [(b"a", b"v1")]
    assert storage.scan_items(1, "b", b"k", b"\x00", None, reverse=False, limit=None) == [
        (b"c", b"data")]


def test_an_item_scan_needs_a_lower_bound(tmp_path: Path) -> None:
    store = Storage.open(str(tmp_path / "db"))
    try:
        with pytest.raises(ValueError, match="lo must not be empty"):
            store.scan_items(0, "b", b"k", b"", None, reverse=False, limit=None)
    finally:
        store.close()


_ITEM_OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from(_SORT_KEYS), st.binary(max_size=3)),
    st.tuples(st.just("delete"), st.sampled_from(_SORT_KEYS), st.none()),
    st.tuples(st.just("commit"), st.none(), st.none()),
), max_size=25)
_BOUNDS = st.sampled_from([b"\x00", b"a", b"a\x00", b"b", b"\xff", b"\xff\xff\x00"])


@settings(max_examples=40, deadline=None)
@given(ops=_ITEM_OPS, lo=_BOUNDS, hi=st.none() | _BOUNDS,
       limit=st.none() | st.integers(0, 4))
def test_item_scans_match_a_sorted_dict_forward_and_reverse(
        ops: list, lo: bytes, hi: bytes | None, limit: int | None) -> None:
    async def check(store: Storage) -> None:
        model: dict[bytes, bytes] = {}
        # Neighbours on both sides of the key's range, and its plain key, never show up.
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await store.write(Batch().put(0, "b", b"k", b"plain")
                              .put(0, "b", b"j", b"x", b"\xff")
                              .put(0, "b", b"k\x00", b"x", b"\x00"))
            for op, sk, value in ops:
                if op == "commit":
                    await store.write(Batch())
                elif op == "put":
                    store.stage(Batch().put(0, "b", b"k", value, sk))
                    model[sk] = value
                else:
                    store.stage(Batch().delete(0, "b", b"k", sk))
                    model.pop(sk, None)
                for reverse in (False, True):
                    expected = _expected_items(model, lo, hi, reverse)[:limit]
                    assert store.scan_items(0, "b", b"k", lo, hi, reverse=reverse,
                                            limit=limit) == expected
            nursery.cancel_scope.cancel()

    with tempfile.TemporaryDirectory() as directory:
        store = Storage.open(directory, sync="none")
        try:
            trio.run(check, store)
        finally:
            store.close()
