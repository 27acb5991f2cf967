"""The body limit's decisions: which requests are held, what a held body keeps, what goes back in."""

from __future__ import annotations

import asyncio
import json

from mitmproxy.net.http import http1
from mitmproxy.test import taddons, tflow

from addons.body_limit import HELD_HEADER, PEER_HEADER, BodyLimit, HeldBody
from addons.context import CALLER_ADDRESS_KEY, caller_address


def post(path: str, headers: dict[str, str], content: bytes = b""):
    flow = tflow.tflow()
    flow.request.method, flow.request.path, flow.request.content = "POST", path, content
    flow.request.headers.clear()
    for name, value in headers.items():
        flow.request.headers[name] = value
    return flow


def held(flow, limit: int = 10, over: bool = False) -> HeldBody:
    async def make() -> HeldBody:  # its events belong to a running loop
        return HeldBody(flow, limit, over)
    return asyncio.run(make())


def run_requestheaders(addon: BodyLimit, flow, max_request_body_mb: int = 1) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, max_request_body_mb=max_request_body_mb)
        addon.sink_url = "http://127.0.0.1:9"
        addon.requestheaders(flow)


def test_a_request_within_its_declared_limit_is_left_to_mitmproxy():
    flow = post("/v1/chat/completions", {"Content-Length": str(2**20)})
    run_requestheaders(BodyLimit(), flow)
    assert not flow.request.stream and flow.request.port != 9


def test_a_declared_length_over_the_limit_and_a_chunked_body_are_held_and_sent_to_the_sink():
    addon = BodyLimit()
    for headers, over in (({"Content-Length": str(2**20 + 1)}, True), ({"Transfer-Encoding": "chunked"}, False)):
        flow = post("/api/chat", headers)
        run_requestheaders(addon, flow)
        body = addon.held[flow.request.headers[HELD_HEADER]]
        assert flow.request.stream is body and body.over.is_set() is over
        assert (flow.request.host, flow.request.port) == ("127.0.0.1", 9)


def test_a_held_body_keeps_its_pieces_up_to_the_limit_sends_none_on_and_drops_the_rest():
    body = held(post("/api/chat", {}), limit=10)
    assert body(b"12345") == [] and body(b"67890") == []
    assert bytes(body.content) == b"1234567890" and not body.over.is_set()
    body(b"x")
    assert body.over.is_set() and body.content == b""
    body(b"more")
    assert body.content == b"" and not body.ended.is_set()
    body(b"")
    assert body.ended.is_set()


def test_the_413_is_in_the_dialect_of_the_path():
    for path, error in (("/v1/completions", lambda e: e["error"]["code"]), ("/api/generate", lambda e: e["error"])):
        answer = held(post(path, {}), limit=10).too_large()
        head, _, content = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower()
        assert error(json.loads(content)) in ("request_too_large", "request body is larger than the limit of 10 bytes")


def test_a_held_body_goes_back_in_whole_with_a_content_length_and_the_callers_address():
    flow = post("/api/chat?x=1", {"Transfer-Encoding": "chunked", "Authorization": "Bearer k", HELD_HEADER: "h"})
    flow.client_conn.peername = ("10.1.2.3", 5000)
    body = held(flow)
    body(b'{"a": 1}')
    request = http1.read_request_head(body.resent("token").split(b"\r\n\r\n")[0].split(b"\r\n"))
    assert request.path == "/api/chat?x=1" and request.headers["Authorization"] == "Bearer k"
    assert request.headers["Content-Length"] == "8" and "Transfer-Encoding" not in request.headers
    assert HELD_HEADER not in request.headers and request.headers[PEER_HEADER] == "token 10.1.2.3"
    assert body.resent("token").endswith(b'\r\n\r\n{"a": 1}')


def test_the_callers_address_is_believed_only_with_this_process_token():
    addon = BodyLimit()
    forged = post("/api/chat", {PEER_HEADER: "0" * 32 + " 10.9.9.9"})
    run_requestheaders(addon, forged)
    assert PEER_HEADER not in forged.request.headers and caller_address(forged) == forged.client_conn.peername[0]
    vouched = post("/api/chat", {PEER_HEADER: f"{addon.token} 10.9.9.9"})
    run_requestheaders(addon, vouched)
    assert vouched.metadata[CALLER_ADDRESS_KEY] == caller_address(vouched) == "10.9.9.9"
