"""Body limit: a request body over `max_request_body_mb` is refused in the caller's dialect, unread.

mitmproxy reads a whole body before the first request hook, and its own `body_size_limit` answers
with its HTML page before any addon runs (its check precedes the `requestheaders` hook). So the
gateway leaves that option off and bounds bodies itself, from the request's headers. A request
whose body could be over the limit is streamed, and its body taken as mitmproxy decodes it:

- a Content-Length over the limit: 413 in the path's dialect at once, before any of it is read;
- a chunked body, whose size is known only at its end: kept up to the limit (413 as soon as it
  grows past it), then sent back into this gateway with a Content-Length, so that it takes the
  ordinary path; its answer, streamed or not, is relayed byte for byte as it comes. The caller's
  address goes with it, in a header only this process can vouch for.

A streamed request needs an upstream connection: it goes to a sink in this process, which writes
these answers. After a 413 the rest of the body is still read and dropped, for up to `DRAIN_S`:
most HTTP clients send their whole body before they read an answer, and mitmproxy closes the
caller's connection only once the request has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from mitmproxy import ctx, exceptions, http
from mitmproxy.net.http import http1

from addons.context import CALLER_ADDRESS_KEY
from addons.replies import point_at
from addons.routing import route_for
from translators.errors import OLLAMA, GatewayError, error_body

# Names the held body a streamed request carries to the sink.
HELD_HEADER = "X-MindRouter-Held-Body"
# "<token> <address>" on a body sent back into the gateway: believed only with this process's token,
# and removed from every other request.
PEER_HEADER = "X-MindRouter-Peer"
DRAIN_S = 30
SHUTDOWN_WAIT_S = 2


def is_chunked(request: http.Request) -> bool:
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def declared_length(request: http.Request) -> int:
    try:
        return int(request.headers.get("content-length", "0"))
    except ValueError:
        return 0


class HeldBody:
    """A streamed request's body as mitmproxy hands it over: kept up to `limit`, dropped past it.
    mitmproxy calls it with each piece and with b"" at the end; it sends nothing on."""

    def __init__(self, flow: http.HTTPFlow, limit: int, over: bool) -> None:
        self.flow = flow
        self.limit = limit
        self.content = bytearray()
        self.over = asyncio.Event()
        self.ended = asyncio.Event()
        if over:
            self.over.set()

    def __call__(self, piece: bytes) -> list[bytes]:
        if not piece:
            self.ended.set()
        elif not self.over.is_set():
            self.content += piece
            if len(self.content) > self.limit:
                self.content = bytearray()
                self.over.set()
        return []

    def too_large(self) -> bytes:
        error = GatewayError(413, f"request body is larger than the limit of {self.limit} bytes",
                             code="request_too_large")
        dialect = route_for(self.flow.request.method, self.flow.request.path.split("?", 1)[0]).dialect or OLLAMA
        return http1.assemble_response(http.Response.make(
            413, error_body(dialect, error), {"Content-Type": "application/json", "Connection": "close"}))

    def resent(self, token: str) -> bytes:
        """The request again, whole, with a Content-Length and the caller's address; one answer on its connection."""
        request = http.Request.from_state(self.flow.request.get_state())
        request.headers.pop("transfer-encoding", None)
        request.headers.pop(HELD_HEADER, None)
        request.headers["connection"] = "close"
        peer = self.flow.client_conn.peername[0] if self.flow.client_conn.peername else ""
        request.headers[PEER_HEADER] = f"{token} {peer}"
        request.content = bytes(self.content)  # sets the Content-Length
        return http1.assemble_request(request)


class BodyLimit:
    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.held: dict[str, HeldBody] = {}  # HELD_HEADER → the body of a streamed request
        self.sink: asyncio.Server | None = None
        self.sink_url = ""
        self.gateway_address: tuple[str, int] | None = None
        self.answering: set[asyncio.Task] = set()  # the sink's connections

    def load(self, loader):
        loader.add_option(
            "max_request_body_mb", int, 32,
            "Largest request body accepted, in MiB (inline images count); a larger one gets 413 in the "
            "caller's dialect without being read.",
        )

    def configure(self, updated):
        if "max_request_body_mb" in updated and ctx.options.max_request_body_mb < 1:
            raise exceptions.OptionsError(
                f"max_request_body_mb: {ctx.options.max_request_body_mb!r} is not a whole number of MiB ≥ 1")

    async def running(self):
        self.sink = await asyncio.start_server(self.answer, "127.0.0.1", 0)
        self.sink_url = "http://127.0.0.1:%d" % self.sink.sockets[0].getsockname()[1]
        host, port = ctx.master.addons.get("proxyserver").listen_addrs()[0][:2]
        self.gateway_address = ({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port)

    async def done(self):
        """Drain has let the requests sent back in finish: their last bytes get a moment to reach their
        callers; bodies still being dropped after a 413 do not hold the gateway up."""
        if self.sink:
            self.sink.close()
        if self.answering:
            await asyncio.wait(self.answering, timeout=SHUTDOWN_WAIT_S)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        peer = flow.request.headers.pop(PEER_HEADER, "")
        flow.request.headers.pop(HELD_HEADER, None)
        if flow.response:  # answered at the edge already
            return
        limit = ctx.options.max_request_body_mb * 2**20
        over = declared_length(flow.request) > limit
        if over or is_chunked(flow.request):
            key = secrets.token_hex(12)
            self.held[key] = flow.request.stream = HeldBody(flow, limit, over)
            flow.request.headers[HELD_HEADER] = key
            point_at(flow, self.sink_url)
        elif peer:
            token, _, address = peer.partition(" ")
            if secrets.compare_digest(token, self.token):
                flow.metadata[CALLER_ADDRESS_KEY] = address

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if isinstance(flow.request.stream, HeldBody):  # the gateway's own answer, relayed: pass it on as it comes
            flow.response.stream = True

    def error(self, flow: http.HTTPFlow) -> None:
        """A streamed request that never reached the sink (its caller left at once) leaves nothing held."""
        self.held.pop(flow.request.headers.get(HELD_HEADER, ""), None)

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One streamed request from mitmproxy: 413 once its body is over the limit, else the gateway's answer to it."""
        task = asyncio.current_task()
        self.answering.add(task)
        try:
            body = self.held.pop(held_key(await reader.readuntil(b"\r\n\r\n")), None)
            if body is None:
                return
            over, ended = asyncio.create_task(body.over.wait()), asyncio.create_task(body.ended.wait())
            left = asyncio.create_task(reader.read())  # b"" once mitmproxy drops the connection: its caller left
            await asyncio.wait({over, ended, left}, return_when=asyncio.FIRST_COMPLETED)
            if body.over.is_set():
                writer.write(body.too_large())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.wait({ended, left}, return_when=asyncio.FIRST_COMPLETED), DRAIN_S)
            elif body.ended.is_set():
                await self.resend(body, writer, left)
            for task in (over, ended, left):
                task.cancel()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            self.answering.discard(task)

    async def resend(self, body: HeldBody, writer: asyncio.StreamWriter, left: asyncio.Task) -> None:
        """The request back into the gateway; its answer piped to mitmproxy until it ends or the caller leaves."""
        gateway_reader, gateway_writer = await asyncio.open_connection(*self.gateway_address)
        try:
            gateway_writer.write(body.resent(self.token))

            async def pipe() -> None:
                writer.write(closing(await gateway_reader.readuntil(b"\r\n\r\n")))
                while piece := await gateway_reader.read(2**16):
                    writer.write(piece)
                    await writer.drain()

            piping = asyncio.create_task(pipe())
            await asyncio.wait({piping, left}, return_when=asyncio.FIRST_COMPLETED)
            piping.cancel()
        finally:
            gateway_writer.close()


def closing(head: bytes) -> bytes:
    """A response head that says `Connection: close`: the sink answers one request per connection, and
    mitmproxy would otherwise send the caller's next request on this one, to nobody."""
    lines = [line for line in head[:-4].split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def held_key(head: bytes) -> str:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == HELD_HEADER.lower().encode():
            return value.strip().decode("ascii", "replace")
    return ""
