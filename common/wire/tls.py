"""TLS for the daemon and the client: one way to build a context, one way to name a failure."""

from __future__ import annotations

import ssl

MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2


class TLSFileError(ValueError):
    """A CA, certificate or key file that cannot be loaded; ``setting`` is ``"ca"`` or
    ``"cert"`` (the certificate and its key), for the caller to name its own option."""

    def __init__(self, setting: str, cause: Exception) -> None:
        super().__init__(f"{setting}: {cause}")
        self.setting = setting
        self.cause = cause


def new_context(*, server_side: bool, ca: str, cert: str | None = None,
                key: str | None = None) -> ssl.SSLContext:
    """A context trusting ``ca`` (TLS 1.2 at least) that presents ``cert``/``key`` when
    given. Server side, a client certificate is required; client side, the server's
    certificate must match the host dialled."""
    purpose = ssl.Purpose.CLIENT_AUTH if server_side else ssl.Purpose.SERVER_AUTH
    context = ssl.create_default_context(purpose)
    context.minimum_version = MIN_TLS_VERSION
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TLSFileError("ca", exc) from exc
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise TLSFileError("cert", exc) from exc
    if server_side:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


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
