"""Which image URLs the gateway refuses to fetch on a caller's behalf, and where it connects when it does."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import json
import secrets
import socket
import ssl
import threading

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from mitmproxy import certs
from mitmproxy.test import taddons, tflow

import addons.images as images_module
from addons.body_limit import BodyLimit
from addons.context import CONTEXT_KEY, RequestContext, Route
from addons.image_fetch import ImageFetch
from addons.images import ImageFetcher, is_public, resolve_once
from addons.translate import Translate
from translators.errors import GatewayError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.mark.parametrize(("address", "public"), [
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.10", False), ("169.254.169.254", False),
    ("100.64.0.1", False), ("100.127.255.254", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:100.64.0.1", False), ("2002:a00:1::", False), ("64:ff9b::7f00:1", False),
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("::ffff:8.8.8.8", True), ("64:ff9b::808:808", True),
])
def test_only_public_addresses_pass(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


def test_shared_address_space_is_refused():
    # 100.64.0.0/10 (carrier-grade NAT) is neither private nor loopback, and passed the old check.
    with pytest.raises(GatewayError) as refused:
        asyncio.run(resolve_once("100.64.0.1", 80, allow_internal=False))
    assert refused.value.status == 400 and "internal address" in refused.value.message


def fake_resolver(monkeypatch, answers: dict[str, list[list[str]]]):
    """socket.getaddrinfo answering each listed name from its list of answers, one answer set per call
    (the last repeats); every other host resolves for real. Returns the calls per name."""
    real = socket.getaddrinfo
    calls: dict[str, int] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        n = calls[host] = calls.get(host, 0) + 1
        addresses = answers[host][min(n, len(answers[host])) - 1]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_a_name_with_any_internal_answer_is_refused(monkeypatch):
    fake_resolver(monkeypatch, {"mixed.example": [["8.8.8.8", "10.0.0.5"]]})
    with pytest.raises(GatewayError) as refused:
        asyncio.run(resolve_once("mixed.example", 443, allow_internal=False))
    assert "10.0.0.5" in refused.value.message


@pytest.fixture
def image_server():
    """A PNG on 127.0.0.1, remembering every request's path and Host header."""
    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Host", "")))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen
    server.shutdown()


def fetch_with(fetcher: ImageFetcher, url: str, **options):
    async def main():
        with taddons.context(fetcher) as tctx:
            tctx.configure(fetcher, **options)
            fetcher.running()
            try:
                return await fetcher.fetch(url)
            finally:
                await fetcher.done()

    return asyncio.run(main())


def test_the_fetch_connects_to_the_address_that_was_vetted_not_a_second_answer(monkeypatch, image_server):
    # DNS rebinding: the first answer passes the check, every later one names an internal address.
    port, seen = image_server
    calls = fake_resolver(monkeypatch, {"images.example": [["127.0.0.1"], ["127.0.0.2"]]})
    monkeypatch.setattr(images_module, "is_public", lambda address: str(address) == "127.0.0.1")
    data, media_type = fetch_with(ImageFetcher(), f"http://images.example:{port}/cat.png")
    assert (data, media_type) == (PNG, "image/png")
    assert calls == {"images.example": 1}
    assert seen == [("/cat.png", f"images.example:{port}")]  # the server still sees the URL's own name


def test_allow_internal_still_connects_to_the_one_address_resolved(monkeypatch, image_server):
    port, seen = image_server
    calls = fake_resolver(monkeypatch, {"internal.example": [["127.0.0.1"], ["127.0.0.2"]]})
    data, _ = fetch_with(ImageFetcher(), f"http://internal.example:{port}/a.png", image_fetch_allow_internal=True)
    assert data == PNG and calls == {"internal.example": 1} and len(seen) == 1


def test_loopback_is_refused_without_allow_internal(image_server):
    port, seen = image_server
    with pytest.raises(GatewayError) as refused:
        fetch_with(ImageFetcher(), f"http://127.0.0.1:{port}/cat.png")
    assert refused.value.status == 400 and seen == []


def inference_flow(body: dict):
    flow = tflow.tflow()
    flow.request.content = json.dumps(body).encode()
    context = RequestContext(request_id=secrets.token_hex(12), route=Route("inference", "openai", "/v1/chat/completions"),
                             client_address="127.0.0.1")
    flow.metadata[CONTEXT_KEY] = context
    return flow, context


def image_request(urls: list[str]) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, *parts]}]}


def translate_then_fetch(flow, **options) -> None:
    """Translate's and ImageFetch's request hooks, in the gateway's order (Policy would run between them)."""
    translate, fetch = Translate(), ImageFetch()

    async def main():
        with taddons.context(BodyLimit(), translate, fetch) as tctx:  # BodyLimit declares the body limit
            tctx.configure(fetch, **options)
            fetch.running()
            try:
                await translate.request(flow)
                await fetch.request(flow)
            finally:
                await fetch.done()

    asyncio.run(main())


def test_more_image_urls_than_the_cap_are_refused_before_any_fetch(image_server):
    port, seen = image_server
    flow, _ = inference_flow(image_request([f"http://127.0.0.1:{port}/{n}.png" for n in range(9)]))
    translate_then_fetch(flow, image_fetch_allow_internal=True, image_fetch_max_urls=8)
    assert flow.response.status_code == 400
    assert json.loads(flow.response.content)["error"]["code"] == "too_many_image_urls"
    assert seen == []


def test_translate_leaves_fetching_to_image_fetch(image_server):
    port, seen = image_server
    flow, context = inference_flow(image_request([f"http://127.0.0.1:{port}/{n}.png" for n in range(8)]))
    translate, fetch = Translate(), ImageFetch()

    async def main():
        with taddons.context(BodyLimit(), translate, fetch) as tctx:  # BodyLimit declares the body limit
            tctx.configure(fetch, image_fetch_allow_internal=True)
            fetch.running()
            try:
                await translate.request(flow)
                fetched_by_translate = len(seen)
                await fetch.request(flow)
                return fetched_by_translate
            finally:
                await fetch.done()

    assert asyncio.run(main()) == 0
    assert flow.response is None and len(seen) == 8
    assert all(image.data == PNG for image in context.canonical.images)


def test_a_large_body_is_parsed_off_the_event_loop(monkeypatch):
    threads = []
    real_parse = __import__("translators.pipeline", fromlist=["parse_client_request"]).parse_client_request

    def parse(*args):
        threads.append(threading.current_thread())
        return real_parse(*args)

    monkeypatch.setattr("addons.translate.parse_client_request", parse)
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * (300 * 2**10)}]}
    small = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    for body in (big, small):
        flow, _ = inference_flow(body)
        translate_then_fetch(flow)
        assert flow.response is None
    assert threads[0] is not threading.main_thread() and threads[1] is threading.main_thread()


@pytest.fixture
def tls_image_server(tmp_path):
    """A PNG over https on 127.0.0.1 with a certificate for images.example only; remembers each TLS server name."""
    store = certs.CertStore.from_store(tmp_path, "test-ca", 2048)
    entry = store.get_cert("images.example", [])
    (tmp_path / "server.pem").write_bytes(entry.cert.to_pem() + entry.privatekey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server_names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.pem")
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], server_names, str(tmp_path / "test-ca-ca-cert.pem")
    server.shutdown()


def test_https_keeps_the_urls_name_for_the_tls_server_name_and_certificate(monkeypatch, tls_image_server):
    port, server_names, ca_file = tls_image_server
    calls = fake_resolver(monkeypatch, {"images.example": [["127.0.0.1"], ["127.0.0.2"]]})
    monkeypatch.setattr(images_module, "is_public", lambda address: str(address) == "127.0.0.1")
    fetcher = ImageFetcher()

    async def main():
        with taddons.context(fetcher):
            fetcher.client = httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca_file), trust_env=False)
            try:
                return await fetcher.fetch(f"https://images.example:{port}/cat.png")
            finally:
                await fetcher.done()

    assert asyncio.run(main()) == (PNG, "image/png")
    assert server_names == ["images.example"] and calls == {"images.example": 1}
