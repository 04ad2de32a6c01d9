"""The Prometheus endpoint of a real node, and the pieces behind it (counters, hint ages,
the tiny HTTP server's answers and limits)."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from dynctl.client import SyncClient
from dynd import metrics_http
from dynd.metrics import HintAgeWatch, Stats
from dynd.metrics_http import respond, serve_metrics
from tests.integration.harness import Cluster, dynctl_json, free_port

FAMILIES = {
    "dynd_requests", "dynd_request_seconds", "dynd_events", "dynd_get_siblings",
    "dynd_hints_pending", "dynd_hints_pending_seconds", "dynd_storage_bytes",
    "dynd_member_up", "dynd_members", "dynd_detector_phi", "dynd_gossip_rounds",
    "dynd_ring_epoch", "dynd_ring_partitions_owned", "dynd_transfers_pending",
    "dynd_antientropy_last_exchange_timestamp_seconds",
}


def scrape(url: str) -> tuple[str, dict[str, dict[tuple, float]]]:
    """(content type, {family: {(sample name, sorted labels): value}})."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        content_type = reply.headers["Content-Type"]
        text = reply.read().decode()
    families = {
        family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }
    return content_type, families


def test_metrics_endpoint_of_a_running_node(dyn_cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "dynd.toml"
    config.write_text(f'metrics_listen = "127.0.0.1:{port}"\n')
    node = dyn_cluster.add("n1", "-c", str(config))
    url = f"http://127.0.0.1:{port}/metrics"

    _, before = scrape(url)
    with SyncClient.connect(node.addr) as client:
        for i in range(5):
            client.put(f"k{i}", f"v{i}")
        for i in range(5):
            assert client.get(f"k{i}").found
    content_type, after = scrape(url)

    assert content_type.startswith("text/plain")
    assert FAMILIES <= set(after)
    put_ok = ("dynd_requests_total", (("op", "put"), ("outcome", "ok")))
    get_ok = ("dynd_requests_total", (("op", "get"), ("outcome", "ok")))
    assert after["dynd_requests"][put_ok] - before["dynd_requests"].get(put_ok, 0) == 5
    assert after["dynd_requests"][get_ok] - before["dynd_requests"].get(get_ok, 0) >= 5
    assert after["dynd_request_seconds"][("dynd_request_seconds_count", (("op", "put"),))] >= 5
    assert after["dynd_get_siblings"][("dynd_get_siblings_count", ())] >= 5
    assert after["dynd_events"][("dynd_events_total", (("event", "quorum_failure"),))] == 0
    assert after["dynd_storage_bytes"][("dynd_storage_bytes", ())] > 0
    assert after["dynd_member_up"][("dynd_member_up", (("member", "n1"),))] == 1
    assert after["dynd_ring_partitions_owned"][("dynd_ring_partitions_owned", ())] > 0

    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
    assert missing.value.code == 404

    code, stats = dynctl_json("--node", node.addr, "stats")
    assert code == 0
    assert stats["ops"]["put"]["count"] >= 5
    assert stats["gauges"]["members_up"] == 1 and stats["gauges"]["storage_bytes"] > 0


# -- the pieces ---------------------------------------------------------------------------------

def test_unavailable_client_ops_count_as_quorum_failures() -> None:
    stats = Stats("n1")
    stats.observe("put", "unavailable", 0.01)
    stats.observe("get", "unavailable", 0.01)
    stats.observe("p_get", "unavailable", 0.01)  # a replica call, not a quorum
    stats.observe("get", "rejected", 0.01)
    assert stats.events["quorum_failure"] == 2
    assert stats.registry.get_sample_value("dynd_events_total",
                                           {"event": "quorum_failure"}) == 2
    assert stats.summary()["ops"]["get"]["errors"] == 2


def test_hint_age_watch_warns_once_per_period_and_resets(caplog) -> None:
    watch = HintAgeWatch()
    caplog.set_level(logging.WARNING, logger="dynd.metrics")
    assert watch.check("n1", {"n2": 3}, now=100.0, warn_after=60.0) == []
    assert watch.check("n1", {"n2": 5}, now=159.0, warn_after=60.0) == []
    assert watch.check("n1", {"n2": 5}, now=160.0, warn_after=60.0) == ["n2"]
    assert watch.ages == {"n2": 60.0}
    assert watch.check("n1", {"n2": 5}, now=200.0, warn_after=60.0) == []
    assert watch.check("n1", {"n2": 5}, now=220.0, warn_after=60.0) == ["n2"]
    assert watch.check("n1", {"n2": 0}, now=230.0, warn_after=60.0) == []
    assert watch.ages == {}
    assert watch.check("n1", {"n2": 1}, now=240.0, warn_after=60.0) == []  # a new episode
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "event=hints_old node=n1 target=n2 hints=5 pending_seconds=60" in warnings[0]
    with pytest.raises(ValueError, match="warn_after"):
        watch.check("n1", {}, now=0.0, warn_after=0.0)


@pytest.mark.parametrize("head, status", [
    (b"GET /metrics HTTP/1.1\r\nHost: x", b"200"),
    (b"GET /metrics?name[]=dynd_requests HTTP/1.1", b"200"),
    (b"GET / HTTP/1.1", b"404"),
    (b"POST /metrics HTTP/1.1", b"405"),
    (b"GET /metrics", b"400"),
    (b"\x00\xff garbage", b"400"),
    (b"", b"400"),
])
def test_respond_status(head: bytes, status: bytes) -> None:
    assert respond(head, Stats("n1").registry).split(b" ")[1] == status


def test_head_request_has_headers_only() -> None:
    answer = respond(b"HEAD /metrics HTTP/1.1", Stats("n1").registry)
    headers, body = answer.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 0" not in headers and body == b""


async def _exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        return data


async def test_server_limits_head_size_and_slow_clients(monkeypatch) -> None:
    monkeypatch.setattr(metrics_http, "CONNECTION_TIMEOUT", 0.3)
    registry = Stats("n1").registry
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, f"127.0.0.1:{free_port()}", registry)
        ok = await _exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK") and b"dynd_requests" in ok
        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (metrics_http.MAX_HEAD_BYTES + 1)
        assert (await _exchange(port, huge + b"\r\n\r\n")).startswith(b"HTTP/1.1 431")
        with trio.fail_after(2):  # the server hangs up on a silent client
            assert await _exchange(port, b"GET /metr") == b""
        nursery.cancel_scope.cancel()
