"""Every size and rate limit of the protocol, in one frozen object.

Defaults match DESIGN.md and are documented in dynd.toml(5). The node builds
one from its config; the client uses the defaults to reject obviously
oversized input before it reaches the network.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_N = 16  # replicas per key (a bucket's n), so also the largest r and w


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
