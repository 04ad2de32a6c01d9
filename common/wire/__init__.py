"""The wire layer shared by dynd and dynctl: framing, connections, TLS reasons.

Unlike the rest of ``common`` this package does I/O (trio, sockets, ssl); the pure codec
it builds on is ``common.codec``.
"""
