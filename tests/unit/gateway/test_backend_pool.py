"""Whole answers keep their backend connection for the next request; a kept connection is given up whenever
its next answer could not be trusted, and one the backend closed meanwhile costs the request nothing."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable

import pytest
from mitmproxy.test import taddons
from prometheus_client import REGISTRY

from addons.backend_pool import BackendPool
from addons.splice import BackendClosed
from addons.upstream import Upstream
from tests.support.upstream_fakes import Gate, Registry, backend, context_for

ANSWER = b'{"id": "c1", "choices": []}'
WHOLE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, ANSWER[:10], len(ANSWER) - 10, ANSWER[10:]))
CLOSING = WHOLE.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
UNFRAMED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + ANSWER


class RawBackend:
    """A backend that speaks raw HTTP/1.1 and keeps its connections: `reply(connection, request)` (each
    numbered from 1) gives the bytes that answer a request, or None to close the connection unanswered; the
    connection closes after the answers to the requests `close_after(request)` names."""

    def __init__(self, reply: Callable[[int, int], bytes | None],
                 close_after: Callable[[int], bool] = lambda request: False) -> None:
        self.reply, self.close_after = reply, close_after
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []  # (connection, request head)
        self.closed_by_gateway = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return "http://127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, served = self.connections, 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.closed_by_gateway += 1
                    return
                await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head)[1]))
                self.requests.append((connection, head))
                served += 1
                answer = self.reply(connection, served)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after(served):
                    return
        finally:
            writer.close()


def count(kind: str) -> float:
    return REGISTRY.get_sample_value("mindrouter_backend_connections_total", {"connection": kind}) or 0.0


async def fetch(pool: BackendPool, url: str) -> bytes:
    stream = await pool.exchange(url, "/v1/chat/completions", b"{}", 5, whole=True)
    try:
        return await stream.read_body()
    finally:
        pool.release(stream)


@contextlib.asynccontextmanager
async def pooled(raw: RawBackend, idle_s: float = 4.0):
    """`raw` serving, and a pool that keeps connections for `idle_s`: (the pool, raw's URL). On the way out the
    pool closes what it kept, and the backend sees it before it stops."""
    url = await raw.start()
    pool = BackendPool()
    pool.idle_s = idle_s
    try:
        yield pool, url
    finally:
        pool.close()
        await asyncio.sleep(0.05)
        raw.server.close()


def run_requests(reply: Callable[[int, int], bytes | None], requests: int, idle_s: float = 4.0,
                 close_after: Callable[[int], bool] = lambda request: False) -> RawBackend:
    """`requests` whole answers fetched one after another from a RawBackend answering with `reply`."""
    raw = RawBackend(reply, close_after)

    async def scenario():
        async with pooled(raw, idle_s) as (pool, url):
            for _ in range(requests):
                assert await fetch(pool, url) == ANSWER

    asyncio.run(scenario())
    return raw


@pytest.mark.parametrize("answer", [WHOLE, CHUNKED], ids=["content-length", "chunked"])
def test_whole_answers_one_after_another_share_one_connection(answer):
    kept_before, new_before = count("kept"), count("new")
    raw = run_requests(lambda connection, request: answer, 4)
    assert raw.connections == 1 and [connection for connection, _ in raw.requests] == [1, 1, 1, 1]
    assert all(b"Connection: close" not in head for _, head in raw.requests)
    assert count("kept") - kept_before == 3 and count("new") - new_before == 1
    assert raw.closed_by_gateway == 1  # the pool closed it on the way out


@pytest.mark.parametrize(("answer", "close_after"), [(CLOSING, False), (UNFRAMED, True)],
                         ids=["connection-close", "ends-with-its-connection"])
def test_an_answer_that_does_not_keep_its_connection_leaves_none_to_take(answer, close_after):
    def reply(connection: int, request: int) -> bytes | None:
        return answer if request == 1 else None  # a second request on the connection would get nothing

    raw = run_requests(reply, 3, close_after=lambda request: close_after)
    assert raw.connections == 3 and len(raw.requests) == 3


def test_without_keepalive_every_request_asks_for_a_connection_of_its_own():
    raw = run_requests(lambda connection, request: WHOLE, 3, idle_s=0)
    assert raw.connections == 3 and all(b"Connection: close" in head for _, head in raw.requests)


def test_bytes_after_an_answer_make_its_connection_unfit_to_keep():
    raw = run_requests(lambda connection, request: WHOLE + b"HTTP/1.1 200 OK\r\n" if request == 1 else None, 2)
    assert raw.connections == 2 and [connection for connection, _ in raw.requests] == [1, 2]


def test_a_kept_connection_the_backend_closed_as_the_request_went_out_is_retried_on_a_new_one():
    """The backend closes a kept connection on the next request, without a byte (an idle timeout that crossed
    the request): the request goes again on a new connection, and the caller sees only the answer."""
    stale_before = count("stale")
    raw = run_requests(lambda connection, request: WHOLE if request == 1 else None, 3)
    assert [connection for connection, _ in raw.requests] == [1, 1, 2, 2, 3]
    assert count("stale") - stale_before == 2


def test_a_kept_connection_that_broke_off_mid_answer_is_not_retried():
    """A byte of an answer came: the backend took the request, and sending it again could run it twice."""
    raw = RawBackend(lambda connection, request: WHOLE if request == 1 else b"HTTP/1.1 200",
                     close_after=lambda request: request == 2)

    async def scenario():
        async with pooled(raw) as (pool, url):
            assert await fetch(pool, url) == ANSWER
            with pytest.raises(BackendClosed):
                await fetch(pool, url)

    asyncio.run(scenario())
    assert raw.connections == 1 and len(raw.requests) == 2


def test_a_connection_idle_past_the_keepalive_is_closed_by_the_gateway():
    raw = RawBackend(lambda connection, request: WHOLE)

    async def scenario():
        async with pooled(raw, idle_s=0.05) as (pool, url):
            assert await fetch(pool, url) == ANSWER
            await asyncio.sleep(0.2)
            closed_while_idle = raw.closed_by_gateway
            assert await fetch(pool, url) == ANSWER
        return closed_while_idle

    assert asyncio.run(scenario()) == 1
    assert raw.connections == 2


def test_a_caller_who_leaves_mid_answer_closes_the_connection_instead_of_keeping_it():
    """Closing is how an engine learns to stop generating: a connection with an answer still coming is never kept."""
    raw = RawBackend(lambda connection, request: WHOLE[:-5])  # the rest of the answer never comes

    async def scenario():
        async with pooled(raw) as (pool, url):
            reading = asyncio.create_task(fetch(pool, url))
            await asyncio.sleep(0.1)
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            await asyncio.sleep(0.05)
            return sum(len(idle) for idle in pool.idle.values())

    assert asyncio.run(scenario()) == 0
    assert raw.closed_by_gateway == 1


def test_a_stale_kept_connection_counts_against_no_backend():
    """Through `Upstream`: the backend's breaker hears nothing of a kept connection it closed itself."""
    raw = RawBackend(lambda connection, request: WHOLE if request == 1 else None)
    registry = Registry()
    upstream = Upstream(registry, Gate())

    async def scenario():
        url = await raw.start()
        with taddons.context(upstream) as tctx:
            tctx.configure(upstream, upstream_keepalive_s=4)
            answers = [await upstream.fetch_whole(context_for(backend(1, url))) for _ in range(2)]
            await upstream.done()
        raw.server.close()
        return answers

    assert [status for status, _, _ in asyncio.run(scenario())] == [200, 200]
    assert registry.failed_backends == [] and raw.connections == 2
