"""WriteThrough: a streamed answer's pieces written straight onto the caller's connection.

A streamed answer reaches mitmproxy through the relay (addons/splice.py), so each piece would cross a
second socket pair and mitmproxy's HTTP layers on its way to the caller: about half of what a streamed
token cost the gateway. mitmproxy still sends the answer's head, the pieces the relay carried until it
has passed one of them (the head is written by then), and the end, so that it closes the framing and
runs the `response` hooks as before. In between, the splice has each piece translated here and writes it
onto the caller's connection itself, framed as mitmproxy frames a chunked HTTP/1.1 answer. Order is kept
by counting: a piece goes straight only once every byte put on the relay has passed mitmproxy
(`Splice.passed`); the end goes the relay's way behind anything still on it.

The caller's connection is mitmproxy's: its writer is found through the proxy server's table of live
connections (the one its `inject` commands use), and each write counts as activity for its idle timeout.
Only HTTP/1.1 callers of chunked answers are written to this way; any other keeps mitmproxy's path
(`mindrouter_streams_total` counts both). A caller that reads slowly pauses the backend's reading until
its connection has drained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mitmproxy import ctx, http

from addons.context import context_of
from addons.metrics import STREAMS, series
from addons.splice import Splice

CALLER_BUFFER_HIGH = 64 * 2**10  # bytes waiting in the caller's connection before the backend is paused


class CallerWriter:
    """The caller's end of one stream: the translator's output for each piece, chunk-framed, onto its connection."""

    def __init__(self, convert: Callable[[bytes], list[bytes]], writer: asyncio.StreamWriter, activity: Callable[[], None],
                 splice: Splice) -> None:
        self.convert, self.writer, self.activity, self.splice = convert, writer, activity, splice
        self.open = False  # mitmproxy has written the answer's head and passed a piece: pieces may go straight
        self.ended = False  # the translator's end went straight to the caller
        self.draining: asyncio.Task | None = None

    def through_mitmproxy(self, data: bytes) -> list[bytes]:
        """The flow's stream callable, for what the relay carried: translated as before, and counted."""
        self.open = True
        if not data:
            return [] if self.ended else self.convert(b"")
        chunks = self.convert(data)
        self.splice.passed(len(data))
        return chunks

    def write(self, content: bytes) -> None:
        self.put(self.convert(content))

    def finish(self) -> None:
        self.ended = True
        self.put(self.convert(b""))

    def put(self, chunks: list[bytes]) -> None:
        if not chunks or self.writer.is_closing():
            return
        self.writer.write(b"%x\r\n%s\r\n" % (len(chunks[0]), chunks[0]))
        self.activity()
        if self.draining is None and self.writer.transport.get_write_buffer_size() > CALLER_BUFFER_HIGH:
            self.splice.pause()
            self.draining = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except ConnectionError:
            return  # the caller left: mitmproxy closes the relay, and the splice the backend
        finally:
            self.draining = None
        self.splice.resume()


class WriteThrough:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.splice is None or not callable(flow.response.stream):
            return
        handler = ctx.master.addons.get("proxyserver").connections.get(flow.client_conn.id)
        callers_end = handler.transports.get(handler.client) if handler else None  # gone if the caller has left
        if (callers_end is None or callers_end.writer is None or flow.request.http_version != "HTTP/1.1"
                or flow.response.headers.get("Transfer-Encoding") != "chunked"):
            series(STREAMS, "relayed").inc()
            return
        caller = CallerWriter(flow.response.stream, callers_end.writer, handler.timeout_watchdog.register_activity,
                              context.splice)
        flow.response.stream = caller.through_mitmproxy
        context.splice.caller = caller
        series(STREAMS, "straight").inc()
