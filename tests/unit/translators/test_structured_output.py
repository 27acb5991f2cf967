"""Structured outputs: the final text is validated; strict schemas turn invalid output into an error."""

import json

import pytest

from translators.pipeline import build_backend_request, parse_client_request, response_translator

# Schema of the "Chat request (Structured outputs)" example in ollama/ollama docs/api.md.
SCHEMA = {
    "type": "object",
    "properties": {"age": {"type": "integer"}, "available": {"type": "boolean"}},
    "required": ["age", "available"],
}
VALID = '{"age": 22, "available": false}'
INVALID = '{"age": "twenty-two"}'


def openai_request(strict: bool, stream: bool = False) -> dict:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "Ollama is 22 years old. JSON please."}],
        "stream": stream,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": SCHEMA, "strict": strict},
        },
    }


def translator_for(path: str, engine: str, body: dict):
    req = parse_client_request(path, json.dumps(body).encode())
    build_backend_request(req, engine, "req-1")
    return response_translator(req, engine, "req-1", 1700000000)


def ollama_answer(content: str) -> bytes:
    return json.dumps(
        {
            "model": "m",
            "created_at": "x",
            "message": {"role": "assistant", "content": content},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 34,
            "eval_count": 12,
        }
    ).encode()


def ollama_stream(content: str) -> bytes:
    halves = [content[: len(content) // 2], content[len(content) // 2 :]]
    lines = [
        {"model": "m", "created_at": "x", "message": {"role": "assistant", "content": half}, "done": False}
        for half in halves
    ]
    lines.append(
        {
            "model": "m",
            "created_at": "x",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 34,
            "eval_count": 12,
        }
    )
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def vllm_stream(content: str) -> bytes:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 34, "completion_tokens": 12, "total_tokens": 46}},
    ]
    return (
        b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    )


def stream_through(translator, data: bytes) -> bytes:
    return b"".join(translator.feed(data) + translator.finish())


@pytest.mark.parametrize("strict", [True, False])
def test_valid_output_passes_and_is_recorded_valid(strict):
    translator = translator_for("/v1/chat/completions", "ollama", openai_request(strict))
    status, body = translator.translate_body(200, ollama_answer(VALID))
    assert status == 200
    assert json.loads(json.loads(body)["choices"][0]["message"]["content"]) == {"age": 22, "available": False}
    assert translator.validation == {"valid": True, "errors": []}


def test_invalid_output_under_a_strict_schema_is_an_error_in_the_openai_dialect():
    translator = translator_for("/v1/chat/completions", "ollama", openai_request(strict=True))
    status, body = translator.translate_body(200, ollama_answer(INVALID))
    error = json.loads(body)["error"]
    assert status == 502
    assert error["code"] == "invalid_structured_output"
    assert "$.age" in error["message"]
    assert translator.validation["valid"] is False
    assert translator.usage.completion_tokens == 12


def test_invalid_output_under_a_lenient_schema_passes_and_is_recorded_invalid():
    translator = translator_for("/v1/chat/completions", "ollama", openai_request(strict=False))
    status, body = translator.translate_body(200, ollama_answer(INVALID))
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == INVALID
    assert translator.validation["valid"] is False
    assert any("'available' is a required property" in error for error in translator.validation["errors"])
    assert any("$.age" in error for error in translator.validation["errors"])


def test_ollama_clients_schema_is_validated_but_never_strict():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "JSON"}],
        "format": SCHEMA,
        "stream": False,
    }
    translator = translator_for("/api/chat", "ollama", body)
    status, _ = translator.translate_body(200, ollama_answer(INVALID))
    assert status == 200
    assert translator.validation["valid"] is False


def test_json_mode_output_must_be_a_json_object():
    body = {"model": "m", "prompt": "JSON", "format": "json", "stream": False}
    translator = translator_for("/api/generate", "ollama", body)
    translator.translate_body(200, json.dumps({"model": "m", "response": "not json", "done": True}).encode())
    assert translator.validation["valid"] is False
    assert translator.validation["errors"][0].startswith("output is not valid JSON")


@pytest.mark.parametrize("engine", ["ollama", "vllm"])
def test_strict_stream_with_invalid_output_ends_with_an_error_event_instead_of_the_finish(engine):
    translator = translator_for("/v1/chat/completions", engine, openai_request(strict=True, stream=True))
    out = stream_through(translator, ollama_stream(INVALID) if engine == "ollama" else vllm_stream(INVALID))
    events = [block.removeprefix("data: ") for block in out.decode().split("\n\n") if block]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert "does not match the requested JSON schema" in error["message"]
    finishes = [
        json.loads(event)["choices"][0]["finish_reason"]
        for event in events[:-2]
        if json.loads(event).get("choices")
    ]
    assert set(finishes) == {None}
    assert translator.validation["valid"] is False
    assert translator.usage.prompt_tokens == 34


@pytest.mark.parametrize("engine", ["ollama", "vllm"])
def test_strict_stream_with_valid_output_ends_normally(engine):
    translator = translator_for("/v1/chat/completions", engine, openai_request(strict=True, stream=True))
    out = stream_through(translator, ollama_stream(VALID) if engine == "ollama" else vllm_stream(VALID))
    assert b'"error"' not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert translator.validation == {"valid": True, "errors": []}


def test_lenient_stream_with_invalid_output_ends_normally_and_records_the_result():
    body = {"model": "m", "messages": [{"role": "user", "content": "JSON"}], "format": SCHEMA}
    translator = translator_for("/api/chat", "vllm", body)
    out = stream_through(translator, vllm_stream(INVALID))
    final = json.loads(out.splitlines()[-1])
    assert final["done"] is True
    assert translator.validation["valid"] is False


def test_tool_calls_are_not_validated_against_the_response_schema():
    answer = {
        "model": "m",
        "created_at": "x",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "f", "arguments": {}}}],
        },
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 1,
        "eval_count": 1,
    }
    translator = translator_for("/v1/chat/completions", "ollama", openai_request(strict=True))
    status, _ = translator.translate_body(200, json.dumps(answer).encode())
    assert status == 200
    assert translator.validation is None
