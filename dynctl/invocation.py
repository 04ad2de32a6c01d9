"""What a dynctl command gets from the command line: the global options and the output.

Apart from ``dynctl.cli`` so that commands defined next to their own code (``dynctl bench``)
can name these types without importing the command line that registers them.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from dynctl.client import DEFAULT_ADDR, LIMITS, Client
from dynctl.output import Output


@dataclass
class Settings:
    """The global options, shared with every subcommand through click's context object."""

    node: str = DEFAULT_ADDR
    timeout: float | None = None
    json: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def connect(self, default_timeout: float = LIMITS.request_timeout
                ) -> AbstractAsyncContextManager[Client]:
        """A client for --node with the TLS options; --timeout, else ``default_timeout``."""
        return Client.connect(self.node, timeout=self.timeout or default_timeout,
                              tls_ca=self.tls_ca, tls_cert=self.tls_cert, tls_key=self.tls_key)


@dataclass
class Session:
    """What a command that manages its own connections gets instead of a client."""

    settings: Settings
    output: Output
