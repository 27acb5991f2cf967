"""Anthropic's Messages dialect: body → canonical → each engine, and each engine's answer → a Message."""

from __future__ import annotations

import base64
import json

import pytest

from translators.errors import ANTHROPIC, GatewayError, error_body
from translators.pipeline import (
    build_backend_request,
    parse_client_request,
    response_translator,
    stream_error_event,
)

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WEATHER = {"name": "get_weather", "description": "Weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}}}


def parse(body: dict, path: str = "/v1/messages", version: str | None = None):
    return parse_client_request(path, json.dumps(body).encode(), anthropic_version=version)


def message_body(**fields) -> dict:
    return {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}


def engine_body(body: dict, engine: str) -> tuple[str, dict, list[str]]:
    req = parse(body)
    path, payload = build_backend_request(req, engine, "req-1")
    return path, json.loads(payload), req.notes


def refusal(body: dict, path: str = "/v1/messages", version: str | None = None) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse(body, path, version)
    return caught.value


# -- requests ----------------------------------------------------------------------------------------


def test_system_blocks_become_one_leading_system_message():
    req = parse(message_body(system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]))
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief.\nBe kind."), ("user", "hi")]


def test_a_tool_round_trip_becomes_calls_and_tool_messages_ahead_of_the_rest_of_the_turn():
    req = parse(message_body(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Boise?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Look it up.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Boise"}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Thanks."},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "12 C"}]}]},
    ]))
    assistant, tool, user = req.messages[1:]
    assert assistant.thinking == "Look it up." and assistant.content == ""
    assert [(c.id, c.name, json.loads(c.arguments)) for c in assistant.tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Boise"})]
    assert (tool.role, tool.content, tool.tool_call_id, tool.tool_name) == ("tool", "12 C", "toolu_1", "get_weather")
    assert (user.role, user.content) == ("user", "Thanks.")
    assert req.tools == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "Weather"}}]


def test_images_base64_inline_and_urls_left_for_the_gateway_to_fetch():
    req = parse(message_body(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(PNG).decode()}},
        {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.png"}},
        {"type": "text", "text": "Compare."}]}]))
    first, second = req.messages[0].images
    assert (first.data, first.media_type) == (PNG, "image/png")
    assert req.image_urls_to_fetch() == ["https://example.org/cat.png"] and second.data is None


def test_sampling_stop_sequences_and_thinking_reach_each_engine():
    body = message_body(max_tokens=2048, temperature=0.2, top_p=0.9, top_k=20, stop_sequences=["END"], stream=True,
                        thinking={"type": "enabled", "budget_tokens": 1024})
    path, vllm, _ = engine_body(body, "vllm")
    assert path == "/v1/chat/completions"
    assert {k: vllm[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "stop", "stream")} == {
        "max_tokens": 2048, "temperature": 0.2, "top_p": 0.9, "top_k": 20, "stop": ["END"], "stream": True}
    assert vllm["chat_template_kwargs"] == {"enable_thinking": True} and vllm["stream_options"] == {"include_usage": True}
    path, ollama, _ = engine_body(body, "ollama")
    assert path == "/api/chat" and ollama["think"] is True and ollama["stream"] is True
    assert ollama["options"] == {"num_predict": 2048, "temperature": 0.2, "top_p": 0.9, "top_k": 20, "stop": ["END"]}


@pytest.mark.parametrize(("choice", "openai_choice"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice_becomes_openais_for_vllm(choice, openai_choice):
    _, body, _ = engine_body(message_body(tools=[WEATHER], tool_choice=choice), "vllm")
    assert body["tool_choice"] == openai_choice


def test_disable_parallel_tool_use_holds_vllm_to_one_call():
    _, body, _ = engine_body(message_body(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": True}),
                             "vllm")
    assert body["parallel_tool_calls"] is False and body["tool_choice"] == "auto"
    _, body, _ = engine_body(message_body(tools=[WEATHER], tool_choice={"type": "auto"}), "vllm")
    assert "parallel_tool_calls" not in body


def test_what_ollama_cannot_take_is_noted_not_sent():
    _, body, notes = engine_body(message_body(tools=[WEATHER], tool_choice={"type": "any"},
                                              metadata={"user_id": "u1"}, unheard_of=True), "ollama")
    assert "tool_choice" not in body and body["tools"]
    assert "tool_choice: dropped for ollama (Ollama cannot force a tool call)" in notes
    assert any(note.startswith("metadata: dropped for ollama") for note in notes)
    assert "unheard_of: dropped for ollama (unknown field)" in notes


def test_count_tokens_is_a_one_token_chat_that_never_streams():
    req = parse({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                "/v1/messages/count_tokens")
    assert req.sampling == {"max_tokens": 1} and req.stream is False and req.max_tokens == 1


@pytest.mark.parametrize(("body", "mentions"), [
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "'max_tokens' is required"),
    (message_body(max_tokens=0), "'max_tokens' must be at least 1"),
    (message_body(messages=[]), "'messages' must contain at least one message"),
    (message_body(messages=[{"role": "system", "content": "x"}]), "'messages[0].role' must be user or assistant"),
    (message_body(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]), "'document'"),
    (message_body(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "f"}]}]),
     "in a user turn"),
    (message_body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "server tool"),
    (message_body(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), "names no tool"),
    (message_body(thinking={"type": "enabled"}), "thinking.budget_tokens"),
    (message_body(thinking={"type": "enabled", "budget_tokens": 1023}), "at least 1024"),
    (message_body(max_tokens=1024, thinking={"type": "enabled", "budget_tokens": 1024}), "less than max_tokens (1024)"),
    (message_body(mcp_servers=[{"url": "https://example.org"}]), "mcp_servers"),
    (message_body(messages=[{"role": "user", "content": [{"type": "image", "source": {
        "type": "url", "url": "file:///etc/passwd"}}]}]), "http(s) URL"),
])
def test_bodies_anthropic_refuses_are_400(body, mentions):
    error = refusal(body)
    assert error.status == 400 and mentions in error.message


@pytest.mark.parametrize("version", ["2023-06-01", "2026-10-21"])
def test_anthropic_versions_from_the_first_on_are_honoured(version):
    assert parse(message_body(), version=version).model == "m"


@pytest.mark.parametrize("version", ["2022-12-31", "latest", "2023-06-01; beta"])
def test_other_anthropic_versions_are_refused(version):
    error = refusal(message_body(), version=version)
    assert error.status == 400 and "anthropic-version" in error.message


# -- whole answers ------------------------------------------------------------------------------------


def translator(engine: str, body: dict, path: str = "/v1/messages"):
    req = parse(body, path)
    build_backend_request(req, engine, "req-1")
    return response_translator(req, engine, "req-1", 1700000000)


def test_a_vllm_answer_becomes_a_message_with_thinking_text_and_tool_use_blocks():
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "Checking.", "reasoning_content": "Need the weather.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Boise\"}"}}]},
        "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}
    status, body = translator("vllm", message_body(tools=[WEATHER])).translate_body(200, json.dumps(answer).encode())
    message = json.loads(body)
    assert status == 200 and message["id"] == "msg_req-1" and message["type"] == "message"
    thinking, text, tool_use = message["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "Need the weather." and thinking["signature"]
    assert text == {"type": "text", "text": "Checking."}
    assert tool_use == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Boise"}}
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 11, "output_tokens": 7}


@pytest.mark.parametrize(("done_reason", "stop_reason"), [("stop", "end_turn"), ("length", "max_tokens")])
def test_ollama_done_reasons_become_stop_reasons(done_reason, stop_reason):
    answer = {"model": "m", "message": {"role": "assistant", "content": "Hi."}, "done": True,
              "done_reason": done_reason, "prompt_eval_count": 5, "eval_count": 2}
    _, body = translator("ollama", message_body()).translate_body(200, json.dumps(answer).encode())
    message = json.loads(body)
    assert message["stop_reason"] == stop_reason and message["content"] == [{"type": "text", "text": "Hi."}]
    assert message["usage"] == {"input_tokens": 5, "output_tokens": 2}


def test_count_tokens_answers_the_prompt_count_alone():
    answer = {"model": "m", "message": {"role": "assistant", "content": "A"}, "done": True, "prompt_eval_count": 23,
              "eval_count": 1}
    status, body = translator("ollama", {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                              "/v1/messages/count_tokens").translate_body(200, json.dumps(answer).encode())
    assert status == 200 and json.loads(body) == {"input_tokens": 23}


def test_engine_errors_reach_the_caller_in_anthropics_shape():
    status, body = translator("vllm", message_body()).translate_body(
        404, json.dumps({"error": {"message": "no such model", "type": "NotFoundError", "code": 404}}).encode())
    assert status == 404
    assert json.loads(body) == {"type": "error", "error": {"type": "not_found_error", "message": "no such model"}}


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (405, "invalid_request_error"), (413, "request_too_large"), (422, "invalid_request_error"),
    (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (503, "overloaded_error"), (504, "api_error"),
])
def test_gateway_errors_take_anthropics_type_for_their_status(status, kind):
    body = json.loads(error_body(ANTHROPIC, GatewayError(status, "why", error_type="insufficient_quota")))
    assert body == {"type": "error", "error": {"type": kind, "message": "why"}}


# -- streams ------------------------------------------------------------------------------------------


def sse(*chunks: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def vllm_delta(delta: dict, finish_reason=None) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


VLLM_STREAM = sse(
    vllm_delta({"role": "assistant", "content": ""}),
    vllm_delta({"reasoning_content": "Think "}), vllm_delta({"reasoning_content": "twice."}),
    vllm_delta({"content": "Snow "}), vllm_delta({"content": "é falls."}),
    vllm_delta({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                "function": {"name": "get_weather", "arguments": ""}}]}),
    vllm_delta({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
    vllm_delta({"tool_calls": [{"index": 0, "function": {"arguments": "\"Boise\"}"}}]}),
    vllm_delta({}, "tool_calls"),
    {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
     "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}},
)
OLLAMA_STREAM = b"".join(json.dumps(line).encode() + b"\n" for line in [
    {"model": "m", "message": {"role": "assistant", "content": "", "thinking": "Think twice."}, "done": False},
    {"model": "m", "message": {"role": "assistant", "content": "Snow é falls."}, "done": False},
    {"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Boise"}}}]}, "done": False},
    {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
     "prompt_eval_count": 9, "eval_count": 8},
])


def events(data: bytes) -> list[dict]:
    parsed = []
    for block in data.decode().split("\n\n"):
        if block:
            name, payload = block.split("\n")
            parsed.append(json.loads(payload.removeprefix("data: ")))
            assert name == "event: " + parsed[-1]["type"]
    return parsed


def streamed(engine: str, data: bytes, cuts=()) -> bytes:
    stream = translator(engine, message_body(stream=True, tools=[WEATHER]))
    out, start = [], 0
    for cut in [*cuts, len(data)]:
        out += stream.feed(data[start:cut])
        start = cut
    return b"".join(out + stream.finish())


@pytest.mark.parametrize(("engine", "data"), [("vllm", VLLM_STREAM), ("ollama", OLLAMA_STREAM)])
def test_a_stream_becomes_anthropics_event_sequence(engine, data):
    sequence = events(streamed(engine, data))
    assert [e["type"] for e in sequence[:2]] == ["message_start", "ping"]
    assert sequence[0]["message"]["content"] == [] and sequence[0]["message"]["id"] == "msg_req-1"
    blocks: dict[int, dict] = {}
    for event in sequence[2:-2]:
        if event["type"] == "content_block_start":
            assert event["index"] == len(blocks)
            blocks[event["index"]] = {**event["content_block"], "json": "", "open": True}
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            assert block["open"]
            key = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature",
                   "input_json_delta": "json"}[delta["type"]]
            block[key] += delta["partial_json" if key == "json" else key]
        else:
            assert event["type"] == "content_block_stop"
            blocks[event["index"]]["open"] = False
    assert [(b["type"], b.get("text") or b.get("thinking") or json.loads(b["json"])) for b in blocks.values()] == [
        ("thinking", "Think twice."), ("text", "Snow é falls."), ("tool_use", {"city": "Boise"})]
    assert blocks[0]["signature"] and not any(b["open"] for b in blocks.values())
    assert sequence[-2] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                            "usage": {"input_tokens": 9, "output_tokens": 8}}
    assert sequence[-1] == {"type": "message_stop"}


@pytest.mark.parametrize(("engine", "data"), [("vllm", VLLM_STREAM), ("ollama", OLLAMA_STREAM)])
def test_a_stream_cut_at_any_byte_translates_the_same(engine, data):
    whole = streamed(engine, data)
    for cut in range(1, len(data)):
        assert streamed(engine, data, [cut]) == whole, cut


def test_a_stream_that_breaks_off_ends_with_an_error_event():
    stream = translator("vllm", message_body(stream=True))
    out = stream.feed(sse(vllm_delta({"content": "Half"}))[: -len(b"data: [DONE]\n\n")]) + stream.finish()
    last = events(b"".join(out))[-1]
    assert last["type"] == "error" and last["error"]["type"] == "api_error"
    assert "ended before the response was complete" in last["error"]["message"]


def test_a_mid_stream_error_event_is_anthropics():
    assert events(stream_error_event(ANTHROPIC, "backend went away")) == [
        {"type": "error", "error": {"type": "api_error", "message": "backend went away"}}]
