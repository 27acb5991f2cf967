"""Messages requests to an engine that serves the Messages API itself: the caller's body goes (less what the
gateway drops), the engine's events come back byte for byte, and the gateway reads text, calls and usage."""

from __future__ import annotations

import base64
import json

from translators.pipeline import (
    build_backend_request,
    parse_client_request,
    response_translator,
    serves_natively,
    translate_backend_error,
)

NATIVE = ("/v1/messages", "/v1/messages/count_tokens")
PNG = b"\x89PNG\r\n\x1a\n fetched image bytes"


def parse(body: dict, path: str = "/v1/messages"):
    return parse_client_request(path, json.dumps(body).encode())


def message_body(**fields) -> dict:
    return {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}


def event(payload: dict) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + json.dumps(payload).encode() + b"\n\n"


def engine_stream(*blocks: tuple[str, list[dict]], stop_reason: str = "end_turn", output_tokens: int = 3) -> list[bytes]:
    """A Message stream as vLLM writes it: no ping, the input count in message_start and message_delta."""
    events = [event({"type": "message_start", "message": {"id": "chatcmpl-1", "type": "message", "role": "assistant",
                                                          "content": [], "model": "m", "usage": {"input_tokens": 7, "output_tokens": 0}}})]
    for index, (opening, deltas) in enumerate(blocks):
        events.append(event({"type": "content_block_start", "index": index, "content_block": opening}))
        events += [event({"type": "content_block_delta", "index": index, "delta": delta}) for delta in deltas]
        events.append(event({"type": "content_block_stop", "index": index}))
    events.append(event({"type": "message_delta", "delta": {"stop_reason": stop_reason},
                         "usage": {"input_tokens": 7, "output_tokens": output_tokens}}))
    return events + [event({"type": "message_stop"})]


def test_only_the_messages_api_goes_native_and_only_where_the_engine_serves_it():
    count = parse({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "/v1/messages/count_tokens")
    assert serves_natively(parse(message_body()), "vllm", NATIVE) and serves_natively(count, "vllm", NATIVE)
    assert not serves_natively(parse(message_body()), "vllm", ())
    assert not serves_natively(count, "ollama", ("/v1/messages",))  # Ollama's count is an estimate: not listed
    chat = parse_client_request("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}')
    assert not serves_natively(chat, "vllm", NATIVE + ("/v1/chat/completions",))


def test_what_ollamas_messages_api_would_ignore_is_translated_there():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    structured = parse(message_body(output_config={"format": {"type": "json_schema", "schema": schema}}))
    adaptive = parse(message_body(thinking={"type": "adaptive"}))
    for req in (structured, adaptive):
        assert not serves_natively(req, "ollama", ("/v1/messages",))
        assert serves_natively(req, "vllm", NATIVE)  # vLLM's reads both
    assert serves_natively(parse(message_body(max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024})), "ollama",
                           ("/v1/messages",))


def test_the_engine_gets_the_callers_fields_less_what_the_gateway_drops_with_the_same_notes():
    req = parse(message_body(metadata={"user_id": "u1"}, service_tier="auto", temperature=0.2, top_k=5,
                             stop_sequences=["END"], vendor_knob=1))
    path, payload = build_backend_request(req, "vllm", "rid", native=True)
    body = json.loads(payload)
    assert path == "/v1/messages"
    assert body == {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}],
                    "temperature": 0.2, "top_k": 5, "stop_sequences": ["END"]}
    notes = " ".join(req.notes)
    assert "metadata" in notes and "service_tier" in notes and "vendor_knob: dropped for vllm (unknown field)" in notes


def test_the_model_is_the_backends_name_and_thinking_reaches_vllms_chat_template():
    req = parse(message_body(max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024}))
    req.model = "Qwen/Qwen3-8B"  # the gateway rewrites an alias to the backend's own name
    vllm = json.loads(build_backend_request(req, "vllm", "rid", native=True)[1])
    assert vllm["model"] == "Qwen/Qwen3-8B" and vllm["chat_template_kwargs"] == {"enable_thinking": True}
    assert vllm["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    ollama = json.loads(build_backend_request(req, "ollama", "rid", native=True)[1])
    assert "chat_template_kwargs" not in ollama and ollama["thinking"]["type"] == "enabled"  # Ollama reads it itself


def test_image_urls_go_as_the_bytes_the_gateway_fetched_tool_results_included():
    url_image = {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.png"}}
    req = parse(message_body(messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "look", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [url_image]},
                                     url_image, {"type": "text", "text": "and this?"}]}]))
    assert req.image_urls_to_fetch() == ["https://example.org/cat.png"]
    req.supply_image("https://example.org/cat.png", PNG, "image/png")
    body = json.loads(build_backend_request(req, "vllm", "rid", native=True)[1])
    inlined = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                           "data": base64.b64encode(PNG).decode()}}
    turn = body["messages"][2]["content"]
    assert turn[0]["content"] == [inlined] and turn[1] == inlined and turn[2] == {"type": "text", "text": "and this?"}
    assert body["messages"][:2] == json.loads(json.dumps(req.body["messages"][:2]))


def test_a_native_stream_reaches_the_caller_byte_for_byte_and_is_read_on_the_way():
    req = parse(message_body(stream=True, tools=[{"name": "look", "input_schema": {"type": "object"}}]))
    translator = response_translator(req, "vllm", "rid", 1, native=True)
    stream = engine_stream(
        ({"type": "thinking", "thinking": ""}, [{"type": "thinking_delta", "thinking": "hmm"},
                                                {"type": "signature_delta", "signature": "abc"}]),
        ({"type": "text", "text": ""}, [{"type": "text_delta", "text": "Let me "}, {"type": "text_delta", "text": "look."}]),
        ({"type": "tool_use", "id": "call_1", "name": "look", "input": {}},
         [{"type": "input_json_delta", "partial_json": '{"city": '}, {"type": "input_json_delta", "partial_json": '"Boise"}'}]),
        stop_reason="tool_use", output_tokens=9)
    whole = b"".join(stream)
    # split anywhere: the bytes that come out are the bytes that went in
    out = translator.feed(whole[:37]) + translator.feed(whole[37:501]) + translator.feed(whole[501:]) + translator.finish()
    assert b"".join(out) == whole
    assert translator.media_type == "text/event-stream"
    assert (translator.thinking_text, translator.output_text) == ("hmm", "Let me look.")
    (call,) = translator.tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == ("call_1", "look", {"city": "Boise"})
    assert translator.finish_reason == "tool_calls"
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (7, 9)


def test_the_input_count_comes_from_message_start_when_message_delta_leaves_it_out():
    translator = response_translator(parse(message_body(stream=True)), "ollama", "rid", 1, native=True)
    stream = engine_stream(({"type": "text", "text": ""}, [{"type": "text_delta", "text": "hi"}]), output_tokens=1)
    stream[-2] = event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}})
    translator.feed(b"".join(stream))
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (7, 1)


def test_a_native_stream_that_breaks_off_or_fails_ends_with_an_anthropic_error_event():
    translator = response_translator(parse(message_body(stream=True)), "vllm", "rid", 1, native=True)
    stream = engine_stream(({"type": "text", "text": ""}, [{"type": "text_delta", "text": "hi"}]))
    out = translator.feed(b"".join(stream[:3])) + translator.finish()
    assert out[-1].startswith(b"event: error\n") and b"ended before the response was complete" in out[-1]
    failing = response_translator(parse(message_body(stream=True)), "vllm", "rid", 1, native=True)
    out = failing.feed(stream[0] + event({"type": "error", "error": {"type": "internal_error", "message": "boom"}}))
    assert len(out) == 2 and b"boom" in out[1] and out[1].startswith(b"event: error\n") and failing.failed


def test_a_whole_message_is_the_engines_body_with_its_content_read():
    translator = response_translator(parse(message_body()), "vllm", "rid", 1, native=True)
    message = {"id": "chatcmpl-9", "type": "message", "role": "assistant", "model": "m", "stop_reason": "max_tokens",
               "content": [{"type": "thinking", "thinking": "so", "signature": "x"}, {"type": "text", "text": "Yes"},
                           {"type": "tool_use", "id": "c1", "name": "look", "input": {"q": 1}}],
               "usage": {"input_tokens": 11, "output_tokens": 4}}
    body = json.dumps(message).encode()
    assert translator.translate_body(200, body) == (200, body)
    assert (translator.output_text, translator.thinking_text, translator.finish_reason) == ("Yes", "so", "length")
    assert translator.tool_calls[0].name == "look" and (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (11, 4)


def test_count_tokens_is_the_engines_count():
    req = parse({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "/v1/messages/count_tokens")
    path, payload = build_backend_request(req, "vllm", "rid", native=True)
    assert path == "/v1/messages/count_tokens" and "max_tokens" not in json.loads(payload)
    translator = response_translator(req, "vllm", "rid", 1, native=True)
    body = b'{"input_tokens": 12, "context_management": {"original_input_tokens": 12}}'
    assert translator.translate_body(200, body) == (200, body)
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (12, 0)


def test_structured_output_is_validated_on_the_engines_text():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    req = parse(message_body(output_config={"format": {"type": "json_schema", "schema": schema}}))
    translator = response_translator(req, "vllm", "rid", 1, native=True)
    message = {"type": "message", "content": [{"type": "text", "text": '{"n": "one"}'}], "stop_reason": "end_turn",
               "usage": {"input_tokens": 3, "output_tokens": 5}}
    translator.translate_body(200, json.dumps(message).encode())
    assert translator.validation["valid"] is False and translator.validation["errors"]


def test_the_engines_own_anthropic_error_keeps_its_message_in_anthropics_error_types():
    """vLLM names its error types after its exceptions; Anthropic's SDKs and callers know Anthropic's."""
    error = b'{"type": "error", "error": {"type": "BadRequestError", "message": "The model `m` does not support image input"}}'
    status, body = translate_backend_error("vllm", 400, error, "anthropic")
    assert status == 400 and json.loads(body) == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "The model `m` does not support image input"}}
    status, body = translate_backend_error("vllm", 500, error, "anthropic")
    assert status == 502 and json.loads(body)["error"]["type"] == "api_error"
