"""The test hooks under /_sim: faults on demand, what callers sent, and reset, on both engines."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

QUESTION = [{"role": "user", "content": "why is the sky blue?"}]
CHAT_PATH = {"ollama": "/api/chat", "vllm": "/v1/chat/completions"}


@pytest.fixture(params=["ollama", "vllm"])
def engine(request) -> str:
    return request.param


class Node:
    """A started node of either engine with the few calls these tests make."""

    def __init__(self, http: httpx.Client, url: str, engine: str):
        self.http, self.url, self.engine = http, url, engine
        self.chat_path = CHAT_PATH[engine]

    def chat(self, stream: bool, **kwargs) -> httpx.Response:
        body = {"model": "llama3.2", "messages": QUESTION, "stream": stream}
        return self.http.post(self.url + self.chat_path, json=body, **kwargs)

    def arm(self, mode: str, count: int = 1) -> None:
        response = self.http.post(f"{self.url}/_sim/faults", json={"mode": mode, "count": count})
        assert response.json() == {"mode": mode, "remaining": count}

    def stats(self) -> dict:
        return self.http.get(f"{self.url}/_sim/stats").json()

    def reset(self) -> None:
        self.http.post(f"{self.url}/_sim/reset")


@pytest.fixture
def node(start_node, engine, http) -> Node:
    return Node(http, start_node(engine), engine)


def test_error500_fails_the_next_count_requests_with_the_engines_error_body(node):
    node.arm("error500", count=2)
    failures = [node.chat(stream=False) for _ in range(2)]
    assert [f.status_code for f in failures] == [500, 500]
    error = failures[0].json()["error"]
    if node.engine == "vllm":
        assert (error["type"], error["code"], error["param"]) == ("InternalServerError", 500, None)
    else:
        assert isinstance(error, str)
    assert node.chat(stream=False).status_code == 200


def test_drop_closes_the_connection_before_any_response(node):
    node.arm("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        node.chat(stream=True)
    assert node.chat(stream=True).status_code == 200


@pytest.mark.parametrize("stream", [True, False])
def test_drop_midstream_cuts_the_answer_after_it_started(node, stream):
    node.arm("drop_midstream")
    received = []
    body = {"model": "llama3.2", "messages": QUESTION, "stream": stream}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        node.http.stream("POST", node.url + node.chat_path, json=body) as response,
    ):
        assert response.status_code == 200
        received.extend(response.iter_bytes())
    assert received, "part of the answer arrives before the connection dies"


def test_hang_never_answers_until_reset_releases_it(node):
    node.arm("hang")
    outcome = []

    def hung_request():
        try:
            outcome.append(node.chat(stream=False, timeout=5))
        except httpx.HTTPError as error:
            outcome.append(error)

    caller = threading.Thread(target=hung_request)
    caller.start()
    time.sleep(0.2)
    assert outcome == [] and caller.is_alive()
    node.reset()
    caller.join(2)
    assert isinstance(outcome[0], httpx.RemoteProtocolError)


def test_stats_count_requests_and_tokens_and_keep_what_was_sent(node):
    node.chat(stream=False, headers={"Accept-Encoding": "identity", "X-Trace": "t-1"})
    node.chat(stream=True)
    seen = node.stats()
    assert seen["engine"] == node.engine and seen["requests"] == {node.chat_path: 2}
    assert seen["tokens"]["llama3.2" if node.engine == "vllm" else "llama3.2:latest"]["completion"] > 0
    first = seen["recent"][0]
    assert (first["method"], first["path"], first["body"]["messages"]) == ("POST", node.chat_path, QUESTION)
    assert first["headers"]["Accept-Encoding"] == "identity" and first["headers"]["X-Trace"] == "t-1"
    assert first["headers"]["Host"] == node.url.removeprefix("http://")
    assert (seen["running"], seen["waiting"]) == (0, 0)


def test_recent_requests_are_bounded_to_the_last_hundred(node):
    for _ in range(105):
        node.http.get(node.url + ("/api/version" if node.engine == "ollama" else "/version"))
    recent = node.stats()["recent"]
    assert len(recent) == 100 and recent[-1]["id"] - recent[0]["id"] == 99


def test_reset_clears_stats_and_faults(node):
    node.chat(stream=False)
    node.arm("error500", count=5)
    node.reset()
    assert node.chat(stream=False).status_code == 200
    after = node.stats()
    assert after["requests"] == {node.chat_path: 1} and len(after["recent"]) == 1
    assert after["faults"] == {"mode": None, "remaining": 0}


def test_unknown_fault_mode_is_refused(node):
    response = node.http.post(f"{node.url}/_sim/faults", json={"mode": "explode", "count": 1})
    assert response.status_code == 400 and "error500" in response.json()["error"]


def test_peak_in_flight_counts_what_callers_sent_at_once_until_reset(start_node, engine, http):
    """Gateways test their slot limits against this counter: running and waiting requests together."""
    node = Node(http, start_node(engine, tokens_per_s=50, slots=2), engine)
    with httpx.Client(timeout=30) as other:
        callers = [threading.Thread(target=lambda: other.post(node.url + node.chat_path, json={
            "model": "llama3.2", "messages": QUESTION, "stream": False})) for _ in range(3)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
    assert node.stats()["peak_in_flight"] == 3
    node.reset()
    assert node.stats()["peak_in_flight"] == 0
