"""Connections: a bound on how many client connections one gateway process holds open.

Every open connection costs memory (and, while a body arrives, up to `max_request_body_mb` of it),
so a flood of connections from anyone, before any key is checked, must meet a ceiling. A
connection over it is closed at once: mitmproxy drops a client whose `error` is set in
`client_connected`. Behind a balancer every connection comes from the balancer's address, so the
bound is per process, not per client address.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, ctx, exceptions

from addons.metrics import CLIENT_CONNECTIONS, REFUSED_CONNECTIONS

log = logging.getLogger(__name__)


class ConnectionLimit:
    def __init__(self) -> None:
        self.open: set[str] = set()  # ids of the client connections this process holds

    def load(self, loader):
        loader.add_option(
            "max_client_connections", int, 8192,
            "Client connections one gateway process holds open at most (queued and streaming requests "
            "included); one more is closed at once.",
        )

    def configure(self, updated):
        if "max_client_connections" in updated and ctx.options.max_client_connections < 1:
            raise exceptions.OptionsError(
                f"max_client_connections: {ctx.options.max_client_connections!r} is not a whole number ≥ 1")

    def client_connected(self, client: connection.Client) -> None:
        if len(self.open) >= ctx.options.max_client_connections:
            client.error = f"over max_client_connections ({ctx.options.max_client_connections})"
            REFUSED_CONNECTIONS.inc()
            log.warning("connection from %s closed: %s", client.peername, client.error)
            return
        self.open.add(client.id)
        CLIENT_CONNECTIONS.set(len(self.open))

    def client_disconnected(self, client: connection.Client) -> None:
        self.open.discard(client.id)
        CLIENT_CONNECTIONS.set(len(self.open))
