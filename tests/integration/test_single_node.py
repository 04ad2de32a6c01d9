"""One real dynd process driven through dynctl and the Python client (docs/commands.md)."""

from __future__ import annotations

import base64
import json
import signal
import socket
import struct
import time
from collections.abc import Iterator

import cbor2
import pytest
import trio

from common.limits import MAX_N
from dynctl.client import Client, SyncClient
from dynctl.ycsb import key_name as ycsb_key
from dynd.storage import DATA_FORMAT, META_DATA_FORMAT, Batch, Storage
from tests.integration.harness import (
    Cluster,
    DyndProcess,
    dynctl,
    dynctl_json,
    free_port,
    one_node,
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DyndProcess]:
    """One node for the tests that leave it running: each uses keys and buckets of its own."""
    yield from one_node(tmp_path_factory.mktemp("single"))


@pytest.fixture
def own_node(dyn_cluster: Cluster) -> DyndProcess:
    """A node of the test's own, for a test that stops, kills or restarts it."""
    return dyn_cluster.add("n1")


def run(node, *args: str, input: bytes | None = None):
    return dynctl("--node", node.addr, *args, input=input)


def test_put_get_delete_and_exit_codes(node) -> None:
    assert run(node, "put", "greeting", "hello").returncode == 0
    got = run(node, "get", "greeting")
    assert (got.returncode, got.stdout) == (0, b"hello")
    assert run(node, "get", "missing").returncode == 1
    assert run(node, "delete", "greeting").returncode == 0
    assert run(node, "get", "greeting").returncode == 1
    assert run(node, "delete", "never-written").returncode == 0
    assert run(node, "put", "k").returncode == 2  # usage: VALUE missing


def test_json_shapes(node) -> None:
    code, doc = dynctl_json("--node", node.addr, "put", "k", "v")
    assert code == 0 and set(doc) == {"context"} and doc["context"]
    code, doc = dynctl_json("--node", node.addr, "get", "k")
    assert code == 0
    assert doc["found"] is True and doc["context"]
    [value] = doc["values"]
    assert value["value"] == "v" and value["encoding"] == "utf-8"
    assert value["written_at"].endswith("Z")
    code, doc = dynctl_json("--node", node.addr, "get", "nope")
    assert code == 1 and doc["found"] is False and doc["values"] == []
    code, doc = dynctl_json("--node", node.addr, "bucket", "set", "bad name!")
    assert code == 5 and doc["error"]["code"] in ("rejected", "usage")


def test_binary_values_from_stdin_round_trip(node) -> None:
    payload = bytes(range(256)) * 4
    assert run(node, "put", "bin", "-", input=payload).returncode == 0
    assert run(node, "get", "bin").stdout == payload
    code, doc = dynctl_json("--node", node.addr, "get", "bin")
    assert doc["values"][0]["encoding"] == "base64"


def test_blind_puts_make_siblings_and_resolve_settles_them(node) -> None:
    run(node, "put", "cart", "apple")
    run(node, "put", "--blind", "cart", "pear")
    conflict = run(node, "get", "cart")
    assert conflict.returncode == 3
    both = run(node, "get", "--all", "cart")
    assert both.returncode == 3  # still a conflict; --all only prints every sibling
    assert sorted(both.stdout.split(b"\n")[:2]) == [b"apple", b"pear"]
    assert run(node, "resolve", "cart", "--merge", "union-lines").returncode == 0
    got = run(node, "get", "cart")
    assert (got.returncode, got.stdout) == (0, b"apple\npear\n")


def test_put_with_stale_context_keeps_both(node) -> None:
    code, first = dynctl_json("--node", node.addr, "put", "stale", "one")
    run(node, "put", "stale", "two")  # reads first: supersedes "one"
    run(node, "put", "--context", first["context"], "stale", "three")  # concurrent with "two"
    code, doc = dynctl_json("--node", node.addr, "get", "stale")
    assert code == 3
    assert sorted(v["value"] for v in doc["values"]) == ["three", "two"]


def test_bad_context_is_rejected(node) -> None:
    result = run(node, "put", "--context", "!!!notbase64", "k", "v")
    assert result.returncode == 5


def test_bucket_properties(node) -> None:
    assert run(node, "bucket", "set", "carts", "--n", "3", "--r", "1", "--w", "1").returncode == 0
    code, doc = dynctl_json("--node", node.addr, "bucket", "get", "carts")
    assert doc["bucket"] == {"name": "carts", "n": 3, "r": 1, "w": 1, "pr": 0, "pw": 0,
                             "ttl": 0, "grace": 86400}
    code, doc = dynctl_json("--node", node.addr, "bucket", "list")
    assert {b["name"] for b in doc["buckets"]} >= {"default", "carts"}
    assert run(node, "bucket", "set", "carts", "--n", "2", "--r", "3").returncode == 5
    assert run(node, "put", "-b", "carts", "x", "y").returncode == 0
    assert run(node, "get", "--bucket", "carts", "x").stdout == b"y"
    assert run(node, "get", "x").returncode == 1  # other bucket


def test_primary_quorums(node) -> None:
    """A single node is the only primary of every key: PR=PW=1 reads and writes it."""
    assert run(node, "bucket", "set", "ledger", "--r", "1", "--w", "1", "--pr", "1",
               "--pw", "1").returncode == 0
    code, doc = dynctl_json("--node", node.addr, "bucket", "list")
    assert {"name": "ledger", "n": 3, "r": 1, "w": 1, "pr": 1, "pw": 1, "ttl": 0,
            "grace": 86400} in doc["buckets"]
    assert run(node, "put", "-b", "ledger", "--pw", "1", "k", "v").returncode == 0
    assert run(node, "get", "-b", "ledger", "--pr", "1", "k").stdout == b"v"
    assert run(node, "delete", "-b", "ledger", "--pr", "0", "--pw", "0", "k").returncode == 0
    assert run(node, "get", "-b", "ledger", "--pr", "2", "k").returncode == 5  # pr > r


@pytest.mark.parametrize("options", [["--r", "0"], ["--w", "-1"], ["--n", "0"],
                                     ["--n", str(MAX_N + 1)], ["--n", "100"],
                                     ["--r", "3", "--n", "2"], ["--pr", "3"],
                                     ["--pw", "-1"], ["--r", "1", "--pr", "2"]])
def test_bucket_set_out_of_range_is_rejected_by_the_node(node, options) -> None:
    """dynctl(1): R and W between 1 and N, N at most MAX_N, PR and PW between 0 and R
    (W), else exit 5, whichever value."""
    code, doc = dynctl_json("--node", node.addr, "bucket", "set", "bx", *options)
    assert (code, doc["error"]["code"]) == (5, "rejected"), doc
    assert run(node, "bucket", "set", "bx", "--n", str(MAX_N)).returncode == 0


def test_restart_keeps_data_and_identity(own_node: DyndProcess) -> None:
    for i in range(20):
        assert run(own_node, "put", f"k{i}", f"v{i}").returncode == 0
    assert own_node.stop() == 0
    own_node.start()
    assert run(own_node, "get", "k7").stdout == b"v7"
    code, doc = dynctl_json("--node", own_node.addr, "ping")
    assert doc["node"] == "n1"


def test_kill_9_after_acknowledged_writes_loses_none(own_node: DyndProcess) -> None:
    async def write_all() -> None:
        async with Client.connect(own_node.addr) as client:
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(client.put, f"key{i}".encode(), f"value{i}".encode())

    trio.run(write_all)
    own_node.kill()
    own_node.start()
    with SyncClient.connect(own_node.addr) as client:
        for i in range(200):
            obj = client.get(f"key{i}".encode())
            assert obj.found and obj.value == f"value{i}".encode()


def test_sigterm_stops_cleanly_within_ten_seconds(own_node: DyndProcess) -> None:
    start = time.monotonic()
    assert own_node.stop(timeout=10) == 0
    assert time.monotonic() - start < 10


def test_bad_config_is_exit_2(tmp_path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('nonsense_key = 1\n')
    result = _dynd("-c", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert b"nonsense_key" in result.stderr
    assert not (tmp_path / "d").exists()


def test_second_dynd_on_a_data_dir_in_use_exits_1_with_one_fatal_line(node) -> None:
    result = _dynd("--node-id", node.node_id, "--listen", f"127.0.0.1:{free_port()}",
                   "--data-dir", str(node.data_dir))
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines and all(line.startswith("ts=") for line in lines), lines  # no traceback
    [fatal] = [line for line in lines if "event=fatal" in line]
    assert "level=error" in fatal and f"data_dir={node.data_dir} " in fatal
    assert "LOCK" in fatal  # the reason: RocksDB's lock is held by the first dynd
    assert run(node, "ping").returncode == 0  # the first one is untouched


def test_a_data_dir_of_a_newer_data_format_is_refused_with_one_fatal_line(tmp_path) -> None:
    """A downgrade (or a dir copied from a newer node) must not be read with the old
    layout: dynd names both formats in one line and exits 1 before serving."""
    data_dir = tmp_path / "d"
    storage = Storage.open(str(data_dir))
    storage.commit_synced(Batch().put_meta(META_DATA_FORMAT, str(DATA_FORMAT + 1).encode()))
    storage.close()
    result = _dynd("--node-id", "n1", "--listen", f"127.0.0.1:{free_port()}",
                   "--data-dir", str(data_dir))
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines and all(line.startswith("ts=") for line in lines), lines  # no traceback
    [fatal] = [line for line in lines if "event=fatal" in line]
    assert f"data format {DATA_FORMAT + 1}, newer than the {DATA_FORMAT}" in fatal


def test_cluster_up_on_a_port_in_use_fails_at_once_without_a_banner(node, tmp_path) -> None:
    """The node on the port is not the dev cluster's n1: nothing is started or formed."""
    started = time.monotonic()
    result = dynctl("cluster", "up", "--nodes", "1", "--base-port", str(node.port),
                    "--dir", str(tmp_path / "dev"), timeout=30)
    assert time.monotonic() - started < 10
    assert result.returncode == 4
    assert result.stdout == b""
    assert f"cannot start n1 on {node.addr}".encode() in result.stderr
    assert b"in use" in result.stderr
    assert not (tmp_path / "dev" / "n1").exists()


def _dynd(*args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "dynd", *args], capture_output=True, timeout=30)


def test_sd_notify_ready_then_stopping(dyn_cluster: Cluster, tmp_path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(20)
        node = dyn_cluster.add("n1", start=False)
        node.start(env={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1"
        node.proc.send_signal(signal.SIGTERM)
        assert sock.recv(100) == b"STOPPING=1"
        assert node.proc.wait(10) == 0


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _send_raw(addr: str, data: bytes, read: bool = True) -> bytes:
    host, port = addr.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        if not read:
            return b""
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_hostile_frames_get_errors_and_the_node_keeps_serving(node) -> None:
    nested = b"\x81" * 10_000 + b"\x00"
    hostile = [
        b"\xff" * 64,                                   # garbage length + garbage
        struct.pack(">I", 2**31) + b"\x00" * 100,       # oversized length prefix
        struct.pack(">I", 0),                           # zero length
        _frame(b"\xa1\x61"),                            # truncated CBOR map
        _frame(nested),                                 # deeply nested arrays
        _frame(cbor2.dumps([1, 2, 3])),                 # not a map
        _frame(cbor2.dumps({"v": 1, "id": 5, "op": "nope"})),       # unknown op
        _frame(cbor2.dumps({"v": 1, "id": 6, "op": "get"})),        # missing fields
        _frame(b"\xc2\x58\x40" + b"\x01" * 64),         # bignum tag
        _frame(cbor2.dumps({"v": 1, "id": 6, "op": "put", "bucket": "default",
                            "key": b"k" * 5000, "value": b"v"})),   # key over limit
    ]
    rss_before = _rss_kib(node.proc.pid)
    for _ in range(20):
        for data in hostile:
            _send_raw(node.addr, data)
    answer = _send_raw(node.addr, _frame(cbor2.dumps({"v": 1, "id": 7, "op": "nope"})))
    reply = cbor2.loads(answer[4:])
    assert reply["id"] == 7 and reply["ok"] is False and reply["error"]["code"] == "protocol"
    oversized = _send_raw(node.addr, struct.pack(">I", 2**31))
    assert cbor2.loads(oversized[4:])["error"]["code"] == "protocol"
    assert run(node, "put", "still", "alive").returncode == 0
    assert run(node, "get", "still").stdout == b"alive"
    assert _rss_kib(node.proc.pid) - rss_before < 20_000
    assert node.proc.poll() is None


def test_python_client_pipelines_many_tasks(node) -> None:
    async def main() -> list[bytes]:
        async with Client.connect(node.addr) as client:
            results: list[bytes] = []

            async def one(i: int) -> None:
                await client.put(f"p{i}", f"v{i}")
                results.append((await client.get(f"p{i}")).value)

            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
            return results

    assert sorted(trio.run(main)) == sorted(f"v{i}".encode() for i in range(100))


def test_json_error_document_when_unreachable(tmp_path) -> None:
    from tests.integration.harness import free_port
    result = dynctl("--json", "--node", f"127.0.0.1:{free_port()}", "--timeout", "1", "get", "k")
    assert result.returncode == 4
    assert json.loads(result.stdout)["error"]["code"] == "unavailable"


def test_bench_runs_ycsb_against_a_node_and_reports_every_operation(node) -> None:
    """dynctl bench end to end: load, then a measured YCSB-A run, as one JSON document."""
    code, report = dynctl_json("--node", node.addr, "bench", "-w", "a", "--records", "40",
                               "--ops", "300", "--warmup", "0", "--procs", "2",
                               "--concurrency", "4", "--seed", "7")
    assert code == 0, report
    load, measured = report["phases"]
    assert load["phase"] == "load" and measured["phase"] == "run"
    assert load["operations"]["insert"]["count"] == 40 and not load["errors"]
    assert measured["ops"] == 300
    assert sum(op["count"] for op in measured["operations"].values()) == 300
    assert set(measured["operations"]) == {"read", "update"} and not measured["errors"]
    for op in measured["operations"].values():
        assert 0 < op["p50"] <= op["p99"] <= op["max"]
    assert measured["throughput"] > 0 and measured["client_cpu_us_per_op"] > 0
    code, doc = dynctl_json("--node", node.addr, "get", ycsb_key(0).decode())
    # 3: two client processes updated the key at once and left siblings, as they should.
    assert code in (0, 3) and doc["values"]
    for value in doc["values"]:
        assert value["encoding"] == "base64"
        assert len(base64.b64decode(value["value"])) == 1000  # a YCSB record
