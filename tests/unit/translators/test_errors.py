"""Engine errors reach the caller in its own dialect, never raw; broken streams end cleanly."""

import json

import pytest

from translators.pipeline import (
    build_backend_request,
    parse_client_request,
    response_translator,
    stream_error_event,
    translate_backend_error,
)

# The shape of a real vLLM error (DESIGN section 4; vllm/entrypoints/openai/protocol.py ErrorResponse).
VLLM_NOT_FOUND = json.dumps(
    {
        "error": {
            "message": "The model `llama9` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    }
).encode()
OLLAMA_NOT_FOUND = b'{"error":"model \'llama9\' not found"}'
MITMPROXY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body>upstream down</body></html>"


def test_vllm_error_reaches_an_ollama_client_as_a_string_error():
    status, body = translate_backend_error("vllm", 404, VLLM_NOT_FOUND, "ollama")
    assert (status, json.loads(body)) == (404, {"error": "The model `llama9` does not exist."})


def test_vllm_error_reaches_an_openai_client_unchanged():
    assert translate_backend_error("vllm", 404, VLLM_NOT_FOUND, "openai") == (404, VLLM_NOT_FOUND)


def test_ollama_error_reaches_an_openai_client_in_openai_shape():
    status, body = translate_backend_error("ollama", 404, OLLAMA_NOT_FOUND, "openai")
    assert status == 404
    assert json.loads(body)["error"] == {
        "message": "model 'llama9' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }


def test_ollama_error_reaches_an_ollama_client_unchanged():
    assert translate_backend_error("ollama", 400, OLLAMA_NOT_FOUND, "ollama") == (400, OLLAMA_NOT_FOUND)


@pytest.mark.parametrize("dialect", ["openai", "ollama"])
def test_a_non_json_error_page_is_never_passed_through(dialect):
    status, body = translate_backend_error("vllm", 502, MITMPROXY_PAGE, dialect)
    value = json.loads(body)
    message = value["error"]["message"] if dialect == "openai" else value["error"]
    assert status == 502
    assert message == "backend answered HTTP 502"


def test_a_plain_text_error_keeps_its_text_and_a_server_error_becomes_502():
    status, body = translate_backend_error("ollama", 500, b"out of memory", "ollama")
    assert (status, json.loads(body)) == (502, {"error": "backend answered HTTP 500: out of memory"})


def test_vllms_older_error_object_is_understood():
    older = json.dumps(
        {"object": "error", "message": "context too long", "type": "BadRequestError", "code": 400}
    ).encode()
    status, body = translate_backend_error("vllm", 400, older, "ollama")
    assert (status, json.loads(body)) == (400, {"error": "context too long"})


def translator_for(path: str, engine: str, body: dict):
    req = parse_client_request(path, json.dumps(body).encode())
    build_backend_request(req, engine, "req-1")
    return response_translator(req, engine, "req-1", 1700000000)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_translate_body_turns_an_engine_error_status_into_the_clients_dialect():
    translator = translator_for("/api/chat", "vllm", {**CHAT, "stream": False})
    status, body = translator.translate_body(404, VLLM_NOT_FOUND)
    assert (status, json.loads(body)) == (404, {"error": "The model `llama9` does not exist."})


def test_a_success_status_with_a_non_json_body_is_a_502_in_the_clients_dialect():
    translator = translator_for("/v1/chat/completions", "ollama", CHAT)
    status, body = translator.translate_body(200, b"<html>proxy says hi</html>")
    assert status == 502
    assert "not a JSON object" in json.loads(body)["error"]["message"]


def test_stream_error_events_have_each_dialects_shape():
    assert stream_error_event("ollama", "backend died") == b'{"error": "backend died"}\n'
    openai_event = stream_error_event("openai", "backend died")
    error_event, done, rest = openai_event.split(b"\n\n")
    assert json.loads(error_event.removeprefix(b"data: "))["error"]["message"] == "backend died"
    assert (done, rest) == (b"data: [DONE]", b"")


def test_a_vllm_error_mid_stream_ends_an_ollama_clients_stream_with_an_error_line():
    stream = (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
        b'data: {"error":{"message":"engine crashed","type":"InternalServerError","param":null,"code":500}}\n\n'
        b"data: [DONE]\n\n"
    )
    translator = translator_for("/api/chat", "vllm", CHAT)
    lines = b"".join(translator.feed(stream) + translator.finish()).splitlines()
    assert json.loads(lines[0])["message"]["content"] == "Hi"
    assert lines[1:] == [b'{"error": "engine crashed"}']


def test_an_ollama_error_mid_stream_ends_an_openai_clients_stream_with_an_error_event():
    stream = (
        b'{"model":"m","created_at":"x","message":{"role":"assistant","content":"Hi"},"done":false}\n'
        b'{"error":"an error was encountered while running the model"}\n'
    )
    translator = translator_for("/v1/chat/completions", "ollama", {**CHAT, "stream": True})
    out = b"".join(translator.feed(stream) + translator.finish())
    assert out.endswith(stream_error_event("openai", "an error was encountered while running the model"))
    assert out.count(b"[DONE]") == 1


@pytest.mark.parametrize(
    ("path", "engine", "dialect"),
    [
        ("/api/chat", "ollama", "ollama"),
        ("/v1/chat/completions", "vllm", "openai"),
        ("/api/chat", "vllm", "ollama"),
    ],
)
def test_a_stream_that_breaks_off_ends_with_an_error_event(path, engine, dialect):
    partial = (
        b'{"model":"m","created_at":"x","message":{"role":"assistant","content":"Hi"},"done":false}\n'
        if engine == "ollama"
        else b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    )
    translator = translator_for(path, engine, {**CHAT, "stream": True})
    translator.feed(partial)
    assert translator.finish() == [
        stream_error_event(dialect, "backend stream ended before the response was complete")
    ]


def test_a_malformed_stream_chunk_ends_the_stream_with_an_error_event():
    translator = translator_for("/api/chat", "ollama", CHAT)
    out = translator.feed(b'{"model":"m","message":{"content":"Hi"},"done":false}\n{garbage\n')
    assert out[-1] == stream_error_event("ollama", "backend sent a stream chunk that is not a JSON object")
    assert translator.feed(b'{"model":"m","message":{"content":"more"},"done":false}\n') == []
    assert translator.finish() == []


def test_finish_on_a_whole_body_translator_adds_nothing():
    translator = translator_for("/api/chat", "ollama", {**CHAT, "stream": False})
    assert translator.finish() == []
