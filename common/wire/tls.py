"""TLS failure reasons, named the same way by the daemon and the client."""

from __future__ import annotations

import ssl


def failure_reason(exc: BaseException) -> str | None:
    """OpenSSL's reason for a failed TLS handshake or read, wherever it sits in ``exc``'s
    causes (trio wraps it, nurseries group it); None when no TLS error is among them."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        cause = pending.pop()
        if id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return (cause.reason or str(cause)).lower().replace("_", " ")
        if isinstance(cause, BaseExceptionGroup):
            pending.extend(cause.exceptions)
        pending.extend(c for c in (cause.__cause__, cause.__context__) if c is not None)
    return None
