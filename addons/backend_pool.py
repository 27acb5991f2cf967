"""Connections to the backends kept open between whole answers.

A whole answer takes about a millisecond of the gateway's CPU, and a connection of its own (connect,
close) cost 4 to 7 % of it, and more of its latency (docs/benchmarks.md). So a whole answer's request
leaves its connection open, and the next request to that backend takes it. A stream holds its connection
for seconds and keeps one of its own (addons/splice.py).

A kept connection may be closed by its backend just as a request goes out on it (an idle timeout: vLLM's
is 5 s). The request then fails before a byte of its answer, and is sent once more on a new connection:
that is no fault of the backend's, and counts toward no breaker. The gateway closes a connection idle for
`upstream_keepalive_s` itself, before most backends would.
"""

from __future__ import annotations

import asyncio

from addons.metrics import BACKEND_CONNECTIONS
from addons.splice import Address, BackendClosed, BackendStream, backend_address

ON_NEW, ON_KEPT, STALE = (BACKEND_CONNECTIONS.labels(kind) for kind in ("new", "kept", "stale"))


class IdleConnection(asyncio.Protocol):
    """A kept connection between two answers: in its pool until a request takes it, its backend closes it,
    or it has been idle too long."""

    def __init__(self, pool: BackendPool, address: Address, transport: asyncio.Transport) -> None:
        self.pool, self.address, self.transport = pool, address, transport
        self.expiry = asyncio.get_running_loop().call_later(pool.idle_s, transport.close)

    def data_received(self, data: bytes) -> None:
        self.transport.abort()  # no answer is due: nothing to trust this connection with

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.expiry.cancel()
        self.pool.forget(self)


class BackendPool:
    """The kept connections of each backend address; a request takes the one kept last."""

    def __init__(self) -> None:
        self.idle_s = 0.0  # 0: every request has a connection of its own
        self.idle: dict[Address, list[IdleConnection]] = {}

    async def exchange(self, url: str, path: str, body: bytes, connect_timeout_s: float, whole: bool) -> BackendStream:
        """`body` POSTed to `path` at the backend at `url`: its answer, with the head in (OSError, TimeoutError).
        A whole answer's request goes on a kept connection if there is one."""
        address = backend_address(url)
        keep_alive = whole and self.idle_s > 0
        if keep_alive and (stream := self.take(address)) is not None:
            ON_KEPT.inc()
            try:
                return await self.answer(stream, address, path, body)
            except BackendClosed:
                if not stream.silent:
                    raise
                STALE.inc()
        stream = await BackendStream.connect(address, connect_timeout_s, whole, keep_alive)
        ON_NEW.inc()
        return await self.answer(stream, address, path, body)

    @staticmethod
    async def answer(stream: BackendStream, address: Address, path: str, body: bytes) -> BackendStream:
        try:
            stream.send(address, path, body)
            await stream.response_head()
        except BaseException:
            stream.close()
            raise
        return stream

    def take(self, address: Address) -> BackendStream | None:
        """The connection kept last for `address` (the likeliest to be open still), as a new request's stream."""
        idle = self.idle.get(address)
        while idle:
            connection = idle.pop()
            connection.expiry.cancel()
            if connection.transport.is_closing():
                continue
            stream = BackendStream(whole=True, keep_alive=True)
            connection.transport.set_protocol(stream)
            stream.connection_made(connection.transport)
            return stream
        return None

    def release(self, stream: BackendStream) -> None:
        """Done with `stream`'s answer: its connection is kept if the answer ended by its framing and the
        backend keeps it open; otherwise it closes (which tells an engine still generating to stop)."""
        if not stream.reusable:
            stream.close()
            return
        transport, stream.transport = stream.transport, None
        connection = IdleConnection(self, stream.address, transport)
        transport.set_protocol(connection)
        self.idle.setdefault(stream.address, []).append(connection)

    def forget(self, connection: IdleConnection) -> None:
        idle = self.idle.get(connection.address, [])
        if connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        for idle in self.idle.values():
            for connection in list(idle):
                connection.transport.close()
        self.idle.clear()
