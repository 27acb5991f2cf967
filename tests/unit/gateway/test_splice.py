"""The stream relay splices a backend's content on as it comes, a read at a time, never half a chunk, and always
ends the stream well-formed."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from mitmproxy.test import taddons

from addons.context import RequestContext
from addons.splice import ChunkedBody, dechunk
from addons.upstream import RELAY_HEADER, Upstream
from tests.support.upstream_fakes import Gate, Registry, backend, context_for

EVENT = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"qwen","choices":[{"index":0,' \
        b'"delta":{"content":"%s"},"finish_reason":null}]}\n\n'
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


BODY = chunk(EVENT % b"he") + chunk(EVENT % b"llo") + chunk(b"data: [DONE]\n\n") + b"0\r\nX-Trailer: 1\r\n\r\n"


def forwarded_in_pieces(body: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    """What the splice forwards of `body` read in pieces cut at `cuts`, holding back unfinished chunks."""
    chunks, held, out = ChunkedBody(), b"", b""
    for start, end in zip([0, *cuts], [*cuts, len(body)]):
        data = held + body[start:end]
        content, taken = chunks.whole_chunks(data)
        out, held = out + content, data[taken:]
    return out, chunks.ended


def test_whole_chunks_pass_at_once_and_a_cut_one_waits_for_its_end():
    content = EVENT % b"he" + EVENT % b"llo" + b"data: [DONE]\n\n"
    assert forwarded_in_pieces(BODY, []) == (content, True)
    for cut in range(1, len(BODY)):
        assert forwarded_in_pieces(BODY, [cut]) == (content, True)
    first = len(chunk(EVENT % b"he"))
    assert forwarded_in_pieces(BODY[:first + 5], []) == (EVENT % b"he", False)  # the cut chunk is held back


def test_a_malformed_chunk_size_is_refused():
    with pytest.raises(ValueError):
        ChunkedBody().whole_chunks(b"zz\r\nhello\r\n")


def test_an_error_answer_is_read_through_its_chunks():
    assert dechunk(chunk(b'{"error": ') + chunk(b'"busy"}') + b"0\r\n\r\n") == b'{"error": "busy"}'


async def serve_raw(script):
    """A backend that reads the request, then runs `script(writer)`; yields its URL and what it saw closed."""
    seen_closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await script(writer)
            await reader.read()  # until the gateway closes its end
        finally:
            seen_closed.set()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, "http://127.0.0.1:%d" % server.sockets[0].getsockname()[1], seen_closed


async def relayed_request(upstream: Upstream, url: str = "") -> RequestContext:
    """The relay started, and a streamed request to the backend at `url` waiting for it."""
    await upstream.running()
    context = context_for(backend(1, url), stream=True)
    upstream.relayed[context.request_id] = context
    return context


async def raw_relay_request(upstream: Upstream, url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A streamed request relayed to the backend at `url`, sent to the relay as mitmproxy sends it."""
    await relayed_request(upstream, url)
    host, port = upstream.relay_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /relay HTTP/1.1\r\nHost: relay\r\n%s: req-1\r\n\r\n" % RELAY_HEADER.encode())
    return reader, writer


def relay_once(script, idle_s: int = 5):
    """One streamed request relayed from a raw backend running `script`: (status, raw body bytes, the
    context, the registry's failed backends)."""
    registry = Registry()
    upstream = Upstream(registry, Gate())

    async def scenario():
        server, url, _ = await serve_raw(script)
        with taddons.context(upstream) as tctx:
            tctx.configure(upstream, upstream_stream_idle_s=idle_s)
            context = await relayed_request(upstream, url)
            async with httpx.AsyncClient() as client:  # raises on a malformed or cut-off chunked body
                relayed = await client.post(f"{upstream.relay_url}/relay", headers={RELAY_HEADER: "req-1"}, timeout=10)
            await upstream.done()
        server.close()
        return relayed, context

    relayed, context = asyncio.run(scenario())
    return relayed, context, registry.failed_backends


def test_a_chunked_stream_arrives_with_its_content_and_its_last_chunk():
    async def script(writer):
        writer.write(CHUNKED_HEAD + BODY[:7])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(BODY[7:])
        await writer.drain()

    relayed, context, failed = relay_once(script)
    assert relayed.status_code == 200 and relayed.headers["content-type"] == "text/event-stream"
    assert relayed.headers["transfer-encoding"] == "chunked"
    assert relayed.content == dechunk(BODY) and failed == [] and context.error == ""


def test_chunks_that_arrive_together_are_relayed_as_one():
    upstream = Upstream(Registry(), Gate())

    async def script(writer):
        writer.write(CHUNKED_HEAD + BODY)  # three events and the end, in one read
        await writer.drain()

    async def scenario():
        server, url, _ = await serve_raw(script)
        with taddons.context(upstream):
            reader, writer = await raw_relay_request(upstream, url)
            relayed = await asyncio.wait_for(reader.read(), 5)  # until the relay closes
            writer.close()
            await upstream.done()
        server.close()
        return relayed

    content = dechunk(BODY)
    assert asyncio.run(scenario()).endswith(b"\r\n\r\n" + chunk(content) + b"0\r\n\r\n")


def test_a_backend_that_breaks_off_mid_chunk_leaves_an_ended_stream_of_whole_events():
    async def script(writer):
        writer.write(CHUNKED_HEAD + BODY[:len(chunk(EVENT % b"he")) + 9])
        await writer.drain()
        writer.transport.abort()

    relayed, context, failed = relay_once(script)
    assert relayed.content == EVENT % b"he"  # the cut event is not passed on half-written
    assert failed == ["node-1"] and "broke off mid-stream" in context.error


def test_a_stream_whose_backend_goes_silent_is_ended_and_counts_against_the_backend():
    async def stalled(writer):  # an engine stalled mid-generation: one event, then nothing
        writer.write(CHUNKED_HEAD + chunk(EVENT % b"he"))
        await writer.drain()

    started = time.monotonic()
    relayed, context, failed = relay_once(stalled, idle_s=1)
    elapsed = time.monotonic() - started
    assert relayed.status_code == 200 and b'"he"' in relayed.content
    assert elapsed < 5  # cut after a second of silence, not held for the engine (or tcp_timeout's hour)
    assert failed == ["node-1"] and "broke off" in context.error


def test_a_body_of_known_length_is_chunked_on_the_way():
    payload = EVENT % b"he" + b"data: [DONE]\n\n"

    async def script(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(payload), payload))
        await writer.drain()

    relayed, context, failed = relay_once(script)
    assert relayed.content == payload and failed == []


@pytest.mark.parametrize("status", [503, 502])
def test_an_engine_fault_before_the_first_byte_is_answered_whole(status):
    async def script(writer):
        error = b'{"error": "overloaded"}'
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n"
                     % (status, chunk(error)))
        await writer.drain()
        writer.close()

    relayed, context, failed = relay_once(script)
    assert relayed.status_code == status and relayed.json() == {"error": "overloaded"} and failed == ["node-1"]


def test_a_caller_who_leaves_mid_stream_closes_the_backend_connection():
    upstream = Upstream(Registry(), Gate())

    async def script(writer):
        writer.write(CHUNKED_HEAD + chunk(EVENT % b"he"))
        await writer.drain()

    async def scenario():
        server, url, backend_saw_close = await serve_raw(script)
        with taddons.context(upstream):
            reader, writer = await raw_relay_request(upstream, url)
            first = await reader.readuntil(b"\n\n")
            writer.close()
            await asyncio.wait_for(backend_saw_close.wait(), 5)
            await upstream.done()
        server.close()
        return first

    assert b'"he"' in asyncio.run(scenario())


def test_a_fault_of_the_relay_itself_answers_an_error_instead_of_a_hang(monkeypatch):
    upstream = Upstream(Registry(), Gate())

    async def broken_open(context):
        raise RuntimeError("a bug")

    monkeypatch.setattr(upstream, "open", broken_open)

    async def scenario():
        with taddons.context(upstream):
            context = await relayed_request(upstream)
            async with httpx.AsyncClient() as client:
                relayed = await client.post(f"{upstream.relay_url}/relay", headers={RELAY_HEADER: "req-1"}, timeout=10)
            await upstream.done()
        return relayed, context

    relayed, context = asyncio.run(scenario())
    assert relayed.status_code == 500 and "relay failed" in relayed.json()["error"] and "relay failed" in context.error
