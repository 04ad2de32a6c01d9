"""What the dynd client itself costs per operation: the bench machinery and the Python
client against a stand-in node that answers every request at once from canned replies.

The stand-in runs in its own process, so the client processes' CPU (what ``dynctl bench``
reports as client us/op) is the client's alone: request building, encoding, pipelining,
reply decoding, and the YCSB loop and histograms around it. The same run against the
Redis driver gives the figure to compare with (``--redis``, Debian's redis-server).

    python -m tests.bench.client_cost [--duration 10] [--redis]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from common.codec import FrameDecoder, encode_frame
from common.limits import Limits
from dynctl.bench.config import BenchConfig, Target
from dynctl.bench.engine import run_phase
from tests.bench.compare import redis_server
from tests.integration.harness import free_port

_VALUE = os.urandom(1000)
_CONTEXT = "gYJkbjEuMQE"  # a plausible one-actor context
CANNED: dict[str, dict[str, Any]] = {
    "get": {"found": True, "context": _CONTEXT,
            "values": [{"value": _VALUE, "written_at": 1_764_000_000_000}]},
    "put": {"context": _CONTEXT},
}


async def _answer(stream: trio.SocketStream) -> None:
    decoder = FrameDecoder(Limits().max_frame_bytes)
    while data := await stream.receive_some(65536):
        decoder.receive_data(data)
        replies = []
        while (message := decoder.next_message()) is not None:
            replies.append(encode_frame({"id": message["id"], "ok": True,
                                         **CANNED[message["op"]]}))
        await stream.send_all(b"".join(replies))


def stand_in_node(port: int) -> None:
    """Serve canned get/put replies on 127.0.0.1:``port`` until killed."""
    async def serve() -> None:
        await trio.serve_tcp(_answer, port, host="127.0.0.1")
    trio.run(serve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--redis", action="store_true", help="Also run the Redis driver.")
    args = parser.parse_args()
    config = BenchConfig(workload="a", records=10_000, duration=args.duration, warmup=2.0,
                         concurrency=args.concurrency, procs=args.procs, connections=2,
                         load=False)
    port = free_port()
    node = multiprocessing.get_context("spawn").Process(target=stand_in_node, args=(port,),
                                                        daemon=True)
    node.start()
    rows = []
    try:
        trio.run(trio.sleep, 1.0)  # the stand-in binds
        run = trio.run(run_phase, Target("dynd", (f"127.0.0.1:{port}",)), config, "run")
        rows.append(("dynd client, stand-in node", run))
    finally:
        node.kill()
        node.join()
    if args.redis:
        with tempfile.TemporaryDirectory(prefix="dynd-client-cost-") as root, \
                redis_server(Path(root)) as (addrs, _):
            target = Target("redis", tuple(addrs), factory="tests.bench.drivers:open_redis")
            rows.append(("redis driver, redis-server", trio.run(run_phase, target, config,
                                                                "run")))
    print("| client | ops/s | client us/op | client cores |\n|---|---|---|---|")
    for name, run in rows:
        print(f"| {name} | {run['throughput']:,.0f} | {run['client_cpu_us_per_op']} | "
              f"{run['client_cpu_cores']} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
