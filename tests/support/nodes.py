"""In-process dynd nodes for tests: the one place a test constructs a ``dynd.node.Node``.

Every test that needs a node (the component tests through ``tests/conftest.py``'s
``make_node``, the fuzzed server, the simulator) builds it with ``new_node`` or
``open_node``, so a change of Node's constructor is made here once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

from common.config import Config
from common.errors import Unavailable
from common.limits import Limits
from common.messages import Request, request, validate_request
from dynd import membership
from dynd.cluster import META_STATE
from dynd.features import SUPPORTED
from dynd.identity import META_NODE_ID
from dynd.node import Node
from dynd.server import Peer
from dynd.storage import Batch, Storage

# Short timeouts and small frames: a test that goes wrong fails in seconds.
LIMITS = Limits(request_timeout=1.0, idle_timeout=5.0, frame_timeout=2.0,
                max_frame_bytes=64 * 1024)
ADDR = "127.0.0.1:1"  # what a node without a listener calls itself
PEER = Peer("127.0.0.1:9", None)  # a client without a certificate


class Nowhere:
    """A transport to no peer: every call is Unavailable, as for an isolated node."""

    async def call(self, addr: str, op: str, fields: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        raise Unavailable(f"{addr} is unreachable in this test")

    def submit(self, addr: str, op: str, fields: dict[str, Any], on_reply: Any) -> None:
        return None  # no connection to send on: the node falls back to call


def validated(op: str, rid: int = 1, **fields: Any) -> Request:
    """A request as the server hands it to a node: built, then validated against LIMITS."""
    return validate_request(request(op, rid, **fields), LIMITS)


def node_config(data_dir: Path | str, node_id: str = "n1", **fields: Any) -> Config:
    """Config for a test node: LIMITS unless ``fields`` name other limits."""
    return Config(node_id=node_id, data_dir=str(data_dir), **{"limits": LIMITS, **fields})


def seed_state(storage: Storage, node_id: str, state: membership.ClusterState) -> None:
    """Identity and cluster state written before a node's first start, as a join and a
    commit would have left them (see tests/support/cluster.py)."""
    storage.stage(Batch().put_meta(META_NODE_ID, node_id.encode())
                  .put_meta(META_STATE, cbor2.dumps(membership.to_wire(state))))


def new_node(config: Config, storage: Storage, transport: Any = None, *, addr: str = ADDR,
             wall: Callable[[], float] | None = None, rng: random.Random | None = None,
             features: frozenset[str] = SUPPORTED) -> Node:
    """A Node on ``storage``; ``transport`` defaults to Nowhere, ``wall`` to Node's own;
    ``features``: what it reports supporting (less: a node of an older version)."""
    clocks: dict[str, Any] = {} if wall is None else {"wall": wall}
    return Node(config, storage, Nowhere() if transport is None else transport, addr=addr,
                rng=rng, features=features, **clocks)


def open_node(data_dir: Path | str, node_id: str = "n1", *, transport: Any = None,
              state: membership.ClusterState | None = None, **config_fields: Any) -> Node:
    """A node on a RocksDB in ``data_dir`` (opened again: a restart), with ``state`` seeded
    first when given; the caller closes ``node.storage``."""
    storage = Storage.open(str(data_dir), sync="none")
    if state is not None:
        seed_state(storage, node_id, state)
    return new_node(node_config(data_dir, node_id, **config_fields), storage, transport)
