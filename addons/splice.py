"""A streamed answer's way from its backend to mitmproxy: raw HTTP/1.1 on asyncio protocols, spliced.

mitmproxy streams a response only from a connection of its own, so a streamed request is pointed at
a relay in this process, which opens the backend stream with failover before the first byte. Once a
backend answers, the content of its body is written onto the relay connection as it arrives, without
being parsed into events: the splice only takes the content out of the whole chunks of each read
(a chunk cut short by a backend that breaks off is never passed on half-written, and the response
translator closes the stream with an error event) and sends it on as one chunk. What arrived together
thus crosses mitmproxy's HTTP layers once and reaches the caller in one write, not chunk by chunk. Once
the caller has the answer's head, the pieces skip the relay and go to a `Caller` (addons/write_through.py).
Flow control is passed through: a slow caller pauses the reading of its backend.

The relay's answer keeps the chunked encoding and its last chunk rather than ending with its
connection (which would spare mitmproxy's chunk parsing): mitmproxy keeps its side of a connection
whose answer ended with the close half-open for as long as its caller's connection lives (the
`Connection: close` that would make it close it would close the caller's connection too), and opens at
most five to one address for one caller, so a caller that keeps its connection would wait for ever
from its sixth stream on (tests/integration/test_gateway_process.py).

A stream's backend request is `Connection: close`: a stream holds its connection for seconds, so a
connection per stream costs nothing that counts, and the end of the backend's answer is the end of its
connection. A whole answer's request keeps its connection for the next (addons/backend_pool.py).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable
from http import HTTPStatus
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

HEAD_END = b"\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
MAX_HEAD_BYTES = 64 * 2**10


class ResponseHead(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case

    @property
    def media_type(self) -> str | None:
        return self.headers.get("content-type")


class BackendClosed(ConnectionError):
    """The backend closed the connection (or it broke) before its answer was complete, or sent no HTTP/1 head."""


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The system's trusted certificates, loaded once (a context per request would read them every time)."""
    return ssl.create_default_context()


def status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())


def whole_response(status: int, body: bytes, media_type: str | None) -> bytes:
    return (status_line(status) + b"Content-Type: " + (media_type or "application/json").encode()
            + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def parse_head(head: bytes) -> ResponseHead:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise BackendClosed(f"not an HTTP/1 response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return ResponseHead(int(rest[:3]), headers)


def dechunk(body: bytes) -> bytes:
    """A whole chunked body's content (an error answer's, for its message); what is cut short is kept."""
    content, position = bytearray(), 0
    while (line_end := body.find(b"\r\n", position)) >= 0:
        try:
            size = int(body[position:line_end].split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        content += body[line_end + 2:line_end + 2 + size]
        position = line_end + 2 + size + 2
    return bytes(content)


class ChunkedBody:
    """Reads a chunked body as it arrives: the content of its whole chunks, and whether the last has passed.

    What it is given always starts where a chunk starts (the caller holds back the rest), so it keeps no
    state but the end."""

    def __init__(self) -> None:
        self.ended = False  # the last chunk (size 0) and its trailers' blank line have passed

    def whole_chunks(self, data: bytes) -> tuple[bytes, int]:
        """The content of `data`'s whole chunks, and how much of `data` they (and the end) take
        (ValueError: not chunked encoding)."""
        contents, position = [], 0
        while not self.ended and (line_end := data.find(b"\r\n", position)) >= 0:
            size = int(data[position:line_end].split(b";")[0], 16)
            if size:
                chunk_end = line_end + 2 + size + 2
                if chunk_end > len(data):
                    break
                contents.append(data[line_end + 2:chunk_end - 2])
                position = chunk_end
                continue
            body_end = data.find(HEAD_END, line_end)  # after the trailers, if any
            if body_end < 0:
                break
            position = body_end + len(HEAD_END)
            self.ended = True
        return b"".join(contents), position


class Address(NamedTuple):
    """Where a backend listens, parsed once per URL."""

    host: str
    port: int
    tls: bool
    host_header: bytes
    base_path: bytes


@functools.lru_cache(maxsize=1024)
def backend_address(url: str) -> Address:
    target = urlsplit(url)
    tls = target.scheme == "https"
    host = target.hostname if target.port is None else f"{target.hostname}:{target.port}"
    return Address(target.hostname, target.port or (443 if tls else 80), tls, host.encode(),
                   target.path.rstrip("/").encode())


class BackendStream(asyncio.Protocol):
    """One request to a backend: its answer's head, then its body read whole or spliced.

    A stream's request is `Connection: close`: its answer ends with its connection. A whole answer's ends by
    its framing (Content-Length or the last chunk) where it has one, and its connection may be kept
    (`keep_alive`): its pool (addons/backend_pool.py) then gives it to the next request."""

    def __init__(self, whole: bool = False, keep_alive: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.address: Address | None = None  # where the request went
        self.whole = whole  # read whole, not spliced
        self.keep_alive = keep_alive  # asked for, and still possible once the head is in
        self.received = bytearray()  # the head, then the body while nobody takes it
        self.head: ResponseHead | None = None
        self.head_ready = loop.create_future()
        # The answer is over: a whole one's body by its framing, or the connection closed or broke (its error or None).
        self.ended = loop.create_future()
        self.body_length: int | None = None  # a whole answer's Content-Length
        self.body_chunks: ChunkedBody | None = None  # a whole answer's chunked body, read up to `scanned`
        self.scanned = 0
        self.splice: Splice | None = None

    @classmethod
    async def connect(cls, address: Address, connect_timeout_s: float, whole: bool, keep_alive: bool) -> BackendStream:
        """A new connection to the backend at `address` (OSError, TimeoutError)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_timeout_s):
            _, stream = await loop.create_connection(lambda: cls(whole, keep_alive), address.host, address.port,
                                                     ssl=tls_context() if address.tls else None)
        return stream

    def send(self, address: Address, path: str, body: bytes) -> None:
        """POST `body` to `path` (the backend's base path before it)."""
        self.address = address
        # The gateway reads every answer (and rewrites most): a compressed one would only cost CPU twice.
        self.transport.write(
            b"POST %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept-Encoding: identity\r\n"
            b"Content-Length: %d\r\n%s\r\n%s"
            % (address.base_path, path.encode(), address.host_header, len(body),
               b"" if self.keep_alive else b"Connection: close\r\n", body))

    async def response_head(self) -> ResponseHead:
        return await asyncio.shield(self.head_ready)

    async def read_body(self) -> bytes:
        """The rest of the answer, once it has ended (BackendClosed: cut short)."""
        if error := await asyncio.shield(self.ended):
            raise BackendClosed(f"{error!r} before the answer's end")
        body = bytes(self.received)
        if self.chunked:
            return dechunk(body)
        length = self.head.headers.get("content-length")
        if length and len(body) < int(length):
            raise BackendClosed(f"the connection closed after {len(body)} of {length} bytes")
        return body

    @property
    def chunked(self) -> bool:
        return self.head is not None and "chunked" in self.head.headers.get("transfer-encoding", "").lower()

    @property
    def silent(self) -> bool:
        """Not a byte of an answer came."""
        return self.head is None and not self.received

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        """The answer ended by its framing, and the backend keeps the connection open for another."""
        return (self.keep_alive and self.ended.done() and self.ended.result() is None
                and self.transport is not None and not self.transport.is_closing())

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.forward(data)
            return
        if self.ended.done():  # bytes after a whole answer: nothing to trust its connection with
            self.keep_alive = False
            return
        self.received += data
        if self.head is None:
            self.read_head()
        if self.head is not None and (self.body_length is not None or self.body_chunks is not None):
            self.find_body_end()

    def eof_received(self) -> bool:
        return False  # close: an answer still due will not come

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        if not self.head_ready.done():
            self.fail_head(f"{exc!r}" if exc else "the connection closed")
        if not self.ended.done():
            self.ended.set_result(exc)
        if self.splice is not None:
            self.splice.backend_closed(exc)

    def read_head(self) -> None:
        end = self.received.find(HEAD_END)
        if end < 0:
            if len(self.received) > MAX_HEAD_BYTES:
                self.fail_head(f"a head of over {MAX_HEAD_BYTES} bytes")
                self.transport.abort()
            return
        try:
            self.head = parse_head(bytes(self.received[:end]))
        except (BackendClosed, ValueError) as error:
            self.fail_head(str(error))
            self.transport.abort()
            return
        if self.whole:
            self.frame_body(self.received.startswith(b"HTTP/1.1 "))
        del self.received[:end + len(HEAD_END)]
        self.head_ready.set_result(self.head)

    def frame_body(self, http_11: bool) -> None:
        """How a whole answer ends; a connection whose answer ends only with it is not kept."""
        length = self.head.headers.get("content-length", "")
        if self.head.status in (204, 304):
            self.body_length = 0
        elif self.chunked:
            self.body_chunks = ChunkedBody()
        elif length.isdigit():
            self.body_length = int(length)
        self.keep_alive = (self.keep_alive and http_11 and "close" not in self.head.headers.get("connection", "").lower()
                           and (self.body_length is not None or self.body_chunks is not None))

    def find_body_end(self) -> None:
        if self.body_chunks is not None:
            try:
                _, taken = self.body_chunks.whole_chunks(self.received[self.scanned:])
            except ValueError:  # malformed: read to the close (and kept by nobody)
                self.keep_alive, self.body_chunks = False, None
                return
            self.scanned += taken
            end = self.scanned if self.body_chunks.ended else None
        else:
            end = self.body_length if len(self.received) >= self.body_length else None
        if end is None:
            return
        if len(self.received) > end:  # bytes after the answer
            self.keep_alive = False
            del self.received[end:]
        self.ended.set_result(None)

    def fail_head(self, reason: str) -> None:
        self.head_ready.set_exception(BackendClosed(f"{reason} before the answer's head"))
        self.head_ready.exception()  # marked as seen: whoever waited may have gone (a timeout, a caller who left)


class Caller(Protocol):
    """The caller's end of a stream (addons/write_through.py); `open` once mitmproxy has sent it the answer's
    head and a first piece."""

    open: bool

    def write(self, content: bytes) -> None: ...

    def finish(self) -> None: ...


class Splice:
    """A backend's streamed answer written onto the relay connection as it arrives, in chunked encoding; or,
    once a `caller` is set and what was relayed has passed mitmproxy, straight to the caller."""

    def __init__(self, backend: BackendStream, relay: asyncio.Transport, idle_timeout_s: float,
                 on_broken: Callable[[str], None]) -> None:
        self.backend, self.relay, self.on_broken = backend, relay, on_broken
        self.chunks = ChunkedBody() if backend.chunked else None
        length = backend.head.headers.get("content-length")
        self.left = int(length) if length and self.chunks is None else None  # a Content-Length body's bytes to come
        self.held = b""  # a chunk not yet complete
        self.idle_timeout_s = idle_timeout_s
        self.last_data_at = asyncio.get_running_loop().time()
        self.idle_check: asyncio.TimerHandle | None = None
        self.finished = False
        self.caller: Caller | None = None  # set once the caller's head is out: content then goes straight to it
        self.in_flight = 0  # content bytes written onto the relay that mitmproxy has not yet passed to the caller
        self.waiting: list[bytes] = []  # content for the caller, behind those bytes

    def start(self) -> None:
        """Send the head, then what the backend sent already, then the rest as it comes."""
        self.relay.write(status_line(self.backend.head.status)
                         + b"Content-Type: " + (self.backend.head.media_type or "application/octet-stream").encode()
                         + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        self.backend.splice = self
        early, self.backend.received = bytes(self.backend.received), bytearray()
        if early:
            self.forward(early)
        if self.backend.ended.done() and not self.finished:
            self.backend_closed(self.backend.ended.result())
        elif not self.finished:
            self.idle_check = asyncio.get_running_loop().call_later(self.idle_timeout_s, self.check_idle)

    def forward(self, data: bytes) -> None:
        if self.finished:
            return
        self.last_data_at = asyncio.get_running_loop().time()
        if self.chunks is None:
            if self.left is not None:
                data = data[:self.left]
                self.left -= len(data)
            self.send(data)
            if self.left == 0:
                self.finish()
            return
        if self.held:
            data = self.held + data
        try:
            content, taken = self.chunks.whole_chunks(data)
        except ValueError:
            self.broken("the answer's chunked encoding is malformed")
            return
        self.held = data[taken:]
        self.send(content)
        if self.chunks.ended:
            self.finish()

    def backend_closed(self, exc: Exception | None) -> None:
        if self.finished:
            return
        if self.chunks is None and self.left is None and exc is None:  # the body ran to the connection's end
            self.finish()
        else:
            self.broken(f"{exc!r}" if exc else "the connection closed before the answer's end")

    def check_idle(self) -> None:
        silent_for = asyncio.get_running_loop().time() - self.last_data_at
        if silent_for >= self.idle_timeout_s:
            self.broken(f"no byte for {silent_for:.0f} s")
        else:
            self.idle_check = asyncio.get_running_loop().call_later(self.idle_timeout_s - silent_for, self.check_idle)

    def send(self, content: bytes) -> None:
        if not content:
            return
        if self.caller is None or not self.caller.open:
            self.relay_content(content)
        elif self.in_flight or self.waiting:
            self.waiting.append(content)
        else:
            self.caller.write(content)

    def relay_content(self, content: bytes) -> None:
        self.in_flight += len(content)
        self.relay.write(b"%x\r\n%s\r\n" % (len(content), content))

    def passed(self, size: int) -> None:
        """mitmproxy has handed `size` relayed bytes on to the caller: once all have passed, what waited for
        them goes straight to the caller (after mitmproxy's own write of them, on the loop's next turn)."""
        self.in_flight -= size
        if not self.in_flight and self.waiting:
            asyncio.get_running_loop().call_soon(self.send_waiting)

    def send_waiting(self) -> None:
        if self.caller is not None and self.waiting and not self.in_flight:
            waiting, self.waiting = b"".join(self.waiting), []
            self.caller.write(waiting)

    def finish(self) -> None:
        if self.caller is not None and self.caller.open and not self.in_flight and not self.waiting:
            self.caller.finish()
        else:  # the end goes the relay's way, behind what is still on it
            if self.waiting:
                waiting, self.waiting = b"".join(self.waiting), []
                self.relay_content(waiting)
            self.caller = None
        self.relay.write(LAST_CHUNK)
        self.end()

    def broken(self, reason: str) -> None:
        """End the caller's stream where the last whole chunk ended: the translator reports the rest missing."""
        self.on_broken(reason)
        self.finish()

    def end(self) -> None:
        self.finished = True
        if self.idle_check is not None:
            self.idle_check.cancel()
        self.backend.close()
        self.relay.close()

    def relay_closed(self) -> None:
        """The caller left: closing the backend connection makes the engine stop generating."""
        if not self.finished:
            self.end()

    def pause(self) -> None:
        if self.backend.transport is not None:
            self.backend.transport.pause_reading()

    def resume(self) -> None:
        if self.backend.transport is not None:
            self.backend.transport.resume_reading()


class RelayConnection(asyncio.Protocol):
    """mitmproxy's connection to the relay for one streamed request: its head names the request, and
    `serve(request_id, connection)` answers it (a whole answer, or a splice). It is in `open_connections`
    while it is open."""

    def __init__(self, serve: Callable[[str, RelayConnection], object], header: bytes,
                 open_connections: set[RelayConnection]) -> None:
        self.serve, self.header, self.open_connections = serve, header.lower() + b":", open_connections
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.served = False  # the request's head is in: any byte after it is ignored
        self.task: asyncio.Task | None = None  # serving, until it is done (the splice then runs on its own)
        self.splice: Splice | None = None

    def answer(self, status: int, body: bytes, media_type: str | None) -> None:
        self.transport.write(whole_response(status, body, media_type))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.open_connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.served:
            return  # the relayed request has no body
        self.head += data
        end = self.head.find(HEAD_END)
        if end < 0:
            if len(self.head) > MAX_HEAD_BYTES:
                self.transport.abort()
            return
        request_id = ""
        for line in bytes(self.head[:end]).split(b"\r\n")[1:]:
            if line.lower().startswith(self.header):
                request_id = line[len(self.header):].strip().decode("latin-1")
        self.served = True
        self.task = asyncio.get_running_loop().create_task(self.serve(request_id, self))
        self.task.add_done_callback(self.forget_task)

    def forget_task(self, task: asyncio.Task) -> None:
        """A finished task would keep its coroutine for as long as the stream lasts (0.7 KB a stream)."""
        if self.task is task:
            self.task = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.open_connections.discard(self)
        if self.splice is not None:
            self.splice.relay_closed()
        elif self.task is not None:
            self.task.cancel()  # still choosing a backend: the attempt in progress is closed

    def pause_writing(self) -> None:
        if self.splice is not None:
            self.splice.pause()

    def resume_writing(self) -> None:
        if self.splice is not None:
            self.splice.resume()
