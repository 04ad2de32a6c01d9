"""Errors shared by node, client and CLI, each tied to one exit code (docs/commands.md).

A node answers an error with ``{"code": ..., "message": ...}``; the client turns
that back into the same exception class, and dynctl exits with its
``exit_code``. Keeping the mapping in one place is what keeps the wire, the
Python client and the shell contract in agreement.
"""

from __future__ import annotations

from typing import Any


class DynError(Exception):
    """Base of every error that crosses the wire."""

    code = "internal"
    exit_code = 4

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class NotFound(DynError):
    code = "not_found"
    exit_code = 1


class UsageError(DynError):
    code = "usage"
    exit_code = 2


class Conflict(DynError):
    code = "conflict"
    exit_code = 3


class Unavailable(DynError):
    """Quorum not met, deadline passed, or no node reachable."""

    code = "unavailable"
    exit_code = 4


class Unreachable(Unavailable):
    """The request was never sent (connection refused, peer in backoff): safe to send elsewhere.

    Unlike a timeout, after which the peer may well have executed it, so a
    non-idempotent request (a put, which mints a dot) must not be repeated.
    """


class Rejected(DynError):
    """Invalid input: too large, bad bucket, bad context, bad message."""

    code = "rejected"
    exit_code = 5


class Unauthorized(Rejected):
    code = "unauthorized"


class ProtocolError(Rejected):
    """Bytes or messages that break the protocol (bad frame, bad CBOR, bad shape)."""

    code = "protocol"


_BY_CODE: dict[str, type[DynError]] = {
    cls.code: cls
    for cls in (DynError, NotFound, UsageError, Conflict, Unavailable, Rejected,
                Unauthorized, ProtocolError)
}


def error_from_wire(error: Any) -> DynError:
    """Rebuild the exception a peer or node reported; unknown codes become DynError."""
    if not isinstance(error, dict):
        return ProtocolError(f"malformed error object: {error!r:.100}")
    code = error.get("code")
    message = error.get("message")
    cls = _BY_CODE.get(code, DynError) if isinstance(code, str) else DynError
    return cls(message if isinstance(message, str) else f"error {code!r}")
