"""What the gateway refuses at its edge, before any key is checked: over-size bodies and too many connections."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from sim.stack import wait_until
from tests.support.cluster import NO_LIMITS, start_cluster

BODY_LIMIT_MB = 1
MAX_CONNECTIONS = 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("edge")
    stack = start_cluster(work_dir, f"sqlite:///{work_dir / 'db.sqlite'}", gateway_options=(
        f"max_request_body_mb={BODY_LIMIT_MB}", f"max_client_connections={MAX_CONNECTIONS}", *NO_LIMITS))
    yield stack
    stack.stop()


def gateway_address(stack) -> tuple[str, int]:
    url = httpx.URL(stack.gateway_url)
    return url.host, url.port


def status_line(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    answer = b""
    while b"\r\n" not in answer:
        piece = sock.recv(4096)
        if not piece:
            break
        answer += piece
    return answer.split(b"\r\n", 1)[0]


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(cluster):
    """No key, a Content-Length of 10 GiB and not one byte of it: the answer comes at once."""
    with socket.create_connection(gateway_address(cluster)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10737418240\r\n\r\n")
        assert b" 413 " in status_line(sock)


def test_an_endless_chunked_body_is_cut_at_the_limit(cluster):
    chunk = b"x" * 2**16
    sent = 0
    with socket.create_connection(gateway_address(cluster)) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.settimeout(2)  # a gateway that stopped reading fills the buffers: sending then stalls
        try:
            while sent < 256 * 2**20:  # bounded: the gateway must stop us long before
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        assert sent <= 24 * 2**20  # the limit, plus what the two sockets' buffers hold
        assert b" 413 " in status_line(sock)


def test_a_body_over_the_limit_from_an_sdk_gets_413(cluster):
    headers = {"Authorization": f"Bearer {cluster.keys['student1']}"}
    body = {"model": "llama3.2", "prompt": "x" * (BODY_LIMIT_MB * 2**20 + 10), "stream": False}
    response = httpx.post(f"{cluster.gateway_url}/api/generate", json=body, headers=headers, timeout=30)
    assert response.status_code == 413


def test_connections_over_the_ceiling_are_closed_and_the_gateway_keeps_serving(cluster):
    held = [socket.create_connection(gateway_address(cluster)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)
        with socket.create_connection(gateway_address(cluster)) as extra:
            extra.settimeout(5)
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            try:
                assert extra.recv(4096) == b""  # closed without an answer
            except ConnectionResetError:
                pass
    finally:
        for sock in held:
            sock.close()
    # Closed connections leave the count as mitmproxy notices them: a new one is served within moments.
    wait_until(lambda: httpx.get(f"{cluster.gateway_url}/healthz", timeout=2).status_code == 200, 10,
               "the gateway to serve again")
