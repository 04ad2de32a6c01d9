"""Every size and rate limit of the protocol, in one frozen object.

Defaults are documented in dynd.toml(5) and docs/guarantees.md. The node builds
one from its config; the client uses the defaults to reject obviously
oversized input before it reaches the network.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_N = 16  # replicas per key (a bucket's n), so also the largest r and w
# An item's sort key: 1..1024 bytes, compared bytewise (docs/architecture.md, "Data model").
MAX_SORT_KEY_BYTES = 1024
# What a replica request (p_put) adds to the stored object besides the key and the bucket
# name: field names, protocol version, request id, partition, hint_for (a node id of at
# most 64 characters) and an item's sort key. 146 bytes at most when measured without the
# sort key; 512 leaves room to spare beside it.
REPLICA_ENVELOPE_BYTES = 512 + MAX_SORT_KEY_BYTES
# The longest expiry a write or a bucket default may ask for (10 years of 365 days), and the
# longest bucket grace: beyond that an expiry is a mistyped unit, not a cache.
MAX_TTL_SECONDS = 315_360_000


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame_bytes: int = 4 * 1024 * 1024  # one frame on the wire, length prefix excluded
    max_key_bytes: int = 1024
    max_value_bytes: int = 1024 * 1024
    max_bucket_name_bytes: int = 64
    max_context_bytes: int = 16 * 1024  # encoded client context string
    max_siblings: int = 100
    max_nesting: int = 16  # CBOR container depth accepted from the wire
    max_inflight_per_connection: int = 256
    max_connections: int = 1024
    request_timeout: float = 5.0  # seconds, default deadline of one client request
    idle_timeout: float = 300.0  # seconds without a frame before a connection is closed
    frame_timeout: float = 10.0  # seconds to deliver the rest of a started frame (slow loris)
    query_fanout: str = "n"  # replicas a query asks first: "n" all, "r" R of them (own copy first)

    @property
    def max_object_bytes(self) -> int:
        """The largest stored object (every sibling, encoded) a coordinated write may leave.

        An object goes to the other replicas whole, in one p_put frame of at most
        max_frame_bytes: a larger one could never be replicated, nor repaired.
        """
        return (self.max_frame_bytes - self.max_key_bytes - self.max_bucket_name_bytes
                - REPLICA_ENVELOPE_BYTES)
