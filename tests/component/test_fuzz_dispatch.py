"""Hypothesis against the server's dispatch: arbitrary and mutated messages to a real Node.

One single-node Node (real Storage in a temp dir, a transport that reaches nobody) serves a
real Server on 127.0.0.1 from a background thread for the whole module; every example
opens a plain socket, sends its frames and reads the answers. The properties:

- every well-framed message gets exactly one reply, ok or an error, with the request's id
  (0 when the id is unreadable), and never an internal error: hostile input is a clear
  rejection, not a crash;
- a mutated byte stream is answered or hung up on, never stalls the node;
- after each example the node still answers a ping, and nothing was logged as a crash.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from common.codec import FrameDecoder, encode_frame
from common.messages import SCHEMA, request
from dynd.server import Server
from tests.support.nodes import LIMITS, open_node

KNOWN_ERROR_CODES = {"not_found", "usage", "conflict", "unavailable", "rejected",
                     "unauthorized", "protocol"}
SOCKET_TIMEOUT = 10.0


class CrashLog(logging.Handler):
    """Collects ERROR records (handler and connection crashes are logged at ERROR)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def node_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, CrashLog]]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz-node")
    crashes = CrashLog()
    logging.getLogger("dynd").addHandler(crashes)
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        node = open_node(data_dir)
        try:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            box["port"] = listeners[0].socket.getsockname()[1]
            box["token"] = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                box["cancel"] = nursery.cancel_scope.cancel
                await nursery.start(node.run)
                server = Server(node.handle, LIMITS, answer_now=node.answer_now)
                await nursery.start(server.serve, listeners)
                ready.set()
        finally:
            node.storage.close()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(30), "node did not start"
    try:
        yield box["port"], crashes
    finally:
        trio.from_thread.run_sync(box["cancel"], trio_token=box["token"])
        thread.join(10)
        logging.getLogger("dynd").removeHandler(crashes)


def exchange(port: int, data: bytes, expected_replies: int) -> list[dict[str, Any]] | None:
    """Send ``data``; the replies, once ``expected_replies`` arrived, or None if the node hung
    up first (allowed only after a protocol error reply, checked by the caller)."""
    decoder = FrameDecoder(16 * 1024 * 1024)
    replies: list[dict[str, Any]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(data)
        while len(replies) < expected_replies:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None if not replies or replies[-1]["error"]["code"] == "protocol" \
                    else replies
            decoder.receive_data(chunk)
            while (message := decoder.next_message()) is not None:
                replies.append(message)
    return replies


def assert_alive(port: int, crashes: CrashLog) -> None:
    replies = exchange(port, encode_frame(request("ping", 99)), 1)
    assert replies is not None and replies[0]["ok"] is True
    assert not crashes.records, [r.getMessage() for r in crashes.records]


def assert_clear_reply(reply: dict[str, Any]) -> None:
    assert type(reply.get("id")) is int and type(reply.get("ok")) is bool
    event("ok" if reply["ok"] else f"error {reply['error'].get('code')}")
    if not reply["ok"]:
        assert reply["error"]["code"] in KNOWN_ERROR_CODES, reply
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=12) | st.binary(max_size=24),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(["default", "b", "n1", "n2", "x", ""]) | st.text(max_size=12)
_TYPED = {bytes: st.binary(max_size=40), str: names, int: st.integers(-3, 70),
          dict: cbor_values, list: cbor_values, bool: st.booleans()}


def typed(spec: type | tuple[type, ...]) -> st.SearchStrategy[Any]:
    kinds = spec if isinstance(spec, tuple) else (spec,)
    return st.one_of([_TYPED[kind] for kind in kinds])


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request of a real op, its fields mostly of the right type, some wrong or extra."""
    op = draw(st.sampled_from(sorted(SCHEMA)) | st.text(max_size=10))
    fields: dict[str, Any] = {}
    for name, (spec, required) in SCHEMA.get(op, {}).items():
        if required or draw(st.booleans()):
            fields[name] = draw(typed(spec) | cbor_values if draw(st.booleans()) else typed(spec))
    if draw(st.integers(0, 9)) == 0:
        fields[draw(st.text(max_size=6))] = draw(cbor_values)
    message = {"v": 1, "id": draw(st.integers(0, 2**63 - 1)), "op": op, **fields}
    if draw(st.integers(0, 9)) == 0:
        message[draw(st.sampled_from(["v", "id", "op"]))] = draw(cbor_values)
    return message


FUZZ_SETTINGS = settings(max_examples=60, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


@FUZZ_SETTINGS
@given(batch=st.lists(requests(), min_size=1, max_size=8))
def test_every_message_gets_one_clear_reply(node_port: tuple[int, CrashLog],
                                            batch: list[dict[str, Any]]) -> None:
    port, crashes = node_port
    frames = [encode_frame(message) for message in batch]
    replies = exchange(port, b"".join(frames), len(frames))
    assert replies is not None and len(replies) == len(frames)
    for reply in replies:
        assert_clear_reply(reply)
    sent_ids = {m["id"] for m in batch if type(m.get("id")) is int} | {0}
    assert {reply["id"] for reply in replies} <= sent_ids
    assert_alive(port, crashes)


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """Valid frames of real requests, then bytes flipped, inserted, cut or deleted."""
    data = bytearray(b"".join(encode_frame(m) for m in draw(
        st.lists(requests(), min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@FUZZ_SETTINGS
@given(stream=mutated_streams())
def test_mutated_streams_are_answered_or_hung_up_on(node_port: tuple[int, CrashLog],
                                                    stream: bytes) -> None:
    port, crashes = node_port
    # Count the frames a correct decoder sees, then half-close: the node must answer those
    # (or refuse the stream) and not wait for a frame that will never complete.
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(stream)
        sock.shutdown(socket.SHUT_WR)
        decoder = FrameDecoder(16 * 1024 * 1024)
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            decoder.receive_data(chunk)
            while (reply := decoder.next_message()) is not None:
                assert_clear_reply(reply)
    assert_alive(port, crashes)


def test_length_prefix_claiming_the_maximum_is_refused_at_once(
        node_port: tuple[int, CrashLog]) -> None:
    port, crashes = node_port
    replies = exchange(port, struct.pack(">I", 2**32 - 1), 1)
    assert replies is not None and replies[0]["error"]["code"] == "protocol"
    assert_alive(port, crashes)
