"""What the gateway refuses at its edge, before any key is checked: over-size bodies and too many connections.
Chunked bodies under the limit take the ordinary path, through the body sink (addons/body_limit.py)."""

from __future__ import annotations

import json
import select
import socket
import time

import httpx
import openai
import pytest

from addons.body_limit import PEER_HEADER
from sim import generation
from sim.stack import wait_until
from store import init_database
from store.models import Request, RequestBody
from tests.support.cluster import NO_LIMITS, slot_gauges, start_cluster

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


def read_answer(sock: socket.socket) -> tuple[bytes, dict]:
    """The status line and JSON body of the answer on `sock` (read by its Content-Length: the gateway reads
    and drops the rest of a refused body for a while before it closes the connection)."""
    sock.settimeout(10)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n", 1)[0], json.loads(body)


def test_a_declared_body_over_the_limit_is_refused_in_the_dialect_before_it_is_sent(cluster):
    """No key, a Content-Length of 10 GiB and not one byte of it: the answer comes at once, in OpenAI's
    shape."""
    with socket.create_connection(gateway_address(cluster)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10737418240\r\n\r\n")
        status, body = read_answer(sock)
    assert b" 413 " in status
    assert body["error"]["code"] == "request_too_large" and str(BODY_LIMIT_MB * 2**20) in body["error"]["message"]


def test_an_endless_chunked_body_is_refused_as_it_passes_the_limit(cluster):
    """The 413 comes while the body is still being sent (the rest is read and dropped, never kept)."""
    chunk = b"x" * 2**16
    sent = 0
    with socket.create_connection(gateway_address(cluster)) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not select.select([sock], [], [], 0)[0]:
            assert sent <= 24 * 2**20  # the limit, plus what the sockets' buffers and the relays hold
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        assert sent > BODY_LIMIT_MB * 2**20
        status, body = read_answer(sock)
    assert b" 413 " in status and "request body is larger" in body["error"]  # Ollama's shape


def test_a_body_over_the_limit_from_an_sdk_gets_413_in_its_dialect(cluster):
    client = openai.OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key=cluster.keys["student1"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        client.completions.create(model="llama3.2", prompt="x" * (20 * BODY_LIMIT_MB * 2**20))  # sent whole, then read
    assert refused.value.status_code == 413 and refused.value.code == "request_too_large"


def chunked(body: bytes, piece: int = 1000):
    """A body whose size the gateway learns only at its end (httpx sends a generator chunked)."""
    for start in range(0, len(body), piece):
        yield body[start:start + piece]


def chat_body(prompt: str, stream: bool) -> bytes:
    return json.dumps({"model": "llama3.2", "stream": stream, "messages": [{"role": "user", "content": prompt}]}).encode()


def audit_row(cluster, prompt: str) -> Request:
    init_database(cluster.env["DATABASE_URL"])
    query = Request.select().join(RequestBody).where(RequestBody.prompt.contains(prompt))
    wait_until(lambda: query.exists(), 10, f"the audit row of {prompt!r}")
    return query.get()


def test_a_chunked_body_under_the_limit_is_served_and_audited_with_the_callers_address(cluster):
    prompt = "a chunked question about rye " + "y" * 5000
    transport = httpx.HTTPTransport(local_address="127.0.0.2")  # not the sink's own loopback address
    with httpx.Client(transport=transport, timeout=30) as client:
        answer = client.post(f"{cluster.gateway_url.replace('127.0.0.1', '127.0.0.2')}/api/chat",
                             content=chunked(chat_body(prompt, stream=False)),
                             headers={"Authorization": f"Bearer {cluster.keys['staff1']}"})
    assert answer.status_code == 200
    assert answer.json()["message"]["content"] == generation.reply_text("llama3.2", prompt)
    row = audit_row(cluster, "a chunked question about rye")
    assert (row.endpoint, row.status, row.client_address, row.user.username) == ("/api/chat", 200, "127.0.0.2", "staff1")


def test_chunked_requests_one_after_another_on_one_connection_are_all_answered(cluster):
    """The sink answers one request per connection: mitmproxy must not send the next one on it."""
    headers = {"Authorization": f"Bearer {cluster.keys['staff1']}"}
    with httpx.Client(timeout=10) as client:
        statuses = [client.request(method, f"{cluster.gateway_url}{path}", headers=headers,
                                   content=chunked(b'{"model": "llama3.2"}')).status_code
                    for method, path in [("GET", "/v1/models"), ("PATCH", "/api/embeddings"), ("GET", "/api/tags")] * 2]
    assert statuses == [200, 405, 200] * 2


def test_a_callers_own_peer_header_is_ignored(cluster):
    prompt = "a question that claims another address"
    answer = httpx.post(f"{cluster.gateway_url}/api/chat", content=chat_body(prompt, stream=False), timeout=30,
                        headers={"Authorization": f"Bearer {cluster.keys['staff1']}", PEER_HEADER: "0" * 32 + " 10.9.9.9"})
    assert answer.status_code == 200
    assert audit_row(cluster, prompt).client_address == "127.0.0.1"


def test_a_chunked_body_gets_its_streamed_answer_whole_and_in_pieces(cluster):
    prompt = "a chunked question for a stream"
    with httpx.stream("POST", f"{cluster.gateway_url}/api/chat", content=chunked(chat_body(prompt, stream=True)),
                      headers={"Authorization": f"Bearer {cluster.keys['faculty1']}"}, timeout=30) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in answer.iter_lines() if line]
    assert len(lines) > 2 and lines[-1]["done"] is True and lines[-1]["eval_count"] == len(lines) - 1
    assert "".join(line["message"]["content"] for line in lines) == generation.reply_text("llama3.2", prompt)


def test_a_caller_who_leaves_a_chunked_request_frees_its_slot(cluster):
    httpx.post(f"{cluster.ollama_url}/_sim/faults", json={"mode": "hang", "count": 1})
    body = chat_body("a question the node sits on", stream=True)
    try:
        with socket.create_connection(gateway_address(cluster)) as sock:
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                         % (cluster.keys["faculty1"].encode(), len(body), body))
            wait_until(lambda: slot_gauges(cluster)["mindrouter_in_flight_requests"] == 1, 10, "the request to hold a slot")
        # Leaving closes the caller's connection, then the sink's request back into the gateway.
        wait_until(lambda: slot_gauges(cluster)["mindrouter_in_flight_requests"] == 0, 10, "the slot to come back")
    finally:
        httpx.post(f"{cluster.ollama_url}/_sim/reset")


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
