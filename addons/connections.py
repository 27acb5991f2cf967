"""Connections: how many client connections one gateway process takes at once, and holds open.

A burst of connections (a script's 300 requests at once) must wait in the kernel's accept queue
while the event loop is busy, not be reset: asyncio listens with a backlog of 100, and Linux
drops the overflow. `ListenBacklog` deepens that queue once the listeners are up.

Every open connection costs memory (and, while a body arrives, up to `max_request_body_mb` of it),
so a flood of connections from anyone, before any key is checked, must meet a ceiling. A
connection over it is closed at once: mitmproxy drops a client whose `error` is set in
`client_connected`. Behind a balancer every connection comes from the balancer's address, so the
bound is per process, not per client address.
"""

from __future__ import annotations

import logging
import socket

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


class ListenBacklog:
    def load(self, loader):
        loader.add_option(
            "listen_backlog", int, 4096,
            "Connections the kernel holds for the gateway before it accepts them (capped by the system's "
            "net.core.somaxconn); a burst beyond it is reset by the kernel.",
        )
        # The listeners open after this (and open again when mitmproxy.conf sets the reverse mode).
        ctx.master.addons.get("proxyserver").servers.changed.connect(self.deepen)

    def configure(self, updated):
        if "listen_backlog" in updated and ctx.options.listen_backlog < 1:
            raise exceptions.OptionsError(f"listen_backlog: {ctx.options.listen_backlog!r} is not a whole number ≥ 1")

    def deepen(self) -> None:
        """mitmproxy offers no backlog option: listen() again on each listening socket, which sets the
        queue's depth of a socket already listening."""
        for instance in ctx.master.addons.get("proxyserver").servers:
            for server in getattr(instance, "_servers", ()):  # asyncio's or uvloop's servers; UDP ones have no sockets
                for listening in getattr(server, "sockets", ()):
                    if listening.type == socket.SOCK_STREAM:
                        relisten(listening.fileno(), ctx.options.listen_backlog)


def relisten(fileno: int, backlog: int) -> None:
    with socket.socket(fileno=socket.dup(fileno)) as listening:  # closing the duplicate leaves the listener open
        listening.listen(backlog)
