"""OpenAI Responses requests into the canonical chat, and engine answers back into Responses (pure)."""

from __future__ import annotations

import json

import pytest

from translators.errors import GatewayError
from translators.pipeline import build_backend_request, parse_client_request, response_translator
from translators.responses_request import with_history


def parse(**body):
    return parse_client_request("/v1/responses", json.dumps({"model": "m", **body}).encode())


def test_instructions_come_first_then_the_stored_conversation_then_the_input():
    req = parse(input="third", instructions="be brief")
    with_history(req, [{"role": "user", "content": "first"},
                       {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "second"}]}])
    assert [(m.role, m.content) for m in req.messages] == [
        ("system", "be brief"), ("user", "first"), ("assistant", "second"), ("user", "third")]


def test_function_calls_join_the_assistant_turn_and_outputs_become_tool_messages():
    req = parse(input=[
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Moscow"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ])
    assistant, tool = req.messages[1], req.messages[2]
    assert [(c.id, c.name) for c in assistant.tool_calls] == [("call_1", "get_weather")]
    assert (tool.role, tool.content, tool.tool_call_id, tool.tool_name) == ("tool", "sunny", "call_1", "get_weather")


def test_flat_function_tools_and_named_tool_choice_become_chats():
    req = parse(input="x", tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
                tool_choice={"type": "function", "name": "f"}, max_output_tokens=5, reasoning={"effort": "low"})
    path, body = build_backend_request(req, "vllm", "rid")
    sent = json.loads(body)
    assert path == "/v1/chat/completions"
    assert sent["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert sent["max_tokens"] == 5 and sent["chat_template_kwargs"] == {"enable_thinking": True}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    _, ollama_body = build_backend_request(req, "ollama", "rid")
    assert "tool_choice" not in json.loads(ollama_body) and any("tool_choice" in note for note in req.notes)


@pytest.mark.parametrize("body, words", [
    ({"input": "x", "tools": [{"type": "web_search"}]}, "function tools only"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "item_reference"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema"),
    ({}, "input"),
])
def test_what_no_engine_serves_is_refused_with_a_reason(body, words):
    with pytest.raises(GatewayError) as refused:
        parse(**body)
    assert refused.value.status in (400, 422) and words in refused.value.message


OLLAMA_STREAM = b"".join(json.dumps(chunk).encode() + b"\n" for chunk in [  # Ollama's /api/chat stream
    {"model": "m", "message": {"role": "assistant", "content": "", "thinking": "hmm"}, "done": False},
    {"model": "m", "message": {"role": "assistant", "content": "Hello"}, "done": False},
    {"model": "m", "message": {"role": "assistant", "content": " there"}, "done": False},
    {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
     "prompt_eval_count": 7, "eval_count": 3},
])


def events_of(chunks: list[bytes]) -> list[dict]:
    text = b"".join(chunks).decode()
    return [json.loads(block.split("data: ", 1)[1]) for block in text.split("\n\n") if block.strip()]


def test_an_ollama_stream_becomes_reasoning_and_message_items_whatever_the_chunking():
    whole = response_translator(parse(input="hi", stream=True), "ollama", "rid", 1)
    events = events_of(whole.feed(OLLAMA_STREAM) + whole.finish())
    bytewise = response_translator(parse(input="hi", stream=True), "ollama", "rid", 1)
    chunks = [piece for i in range(len(OLLAMA_STREAM)) for piece in bytewise.feed(OLLAMA_STREAM[i:i + 1])]
    assert events_of(chunks + bytewise.finish()) == events
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][1]["content"][0]["text"] == "Hello there"
    assert final["usage"]["input_tokens"] == 7 and final["usage"]["output_tokens"] == 3


def test_a_whole_answer_cut_at_max_output_tokens_is_incomplete():
    translator = response_translator(parse(input="hi", max_output_tokens=2), "vllm", "rid", 1)
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "a b"}, "finish_reason": "length"}],
              "usage": {"prompt_tokens": 4, "completion_tokens": 2}}
    status, body = translator.translate_body(200, json.dumps(answer).encode())
    response = json.loads(body)
    assert status == 200 and response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
