"""dynctl and its Python client without a real dynd: help, usage errors, exit codes, output
shapes, pipelining and TLS, against nothing or against an in-process fake node.

The fake node speaks the real framing (common.codec) and answers a few ops with simple
semantics: a context is the key's version, a put carrying the current version replaces
every sibling, any other put adds one.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import click
import pytest
import trio
import trustme
from click.testing import CliRunner

from common.codec import FrameDecoder, encode_frame
from common.errors import Conflict, DynError, NotFound, ProtocolError, Rejected, Unavailable
from common.messages import failure, ok
from dynctl import devcluster
from dynctl.cli import main
from dynctl.client import LIMITS, Client, ClientConfigError, Connection, SyncClient, parse_addr
from dynctl.output import Output

RFC3339_MS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


class FakeNode:
    """A single in-memory 'node': enough of the protocol to drive dynctl end to end."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.data: dict[tuple[str, bytes], list[tuple[bytes, int]]] = {}
        self.versions: dict[tuple[str, bytes], int] = {}
        self.requests: list[dict[str, Any]] = []
        self.checks_until_converged = 2
        self.clock_ms = 1_714_564_800_000
        self.addr = ""

    # -- ops ---------------------------------------------------------------------------

    def op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"node": "fake1", "epoch": 7}

    def op_get(self, req: dict[str, Any]) -> dict[str, Any]:
        where = (req["bucket"], req["key"])
        values = self.data.get(where, [])
        return {"found": bool(values), "context": f"v{self.versions.get(where, 0)}",
                "values": [{"value": v, "written_at": t} for v, t in values]}

    def op_put(self, req: dict[str, Any]) -> dict[str, Any]:
        where = (req["bucket"], req["key"])
        if len(req["value"]) > 100_000:
            raise Rejected("value too large")
        if req.get("context") == f"v{self.versions.get(where, 0)}":
            self.data[where] = []
        self.clock_ms += 1
        self.data.setdefault(where, []).append((req["value"], self.clock_ms))
        self.versions[where] = self.versions.get(where, 0) + 1
        return {"context": f"v{self.versions[where]}"}

    def op_delete(self, req: dict[str, Any]) -> dict[str, Any]:
        where = (req["bucket"], req["key"])
        if req.get("context") == f"v{self.versions.get(where, 0)}":
            self.data[where] = []
        self.versions[where] = self.versions.get(where, 0) + 1
        return {"context": f"v{self.versions[where]}"}

    def op_bucket_set(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("r", 1) > req.get("n", 3):
            raise Rejected("r must be between 1 and n")
        return {"bucket": {"name": req["name"], "n": req.get("n", 3), "r": req.get("r", 2),
                           "w": req.get("w", 2)}}

    def op_cluster_status(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"epoch": 4, "members": [
            {"id": f"n{i}", "addr": f"127.0.0.1:707{i}", "zone": "z", "status": "valid",
             "reachable": True, "tokens": 3 - (i == 3), "pending_transfers": 0}
            for i in (1, 2, 3)]}

    def op_cluster_check(self, req: dict[str, Any]) -> dict[str, Any]:
        self.checks_until_converged -= 1
        done = self.checks_until_converged <= 0
        return {"converged": done, "epochs": {"n1": 4, "n2": 4 if done else 3},
                "pending_transfers": 0 if done else 2, "unreachable": []}

    def op_ring(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ring_size": 8, "epoch": 4, "owners": ["n1", "n2", "n3"] * 2 + ["n1", "n2"],
                "balance": 1.125}

    async def op_status(self, req: dict[str, Any]) -> dict[str, Any]:
        await trio.sleep(0.3)  # slow on purpose: its reply overtakes nothing
        return {"node": "fake1", "epoch": 4, "members": [], "hints": {}, "transfers": [],
                "antientropy": [{"partition": 0, "last_exchange": None, "repaired": 0}],
                "storage_bytes": 10}

    async def op_sleep(self, req: dict[str, Any]) -> dict[str, Any]:
        await trio.sleep(10)
        return {}

    # -- serving -----------------------------------------------------------------------

    async def serve(self, stream: trio.abc.Stream) -> None:
        if self.ssl_context is not None:
            stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
        decoder = FrameDecoder(1 << 24)
        send_lock = trio.Lock()
        async with trio.open_nursery() as nursery:
            try:
                while data := await stream.receive_some(65536):
                    decoder.receive_data(data)
                    while (msg := decoder.next_message()) is not None:
                        self.requests.append(msg)
                        if msg["op"] == "hangup":
                            await stream.aclose()
                            return
                        nursery.start_soon(self._answer, stream, send_lock, msg)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                nursery.cancel_scope.cancel()

    async def _answer(self, stream: trio.abc.Stream, lock: trio.Lock, msg: dict) -> None:
        try:
            handler = getattr(self, f"op_{msg['op']}", None)
            if handler is None:
                raise ProtocolError(f"unknown op {msg['op']!r}")
            result = handler(msg)
            if not isinstance(result, dict):
                result = await result
            reply = ok(msg["id"], **result)
        except DynError as exc:
            reply = failure(msg["id"], exc)
        async with lock:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(encode_frame(reply))


async def node_received(node: FakeNode, op: str) -> None:
    """Until the stand-in node has read a request for ``op`` (one more than it had)."""
    before = sum(1 for req in node.requests if req["op"] == op)
    with trio.fail_after(5):
        while sum(1 for req in node.requests if req["op"] == op) == before:
            await trio.sleep(0.01)


@pytest.fixture
def tls_files(tmp_path) -> dict[str, Any]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    other_path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_path))
    mutual_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(mutual_context)
    ca.configure_trust(mutual_context)
    mutual_context.verify_mode = ssl.CERT_REQUIRED
    client_path = tmp_path / "client.pem"
    ca.issue_cert("ops").private_key_and_cert_chain_pem.write_to_path(str(client_path))
    return {"server": server_context, "mutual": mutual_context, "ca": str(ca_path),
            "other_ca": str(other_path), "client": str(client_path)}


def _run_node(node: FakeNode) -> Iterator[FakeNode]:
    """Serve ``node`` from a trio loop in a thread, so CliRunner (sync) can talk to it."""
    started: queue.Queue = queue.Queue()

    async def serve() -> None:
        try:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(trio.serve_tcp, node.serve, 0,
                                                        host="127.0.0.1"))
                started.put((trio.lowlevel.current_trio_token(), nursery.cancel_scope,
                             listeners[0].socket.getsockname()[1]))
        except BaseException as exc:
            started.put(exc)
            raise

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    token, scope, port = started.get(timeout=10)
    node.addr = f"127.0.0.1:{port}"
    yield node
    trio.from_thread.run_sync(scope.cancel, trio_token=token)
    thread.join(timeout=10)


@pytest.fixture
def node() -> Iterator[FakeNode]:
    yield from _run_node(FakeNode())


@pytest.fixture
def tls_node(tls_files) -> Iterator[FakeNode]:
    yield from _run_node(FakeNode(tls_files["server"]))


@pytest.fixture
def mtls_node(tls_files) -> Iterator[FakeNode]:
    yield from _run_node(FakeNode(tls_files["mutual"]))


@pytest.fixture
def closed_addr() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def dynctl(*args: str, node: FakeNode | str | None = None, input: bytes | None = None):
    prefix = ["--node", node if isinstance(node, str) else node.addr] if node else []
    return CliRunner().invoke(main, [*prefix, *args], input=input, catch_exceptions=False)


def only_json(result) -> Any:
    """The one JSON document of stdout (json.loads fails on anything more)."""
    return json.loads(result.stdout)


# -- help, usage, version ------------------------------------------------------------------

def _all_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*path, name))
        else:
            yield (*path, name)


ALL_COMMANDS = list(_all_commands(main))


def test_every_contract_command_exists():
    expected = {("ping",), ("put",), ("get",), ("delete",), ("resolve",), ("replicas",),
                ("bucket", "set"), ("bucket", "get"), ("bucket", "list"),
                ("cluster", "join"), ("cluster", "leave"), ("cluster", "remove"),
                ("cluster", "replace"), ("cluster", "plan"), ("cluster", "commit"),
                ("cluster", "clear"), ("cluster", "status"), ("cluster", "wait"),
                ("cluster", "up"), ("members",), ("tokens",), ("ring",), ("status",),
                ("hints",), ("transfers",), ("repair",), ("stats",)}
    assert expected <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "dynctl")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_of_every_command_ends_with_an_example(path, flag):
    result = dynctl(*path, flag)
    assert result.exit_code == 0
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    assert "Examples:" in lines
    assert lines[-1].startswith("dynctl") or "| dynctl" in lines[-1] or "dynctl " in lines[-1]
    assert "\x1b[" not in result.stdout


@pytest.mark.parametrize("args", [
    ["get"], ["put", "k"], ["--bogus", "ping"], ["nosuchcommand"], ["get", "--r", "0", "k"],
    ["put", "--blind", "--context", "v1", "k", "v"], ["resolve", "k"],
    ["resolve", "--pick", "0", "--merge", "lww", "k"], ["resolve", "--merge", "nope", "k"],
    ["put", "-", "-"], ["--timeout", "0", "ping"], ["--tls-ca", "/no/such/file", "ping"],
    ["cluster", "up", "--nodes", "0"],
])
def test_usage_errors_exit_2_and_print_one_json_document(args, closed_addr):
    human = dynctl(*args, node=closed_addr)
    assert human.exit_code == 2, human.output
    assert human.stdout == ""
    assert human.stderr.strip()
    as_json = dynctl("--json", *args, node=closed_addr)
    assert as_json.exit_code == 2
    assert only_json(as_json)["error"]["code"] == "usage"
    assert as_json.stderr == ""


def test_json_flag_is_also_accepted_after_the_command(closed_addr):
    result = dynctl("ping", "--json", node=closed_addr)
    assert result.exit_code == 4
    assert only_json(result)["error"]["code"] == "unavailable"


def test_version():
    result = dynctl("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("dynctl, version ")


def test_bad_node_address_is_a_usage_error():
    result = dynctl("--json", "ping", node="no-port-here")
    assert result.exit_code == 2
    assert "HOST:PORT" in only_json(result)["error"]["message"]


# -- unreachable node ------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["ping"], ["get", "k"], ["put", "k", "v"], ["cluster", "status"],
                                  ["ring"], ["bucket", "list"]])
def test_unreachable_node_exits_4_with_a_clear_message(args, closed_addr):
    human = dynctl(*args, node=closed_addr)
    assert human.exit_code == 4
    assert human.stdout == ""
    assert human.stderr == f"error: cannot reach {closed_addr}: connection refused\n"
    as_json = dynctl("--json", *args, node=closed_addr)
    assert as_json.exit_code == 4
    assert only_json(as_json) == {"error": {
        "code": "unavailable", "message": f"cannot reach {closed_addr}: connection refused"}}


def test_node_from_environment(closed_addr):
    result = CliRunner(env={"DYN_NODE": closed_addr}).invoke(main, ["ping"])
    assert result.exit_code == 4
    assert closed_addr in result.stderr


# -- data commands against the fake node ---------------------------------------------------

def test_get_missing_key_exits_1(node):
    human = dynctl("get", "nope", node=node)
    assert (human.exit_code, human.stdout) == (1, "")
    assert "not found" in human.stderr
    as_json = dynctl("--json", "get", "nope", node=node)
    assert as_json.exit_code == 1
    assert only_json(as_json) == {"found": False, "context": "v0", "values": []}


def test_put_then_get_prints_the_raw_value_without_newline(node):
    put = dynctl("put", "greeting", "hello wörld", node=node)
    assert put.exit_code == 0
    assert put.stdout == "context=v1\n"
    got = dynctl("get", "greeting", node=node)
    assert got.exit_code == 0
    assert got.stdout_bytes == "hello wörld".encode()


def test_plain_put_reads_first_and_supersedes_every_sibling(node):
    dynctl("put", "--blind", "k", "a", node=node)
    dynctl("put", "--blind", "k", "b", node=node)
    assert dynctl("get", "k", node=node).exit_code == 3
    assert dynctl("put", "k", "c", node=node).exit_code == 0
    assert node.requests[-1]["op"] == "put" and node.requests[-1]["context"] == "v2"
    assert node.requests[-2]["op"] == "get"
    assert dynctl("get", "k", node=node).stdout_bytes == b"c"


def test_put_reads_value_from_stdin_as_raw_bytes(node):
    data = b"\x00\xffbinary\n"
    assert dynctl("put", "-b", "blobs", "k", "-", node=node, input=data).exit_code == 0
    got = dynctl("--json", "get", "-b", "blobs", "k", node=node)
    value = only_json(got)["values"][0]
    assert value["encoding"] == "base64"
    assert value["value"] == "AP9iaW5hcnkK"
    assert dynctl("get", "-b", "blobs", "k", node=node).stdout_bytes == data


def test_key_from_stdin(node):
    dynctl("put", "spaced key", "v", node=node)
    assert dynctl("get", "-", node=node, input=b"spaced key").stdout_bytes == b"v"


def test_conflict_exits_3_and_all_prints_each_sibling(node):
    dynctl("put", "--blind", "k", "one", node=node)
    dynctl("put", "--blind", "k", "two", node=node)
    plain = dynctl("get", "k", node=node)
    assert (plain.exit_code, plain.stdout) == (3, "")
    assert "2 siblings" in plain.stderr
    every = dynctl("get", "--all", "k", node=node)
    assert every.exit_code == 3
    assert every.stdout_bytes == b"one\ntwo\n"
    document = only_json(dynctl("--json", "get", "k", node=node))
    assert document["found"] is True and document["context"] == "v2"
    assert [v["value"] for v in document["values"]] == ["one", "two"]
    for value in document["values"]:
        assert set(value) == {"value", "encoding", "written_at"}
        assert value["encoding"] == "utf-8"
        assert value["written_at"].startswith("2024-05-01T12:00:00.00")
        assert value["written_at"].endswith("Z")


def test_delete_supersedes_what_it_read(node):
    dynctl("put", "k", "v", node=node)
    result = dynctl("--json", "delete", "k", node=node)
    assert result.exit_code == 0
    assert only_json(result) == {"context": "v2"}
    assert node.requests[-1]["context"] == "v1"
    assert dynctl("get", "k", node=node).exit_code == 1
    assert dynctl("delete", "never-written", node=node).exit_code == 0


def test_resolve_union_lines_writes_with_the_read_context(node):
    dynctl("put", "--blind", "todo", "milk\neggs\n", node=node)
    dynctl("put", "--blind", "todo", "bread\nmilk\n", node=node)
    result = dynctl("--json", "resolve", "--merge", "union-lines", "todo", node=node)
    assert result.exit_code == 0
    assert only_json(result) == {"resolved": True, "siblings": 2, "context": "v3"}
    assert node.requests[-1]["context"] == "v2"
    assert dynctl("get", "todo", node=node).stdout_bytes == b"bread\neggs\nmilk\n"


def test_resolve_pick_and_value(node):
    dynctl("put", "--blind", "k", "a", node=node)
    dynctl("put", "--blind", "k", "b", node=node)
    assert dynctl("resolve", "--pick", "1", "k", node=node).exit_code == 0
    assert dynctl("get", "k", node=node).stdout_bytes == b"b"
    dynctl("put", "--blind", "k", "c", node=node)
    assert dynctl("resolve", "--value", "-", "k", node=node, input=b"new").exit_code == 0
    assert dynctl("get", "k", node=node).stdout_bytes == b"new"


def test_resolve_pick_out_of_range_exits_5_and_writes_nothing(node):
    dynctl("put", "--blind", "k", "a", node=node)
    dynctl("put", "--blind", "k", "b", node=node)
    result = dynctl("--json", "resolve", "--pick", "2", "k", node=node)
    assert result.exit_code == 5
    assert "out of range" in only_json(result)["error"]["message"]
    assert node.requests[-1]["op"] == "get"


def test_resolve_without_conflict_leaves_the_key(node):
    dynctl("put", "k", "only", node=node)
    result = dynctl("resolve", "--merge", "lww", "k", node=node)
    assert result.exit_code == 0
    assert "nothing to resolve" in result.stdout
    assert node.requests[-1]["op"] == "get"


def test_node_rejection_exits_5(node):
    result = dynctl("--json", "bucket", "set", "b", "--n", "1", "--r", "2", node=node)
    assert result.exit_code == 5
    assert only_json(result) == {"error": {"code": "rejected",
                                           "message": "r must be between 1 and n"}}


def test_bucket_set_warns_when_r_plus_w_do_not_exceed_n(node):
    result = dynctl("--json", "bucket", "set", "fast", "--n", "3", "--r", "1", "--w", "1",
                    node=node)
    assert result.exit_code == 0
    assert only_json(result)["bucket"] == {"name": "fast", "n": 3, "r": 1, "w": 1}
    assert result.stderr.startswith("warning: r + w = 2 <= n = 3")
    quiet = dynctl("bucket", "set", "safe", "--n", "3", "--r", "2", "--w", "2", node=node)
    assert quiet.stderr == ""
    assert "name=safe" in quiet.stdout.splitlines()


# -- cluster commands against the fake node ------------------------------------------------

def test_cluster_status_json_has_exactly_the_contract_fields(node):
    for args in (["cluster", "status"], ["members"]):
        document = only_json(dynctl("--json", *args, node=node))
        assert document["epoch"] == 4
        assert [m["id"] for m in document["members"]] == ["n1", "n2", "n3"]
        for member in document["members"]:
            assert set(member) == {"id", "addr", "status", "reachable", "tokens",
                                   "pending_transfers"}


def test_cluster_status_plain_lines_are_stable(node):
    result = dynctl("cluster", "status", node=node)
    assert result.stdout.splitlines()[0] == ("member id=n1 addr=127.0.0.1:7071 zone=z "
                                             "status=valid reachable=true tokens=3 "
                                             "pending_transfers=0")


def test_ring_json_is_exactly_size_epoch_owners(node):
    document = only_json(dynctl("--json", "ring", node=node))
    assert set(document) == {"ring_size", "epoch", "owners"}
    assert document["ring_size"] == len(document["owners"]) == 8
    plain = dynctl("ring", node=node).stdout.splitlines()
    assert "ring_size=8" in plain and "balance=1.125" in plain
    assert "owner node=n1 partitions=3 share=0.375" in plain


def test_cluster_wait_polls_until_converged(node):
    result = dynctl("--json", "cluster", "wait", "--timeout", "5", node=node)
    assert result.exit_code == 0
    assert only_json(result)["converged"] is True


def test_cluster_wait_times_out_with_exit_4(node):
    node.checks_until_converged = 1000
    result = dynctl("cluster", "wait", "--timeout", "1", node=node)
    assert result.exit_code == 4
    assert "waiting: epochs n1:4 n2:3, 2 transfers pending" in result.stdout
    assert "did not converge within 1s" in result.stderr


def test_status_renders_never_exchanged_partitions(node):
    result = dynctl("status", node=node)
    assert result.exit_code == 0
    assert "antientropy partition=0 last_exchange=never repaired=0" in result.stdout


# -- the Python client ---------------------------------------------------------------------

async def test_client_pipelines_concurrent_requests(node):
    async with Client.connect(node.addr) as client:
        await client.put(b"k", b"v")
        finished: list[str] = []

        async def slow() -> None:
            await client.call("status")
            finished.append("status")

        async def fast(i: int) -> None:
            obj = await client.get("k")
            assert obj.value == b"v"
            finished.append("get")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await node_received(node, "status")  # sent before every get
            for i in range(50):
                nursery.start_soon(fast, i)
    assert finished[-1] == "status"
    assert len(finished) == 51
    assert len({req["id"] for req in node.requests}) == len(node.requests)


async def test_connection_submit_answers_by_callback_and_can_be_abandoned(node):
    """The task-free request path the node's fan-outs use: each submitted request gets
    exactly one callback with its result or error, an abandoned one none (and its slot
    back), and a broken connection fails what is still waiting."""
    async with trio.open_nursery() as nursery:
        connection = await Connection.open(node.addr, nursery)
        outcomes: dict[str, tuple[Any, Any]] = {}
        arrived = trio.Event()

        def record(name: str, result: Any, error: Any) -> None:
            outcomes[name] = (result, error)
            if {"ping", "bad", "sleep"} <= set(outcomes):
                arrived.set()

        connection.submit("ping", {}, partial(record, "ping"))
        connection.submit("no_such_op", {}, partial(record, "bad"))
        abandon = connection.submit("status", {}, partial(record, "abandoned"))
        assert abandon is not None
        abandon()
        # The same slow op sent after it: its answer follows the abandoned one's on the
        # connection, so once it is in, the abandoned reply has come too (no fixed sleep).
        connection.submit("status", {}, partial(record, "status"))
        connection.submit("sleep", {}, partial(record, "sleep"))
        with trio.fail_after(5):
            while not {"bad", "ping", "status"} <= set(outcomes):
                await trio.sleep(0.01)
        assert outcomes["ping"] == ({"node": "fake1", "epoch": 7}, None)
        assert outcomes["bad"][0] is None and isinstance(outcomes["bad"][1], ProtocolError)
        assert outcomes["status"][1] is None
        assert "abandoned" not in outcomes  # its reply came and was dropped
        connection.close()  # "sleep" is still waiting: it fails
        with trio.fail_after(5):
            await arrived.wait()
        assert outcomes["sleep"][0] is None
        assert isinstance(outcomes["sleep"][1], Unavailable)
        assert "abandoned" not in outcomes  # nor failed by the close
        assert connection.submit("ping", {}, partial(record, "late")) is None  # closed


async def test_connection_submit_declines_without_a_free_slot(node):
    async with trio.open_nursery() as nursery:
        connection = await Connection.open(node.addr, nursery)
        slots = LIMITS.max_inflight_per_connection
        abandons = [connection.submit("sleep", {}, lambda result, error: None)
                    for _ in range(slots)]
        assert all(abandons)
        assert connection.submit("ping", {}, lambda result, error: None) is None
        abandons[0]()  # a slot is free again
        assert connection.submit("ping", {}, lambda result, error: None) is not None
        connection.close()


async def test_client_object_value_and_errors(node):
    async with Client.connect(node.addr) as client:
        missing = await client.get("absent")
        assert not missing.found
        with pytest.raises(NotFound):
            _ = missing.value
        await client.put("two", "a")
        await client.put("two", "b")
        both = await client.get("two")
        with pytest.raises(Conflict):
            _ = both.value
        assert [v.value for v in both.values] == [b"a", b"b"]
        assert both.values[0].written_at.tzinfo is not None
        with pytest.raises(ProtocolError, match="unknown op"):
            await client.call("no_such_op")


async def test_client_request_timeout_is_unavailable(node):
    async with Client.connect(node.addr, timeout=0.2) as client:
        with pytest.raises(Unavailable, match="timed out after 0.2s"):
            await client.call("sleep")
        assert (await client.call("ping"))["node"] == "fake1"


async def test_client_refuses_oversized_input_before_sending(node):
    async with Client.connect(node.addr) as client:
        with pytest.raises(Rejected, match="exceeds the limit"):
            await client.put(b"k" * 1025, b"v")
        with pytest.raises(Rejected, match="exceeds the limit"):
            await client.put(b"k", b"v" * (1024 * 1024 + 1))
    assert node.requests == []


async def test_connection_closed_by_the_node_fails_pending_requests_and_reconnects(node):
    """What was in flight fails (it may or may not have been applied: not retried); the
    next request opens a new connection."""
    failed: list[Unavailable] = []

    async def pending(client: Client) -> None:
        try:
            await client.call("sleep")
        except Unavailable as exc:
            failed.append(exc)

    async with Client.connect(node.addr) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pending, client)
            await node_received(node, "sleep")  # pending before the hang-up
            with pytest.raises(Unavailable, match="closed by the node"):
                await client.call("hangup")
        assert len(failed) == 1
        assert (await client.call("ping"))["node"] == "fake1"


async def test_connect_refused_is_unavailable(closed_addr):
    with pytest.raises(Unavailable, match=f"cannot reach {closed_addr}: connection refused"):
        async with Client.connect(closed_addr):
            pass


@pytest.mark.parametrize("addr", ["localhost", "host:0", "host:99999", ":7070", "a b:1"])
def test_bad_addresses_are_config_errors(addr):
    with pytest.raises(ClientConfigError):
        parse_addr(addr)


def test_addresses_parse():
    assert parse_addr("127.0.0.1:7070") == ("127.0.0.1", 7070)
    assert parse_addr("[::1]:7071") == ("::1", 7071)
    assert parse_addr("node-1.example:80") == ("node-1.example", 80)


def test_sync_client_from_several_threads(node):
    with SyncClient.connect(node.addr) as client:
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                client.put(f"k{i}", f"v{i}")
                assert client.get(f"k{i}").value == f"v{i}".encode()
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        ctx = client.put("k0", "again", context=client.get("k0").context)
        assert client.delete("k0", context=ctx)
        assert not client.get("k0").found


def test_sync_client_connect_error_is_raised_in_the_caller(closed_addr):
    with pytest.raises(Unavailable), SyncClient.connect(closed_addr):
        pass


# -- TLS -------------------------------------------------------------------------------------

def test_tls_client_verifies_the_node_against_the_ca(tls_node, tls_files):
    with SyncClient.connect(tls_node.addr, tls_ca=tls_files["ca"]) as client:
        assert client.call("ping")["node"] == "fake1"
    result = dynctl("--tls-ca", tls_files["ca"], "--json", "ping", node=tls_node)
    assert (result.exit_code, only_json(result)) == (0, {"node": "fake1", "epoch": 7})


def test_tls_with_an_unknown_ca_exits_5(tls_node, tls_files):
    result = CliRunner(env={"DYN_TLS_CA": tls_files["other_ca"]}).invoke(
        main, ["--node", tls_node.addr, "--json", "ping"])
    assert result.exit_code == 5
    error = only_json(result)["error"]
    assert error["code"] == "unauthorized"
    assert "certificate verify failed" in error["message"].lower()


def test_mutual_tls_presents_the_client_certificate(mtls_node, tls_files):
    with SyncClient.connect(mtls_node.addr, tls_ca=tls_files["ca"],
                            tls_cert=tls_files["client"]) as client:
        assert client.call("ping")["node"] == "fake1"


def test_node_refusing_a_missing_client_certificate_exits_5(mtls_node, tls_files):
    result = dynctl("--tls-ca", tls_files["ca"], "--json", "ping", node=mtls_node)
    assert result.exit_code == 5
    assert only_json(result)["error"]["code"] == "unauthorized"


def test_tls_client_certificate_needs_a_ca(tls_files, closed_addr):
    result = dynctl("--tls-cert", tls_files["client"], "--json", "ping", node=closed_addr)
    assert result.exit_code == 2
    assert "--tls-ca" in only_json(result)["error"]["message"]


# -- cluster up: only the nodes it started count ---------------------------------------------

async def test_cluster_up_on_a_port_in_use_fails_before_starting_anything(node, tmp_path, capsys):
    [dev] = devcluster.plan_nodes(1, tmp_path, int(node.addr.rpartition(":")[2]))
    with pytest.raises(Unavailable, match=f"cannot start n1 on {dev.addr}: .*in use"):
        await devcluster.run_dev_cluster([dev], Output(json_mode=False))
    assert capsys.readouterr().out == ""  # no "cluster ... formed" and no "Try:" banner
    assert not dev.data_dir.exists()  # no dynd was started
    assert [r["op"] for r in node.requests] == []


async def test_cluster_up_does_not_take_another_nodes_ping_for_its_own(node, tmp_path):
    """A port taken after the check: the answer names another node id, so it fails at once."""
    dev = devcluster.DevNode("n1", node.addr, tmp_path / "n1", tmp_path / "n1.log")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(Unavailable, match=f"{dev.addr} is answered by node 'fake1', "
                                              f"not by n1"):
            await devcluster._wait_ready(dev, process)
    finally:
        process.kill()
        await process.wait()
