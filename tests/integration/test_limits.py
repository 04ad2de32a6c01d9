"""Every limit of common.limits.Limits, enforced by a real dynd process on hostile sockets.

Requests are written as raw frames so that nothing the Python client checks first hides
what the node enforces. A `tight` node has small limits; a `roomy` one keeps the default
connection count for the memory checks. After each assault the node must still answer.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trio.testing

from common.codec import FrameDecoder, encode_frame
from common.errors import Rejected
from common.limits import Limits
from common.messages import request
from dynd.server import Peer, Server
from tests.integration.harness import DyndProcess, cluster

TIGHT = {"max_frame_bytes": 65536, "max_key_bytes": 32, "max_value_bytes": 1024,
         "max_bucket_name_bytes": 8, "max_context_bytes": 512, "max_siblings": 3,
         "max_nesting": 8, "max_connections": 8, "idle_timeout": 1.5, "frame_timeout": 1.0}
ROOMY = {"idle_timeout": 60.0, "frame_timeout": 1.5}


def start(root: Path, node_id: str, limits: dict[str, Any]) -> Iterator[DyndProcess]:
    config = root / f"{node_id}.toml"
    warn = f"warn_siblings = {limits['max_siblings']}\n" if "max_siblings" in limits else ""
    config.write_text(warn + "[limits]\n" + "".join(f"{k} = {v!r}\n" for k, v in limits.items()))
    with cluster(root) as c:
        yield c.add(node_id, "-c", str(config))


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DyndProcess]:
    yield from start(tmp_path_factory.mktemp("tight"), "tight", TIGHT)


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DyndProcess]:
    yield from start(tmp_path_factory.mktemp("roomy"), "roomy", ROOMY)


class Wire:
    """A raw client socket speaking frames, for requests a polite client would not send."""

    def __init__(self, node: DyndProcess, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", node.port), timeout=timeout)
        self.decoder = FrameDecoder(16 * 1024 * 1024)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, op: str, rid: int = 1, **fields: Any) -> dict[str, Any]:
        self.send(encode_frame(request(op, rid, **fields)))
        return self.reply()

    def reply(self) -> dict[str, Any]:
        while (message := self.decoder.next_message()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the node")
            self.decoder.receive_data(data)
        return message

    def closed_within(self, seconds: float) -> bool:
        """True when the node hangs up within ``seconds`` (replies before that are drained)."""
        self.sock.settimeout(seconds)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def assert_serving(node: DyndProcess) -> None:
    wire = Wire(node)
    try:
        assert wire.ask("ping")["ok"] is True
    finally:
        wire.close()


def error_code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return reply["error"]["code"]


def peak_rss_until_logged(node: DyndProcess, since: int, needle: str, count: int,
                          timeout: float = 20.0) -> int:
    """The node's highest RSS (KiB), sampled until its log past offset ``since`` holds
    ``count`` lines with ``needle``: memory measured over the whole time the node held
    the connections, up to the positive event that it let them go."""
    deadline = time.monotonic() + timeout
    peak = rss_kib(node)
    while (seen := node.log()[since:].count(needle)) < count:
        assert time.monotonic() < deadline, f"{seen} of {count} {needle!r} lines"
        time.sleep(0.05)
        peak = max(peak, rss_kib(node))
    return peak


def rss_kib(node: DyndProcess) -> int:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(("op", "fields", "limit"), [
    ("get", {"bucket": "default", "key": b"k" * 33}, "key"),
    ("get", {"bucket": "default", "key": b""}, "key"),
    ("put", {"bucket": "default", "key": b"k", "value": b"v" * 1025}, "value"),
    ("get", {"bucket": "b" * 9, "key": b"k"}, "bucket name"),
    ("get", {"bucket": "bad/name", "key": b"k"}, "bucket name"),
    ("put", {"bucket": "default", "key": b"k", "value": b"v", "context": "c" * 513}, "context"),
    ("bucket_set", {"name": "b", "n": 65}, "n"),
])
def test_field_limits_are_rejected_and_the_connection_survives(
        tight: DyndProcess, op: str, fields: dict[str, Any], limit: str) -> None:
    wire = Wire(tight)
    try:
        reply = wire.ask(op, 7, **fields)
        assert reply["id"] == 7 and error_code(reply) == "rejected"
        assert limit in reply["error"]["message"]
        assert wire.ask("ping", 8)["ok"] is True
    finally:
        wire.close()


@pytest.mark.parametrize("body", [
    b"\xff\xfe not cbor",
    cbor2.dumps([1, 2, 3]),
    cbor2.dumps({"v": 1, "id": 1, "op": "ping", "extra": 1}),
    cbor2.dumps(cbor2.CBORTag(2, b"\x01" * 64)),
    b"\xa1\x61a" + b"\x81" * 20 + b"\x00",  # nesting beyond max_nesting
    b"\xbf\x61a\x01\xff",  # indefinite-length map
    b"\xa1\x61a\x9b" + struct.pack(">Q", 2**62),  # array claiming 2**62 items
])
def test_malformed_bodies_get_an_error_reply(tight: DyndProcess, body: bytes) -> None:
    wire = Wire(tight)
    try:
        wire.send(struct.pack(">I", len(body)) + body)
        assert error_code(wire.reply()) == "protocol"
        assert wire.ask("ping", 2)["ok"] is True
    finally:
        wire.close()


@pytest.mark.parametrize("length", [0, 65537, 2**32 - 1])
def test_bad_frame_length_is_answered_then_the_connection_closed(
        tight: DyndProcess, length: int) -> None:
    wire = Wire(tight)
    try:
        before = rss_kib(tight)
        wire.send(struct.pack(">I", length) + b"\xa0" * 16)
        assert error_code(wire.reply()) == "protocol"
        assert wire.closed_within(5)
        assert rss_kib(tight) - before < 8 * 1024  # nothing was allocated for the claim
    finally:
        wire.close()
    assert_serving(tight)


def test_sibling_limit_refuses_the_blind_write_beyond_it(tight: DyndProcess) -> None:
    wire = Wire(tight)
    try:
        for rid in range(1, 4):  # blind puts (no context): one sibling each
            assert wire.ask("put", rid, bucket="default", key=b"sib", value=b"x")["ok"] is True
        reply = wire.ask("put", 4, bucket="default", key=b"sib", value=b"x")
        assert error_code(reply) == "rejected" and "siblings" in reply["error"]["message"]
    finally:
        wire.close()


def hold_connections(node: DyndProcess, count: int, timeout: float = 5.0) -> list[Wire]:
    """``count`` answered connections, retried while the node still counts closed ones of
    earlier tests (it notices a close on its next read)."""
    deadline = time.monotonic() + timeout
    while True:
        wires = [Wire(node) for _ in range(count)]
        try:
            for wire in wires:
                assert wire.ask("ping")["ok"] is True
            return wires
        except (ConnectionError, OSError):
            for wire in wires:
                wire.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_connections_beyond_the_limit_are_refused(tight: DyndProcess) -> None:
    held = hold_connections(tight, TIGHT["max_connections"])
    try:
        extra = Wire(tight)
        try:
            assert extra.closed_within(5)
        finally:
            extra.close()
    finally:
        for wire in held:
            wire.close()
    deadline = time.monotonic() + 5
    while True:  # the node notices the closed sockets on its next read
        try:
            assert_serving(tight)
            break
        except (ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_closed_connection_stops_counting_against_the_limit_at_once(
        tight: DyndProcess) -> None:
    """A client that connects, asks and hangs up, again and again (a shell loop of dynctl
    calls), is never refused: the node lets each connection go as soon as it reads the
    hang-up, not after a scheduler round trip per admission slot."""
    for attempt in range(4 * TIGHT["max_connections"]):
        wire = Wire(tight)
        try:
            assert wire.ask("ping", attempt + 1)["ok"] is True, attempt
        finally:
            wire.close()


def test_idle_connection_is_closed(tight: DyndProcess) -> None:
    wire = Wire(tight)
    try:
        assert wire.ask("ping")["ok"] is True
        started = time.monotonic()
        assert wire.closed_within(TIGHT["idle_timeout"] * 4)
        assert time.monotonic() - started >= TIGHT["idle_timeout"] * 0.9
    finally:
        wire.close()


def test_slow_loris_is_closed_however_it_paces_its_bytes(tight: DyndProcess) -> None:
    """One byte every 0.3 s never waits a whole frame_timeout between two reads, yet the
    frame as a whole must arrive within frame_timeout."""
    frame = encode_frame(request("ping", 1))
    wire = Wire(tight)
    started = time.monotonic()
    closed = False
    try:
        for byte in frame[:-1]:
            try:
                wire.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if wire.closed_within(0.3):
                closed = True
                break
        assert closed and time.monotonic() - started < TIGHT["frame_timeout"] * 3
    finally:
        wire.close()
    assert_serving(tight)


def test_client_that_never_reads_its_answers_is_disconnected(roomy: DyndProcess) -> None:
    wire = Wire(roomy)
    try:
        assert wire.ask("put", 1, bucket="default", key=b"big", value=b"v" * 500_000)["ok"]
        before = rss_kib(roomy)
        mark = len(roomy.log())
        wire.sock.settimeout(0.5)
        get = encode_frame(request("get", 2, bucket="default", key=b"big"))
        try:
            for _ in range(100):  # 50 MB of answers, far beyond the socket buffers
                wire.send(get)
        except TimeoutError:
            pass  # the node stopped reading: back-pressure reached us
        except (BrokenPipeError, ConnectionResetError):
            pass
        # Still not reading: until the node logs that it gave up on this client (instead
        # of a fixed sleep), its memory is sampled; it must not buffer the answers.
        host, port = wire.sock.getsockname()[:2]
        peak = peak_rss_until_logged(roomy, mark, f"peer={host}:{port} reason=client_not_reading",
                                     1)
        assert peak - before < 32 * 1024
        assert wire.closed_within(ROOMY["frame_timeout"])
    finally:
        wire.close()
    assert_serving(roomy)


def test_memory_stays_flat_under_200_idle_connections(roomy: DyndProcess) -> None:
    assert_serving(roomy)
    baseline = rss_kib(roomy)
    wires = [Wire(roomy) for _ in range(200)]
    try:
        for rid, wire in enumerate(wires, start=1):
            assert wire.ask("ping", rid)["ok"] is True
        held = rss_kib(roomy)
        assert held - baseline < 24 * 1024, f"{held - baseline} KiB for 200 idle connections"
        assert_serving(roomy)
    finally:
        for wire in wires:
            wire.close()


def test_memory_stays_flat_under_slow_loris_clients(roomy: DyndProcess) -> None:
    assert_serving(roomy)
    baseline = rss_kib(roomy)
    half_frame = struct.pack(">I", 60000) + b"\xa1\x61a\x59\xea\x5a" + b"x" * 30000
    mark = len(roomy.log())
    wires = [Wire(roomy) for _ in range(200)]
    try:
        for wire in wires:
            wire.send(half_frame)  # 30 KB of a 60 KB frame, then silence
        # No fixed sleep before the memory check: memory is sampled until the node logged
        # that it timed out all 200 half frames, i.e. while it held every one of them.
        peak = peak_rss_until_logged(roomy, mark, "partial_frame=True", 200)
        assert peak - baseline < 32 * 1024
        assert all(wire.closed_within(ROOMY["frame_timeout"] * 4) for wire in wires)
    finally:
        for wire in wires:
            wire.close()
    assert_serving(roomy)


async def test_inflight_requests_per_connection_are_bounded() -> None:
    """The reader stops admitting at max_inflight_per_connection; nothing is dropped."""
    limits = Limits(max_inflight_per_connection=3)
    running = 0
    most = 0
    release = trio.Event()

    async def handler(req: Any, peer: Peer) -> dict[str, Any]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return {"n": req.id}

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(Server(handler, limits).serve, listeners)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"".join(encode_frame(request("ping", i)) for i in range(1, 11)))
        # Every task blocked (not a fixed sleep): the server read what it would and admitted
        # what it would; a fourth admission would have happened before this.
        await trio.testing.wait_all_tasks_blocked()
        assert most == 3
        release.set()
        decoder, answers = FrameDecoder(1 << 20), []
        with trio.fail_after(5):
            while len(answers) < 10:
                decoder.receive_data(await stream.receive_some(65536))
                while (message := decoder.next_message()) is not None:
                    answers.append(message["n"])
        assert sorted(answers) == list(range(1, 11)) and most == 3
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_answer_now_answers_without_a_task_now_or_later_and_falls_back() -> None:
    """The reader-loop fast path: what it answers on the spot is answered at once, in
    request order, even while a slow request holds a task; what it answers later (a
    deferred reply) holds its admission slot until then; False hands the request to the
    handler, and an exception becomes an error reply on a connection that stays usable."""
    release = trio.Event()
    later: list[Any] = []

    async def handler(req: Any, peer: Peer) -> dict[str, Any]:
        await release.wait()
        return {"path": "task", "n": req.id}

    def answer_now(req: Any, peer: Peer, reply: Any) -> bool:
        if req.id == 1:
            return False
        if req.id == 3:
            raise Rejected("refused on the fast path")
        if req.id == 4:
            raise RuntimeError("a bug on the fast path")
        if req.id in (6, 7):
            later.append(reply)
        else:
            reply({"path": "now", "n": req.id}, None)
        return True

    limits = Limits(max_inflight_per_connection=3)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(Server(handler, limits, answer_now=answer_now).serve, listeners)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"".join(encode_frame(request("ping", i)) for i in range(1, 9)))
        decoder, answers = FrameDecoder(1 << 20), []

        async def read(count: int) -> None:
            with trio.fail_after(5):
                while len(answers) < count:
                    decoder.receive_data(await stream.receive_some(65536))
                    while (message := decoder.next_message()) is not None:
                        answers.append(message)

        await read(4)
        # 1 waits in its task, 6 and 7 for their deferred replies: all 3 slots are taken,
        # so 8 is not even read until one of them is answered. Once every task is blocked
        # (not a fixed sleep) the server has sent all it would; a short read drains it.
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.1):
            await read(5)
        assert [a["id"] for a in answers] == [2, 3, 4, 5]
        assert answers[0] == {"id": 2, "ok": True, "path": "now", "n": 2}
        assert answers[1]["error"]["code"] == "rejected"
        assert answers[2]["ok"] is False and "internal error" in answers[2]["error"]["message"]
        later[0]({"path": "later", "n": 6}, None)
        await read(6)  # 6, and 8 now that a slot is free
        assert answers[4] == {"id": 6, "ok": True, "path": "later", "n": 6}
        assert answers[5] == {"id": 8, "ok": True, "path": "now", "n": 8}
        later[1](None, Rejected("deferred refusal"))
        release.set()
        await read(8)
        assert answers[6]["id"] == 7 and answers[6]["error"]["code"] == "rejected"
        assert answers[7] == {"id": 1, "ok": True, "path": "task", "n": 1}
        await stream.aclose()
        nursery.cancel_scope.cancel()
