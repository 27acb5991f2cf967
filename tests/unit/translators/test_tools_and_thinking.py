"""Tool calls and thinking, both directions, streamed and whole."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.pipeline import build_backend_request, parse_client_request, response_translator

CREATED = 1700000000
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


def sse(*chunks: dict) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    )


def ndjson(*chunks: dict) -> bytes:
    return b"".join(json.dumps(chunk).encode() + b"\n" for chunk in chunks)


def chat_chunk(delta: dict, finish_reason=None, usage=None) -> dict:
    chunk = {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage:
        chunk["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return chunk


def translator_for(path: str, engine: str, body: dict, request_id: str = "req-1"):
    req = parse_client_request(path, json.dumps(body).encode())
    build_backend_request(req, engine, request_id)
    return response_translator(req, engine, request_id, CREATED)


def run_stream(translator, data: bytes, cuts=()) -> list[bytes]:
    out: list[bytes] = []
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += translator.feed(data[start:cut])
        start = cut
    return out + translator.finish()


def sse_events(data: bytes) -> list:
    events = []
    for block in data.decode().split("\n\n"):
        if block:
            payload = block.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# Streamed function-call arguments arrive in fragments, as in the streaming section of OpenAI's
# function-calling guide (first delta: index, id, type, name and empty arguments; then argument pieces).
VLLM_TOOL_STREAM = sse(
    chat_chunk(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": ""},
                }
            ],
        }
    ),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"'}}]}),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "location"}}]}),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '":"Paris, FR'}}]}),
    chat_chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_second",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                }
            ]
        }
    ),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"}'}}]}),
    chat_chunk({}, "tool_calls"),
    chat_chunk(None, usage=(40, 18)),
)
OLLAMA_CHAT = {"model": "m", "messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER_TOOL]}
OPENAI_CHAT = {"model": "m", "messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER_TOOL]}


def test_vllm_argument_fragments_reach_an_ollama_client_as_whole_tool_calls():
    translator = translator_for("/api/chat", "vllm", OLLAMA_CHAT)
    lines = [json.loads(line) for line in b"".join(run_stream(translator, VLLM_TOOL_STREAM)).splitlines()]
    assert len(lines) == 2
    assert lines[0]["message"]["tool_calls"] == [
        {"function": {"name": "get_current_weather", "arguments": {"location": "Paris, FR"}}},
        {"function": {"name": "get_time", "arguments": {}}},
    ]
    assert lines[1]["done"] is True
    assert (lines[1]["done_reason"], lines[1]["prompt_eval_count"], lines[1]["eval_count"]) == (
        "stop",
        40,
        18,
    )
    assert translator.finish_reason == "tool_calls"
    assert [(call.id, call.name) for call in translator.tool_calls] == [
        ("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_current_weather"),
        ("call_second", "get_time"),
    ]


def test_assembling_tool_calls_does_not_depend_on_chunk_boundaries():
    reference = b"".join(run_stream(translator_for("/api/chat", "vllm", OLLAMA_CHAT), VLLM_TOOL_STREAM))
    for cut in range(len(VLLM_TOOL_STREAM) + 1):
        pieces = run_stream(translator_for("/api/chat", "vllm", OLLAMA_CHAT), VLLM_TOOL_STREAM, [cut])
        assert b"".join(pieces) == reference, cut


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(VLLM_TOOL_STREAM)), max_size=40))
def test_tool_call_stream_is_the_same_for_any_chunking(cuts):
    reference = b"".join(run_stream(translator_for("/api/chat", "vllm", OLLAMA_CHAT), VLLM_TOOL_STREAM))
    pieces = run_stream(translator_for("/api/chat", "vllm", OLLAMA_CHAT), VLLM_TOOL_STREAM, cuts)
    assert b"" not in pieces
    assert b"".join(pieces) == reference


def test_openai_client_gets_vllm_tool_call_fragments_unchanged():
    translator = translator_for("/v1/chat/completions", "vllm", {**OPENAI_CHAT, "stream": True})
    out = b"".join(run_stream(translator, VLLM_TOOL_STREAM))
    assert out == VLLM_TOOL_STREAM.replace(
        b"data: " + json.dumps(chat_chunk(None, usage=(40, 18))).encode() + b"\n\n", b""
    )
    assert translator.tool_calls[0].arguments == '{"location":"Paris, FR"}'


# The tool-call answer of the "Chat request (with tools)" example in ollama/ollama docs/api.md.
OLLAMA_TOOL_ANSWER = {
    "model": "llama3.2",
    "created_at": "2024-07-22T20:33:28.123648Z",
    "message": {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "function": {
                    "name": "get_current_weather",
                    "arguments": {"format": "celsius", "location": "Paris, FR"},
                }
            }
        ],
    },
    "done_reason": "stop",
    "done": True,
    "total_duration": 885095291,
    "load_duration": 3753500,
    "prompt_eval_count": 122,
    "prompt_eval_duration": 328493000,
    "eval_count": 33,
    "eval_duration": 552222000,
}


def test_ollama_tool_call_reaches_an_openai_client_with_a_stable_id_and_json_text_arguments():
    translator = translator_for("/v1/chat/completions", "ollama", OPENAI_CHAT)
    _, body = translator.translate_body(200, json.dumps(OLLAMA_TOOL_ANSWER).encode())
    choice = json.loads(body)["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert call["type"] == "function" and call["function"]["name"] == "get_current_weather"
    assert json.loads(call["function"]["arguments"]) == {"format": "celsius", "location": "Paris, FR"}
    again = translator_for("/v1/chat/completions", "ollama", OPENAI_CHAT)
    _, same = again.translate_body(200, json.dumps(OLLAMA_TOOL_ANSWER).encode())
    other = translator_for("/v1/chat/completions", "ollama", OPENAI_CHAT, request_id="req-2")
    _, different = other.translate_body(200, json.dumps(OLLAMA_TOOL_ANSWER).encode())
    assert json.loads(same)["choices"][0]["message"]["tool_calls"][0]["id"] == call["id"]
    assert json.loads(different)["choices"][0]["message"]["tool_calls"][0]["id"] != call["id"]


def test_streamed_ollama_tool_call_reaches_an_openai_client_as_an_indexed_delta():
    stream = ndjson(
        {**OLLAMA_TOOL_ANSWER, "done": False, "done_reason": None},
        {
            "model": "llama3.2",
            "created_at": "x",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 122,
            "eval_count": 33,
        },
    )
    translator = translator_for("/v1/chat/completions", "ollama", {**OPENAI_CHAT, "stream": True})
    chunks = sse_events(b"".join(run_stream(translator, stream)))[:-1]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    [call] = [delta["tool_calls"][0] for delta in deltas if "tool_calls" in delta]
    assert call["index"] == 0
    assert call["id"] == translator.tool_calls[0].id
    assert json.loads(call["function"]["arguments"]) == {"format": "celsius", "location": "Paris, FR"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_vllm_tool_call_reaches_an_ollama_client_whole_with_object_arguments():
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_current_weather", "arguments": '{"location": "Paris"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 40, "completion_tokens": 18, "total_tokens": 58},
    }
    translator = translator_for("/api/chat", "vllm", {**OLLAMA_CHAT, "stream": False})
    _, body = translator.translate_body(200, json.dumps(answer).encode())
    value = json.loads(body)
    assert value["message"]["tool_calls"] == [
        {"function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}}
    ]
    assert (value["done_reason"], value["prompt_eval_count"], value["eval_count"]) == ("stop", 40, 18)


# -- thinking ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize(
    ("path", "thinking_of"),
    [
        ("/api/chat", lambda line: line["message"].get("thinking")),
        ("/api/generate", lambda line: line.get("thinking")),
    ],
)
def test_vllm_reasoning_becomes_ollama_thinking(field, path, thinking_of):
    stream = sse(
        chat_chunk({"role": "assistant", field: "Rayleigh"}),
        chat_chunk({field: " scattering."}),
        chat_chunk({"content": "Blue."}),
        chat_chunk({}, "stop"),
        chat_chunk(None, usage=(5, 9)),
    )
    body = {
        "model": "m",
        "think": True,
        **(
            {"messages": [{"role": "user", "content": "sky?"}]} if path == "/api/chat" else {"prompt": "sky?"}
        ),
    }
    translator = translator_for(path, "vllm", body)
    lines = [json.loads(line) for line in b"".join(run_stream(translator, stream)).splitlines()]
    assert "".join(thinking_of(line) or "" for line in lines) == "Rayleigh scattering."
    assert translator.thinking_text == "Rayleigh scattering."
    assert translator.output_text == "Blue."


def test_ollama_thinking_reaches_an_openai_client_as_reasoning_content():
    stream = ndjson(
        {
            "model": "m",
            "created_at": "x",
            "message": {"role": "assistant", "content": "", "thinking": "Hmm."},
            "done": False,
        },
        {
            "model": "m",
            "created_at": "x",
            "message": {"role": "assistant", "content": "Blue."},
            "done": False,
        },
        {
            "model": "m",
            "created_at": "x",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 5,
            "eval_count": 9,
        },
    )
    translator = translator_for(
        "/v1/chat/completions",
        "ollama",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "sky?"}],
            "stream": True,
            "reasoning_effort": "low",
        },
    )
    deltas = [
        chunk["choices"][0]["delta"] for chunk in sse_events(b"".join(run_stream(translator, stream)))[:-1]
    ]
    assert "".join(delta.get("reasoning_content", "") for delta in deltas) == "Hmm."
    assert "".join(delta.get("content") or "" for delta in deltas) == "Blue."


def test_whole_ollama_thinking_reaches_an_openai_client_as_reasoning_content():
    answer = {
        "model": "m",
        "created_at": "x",
        "message": {"role": "assistant", "content": "Blue.", "thinking": "Hmm."},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 5,
        "eval_count": 9,
    }
    translator = translator_for(
        "/v1/chat/completions", "ollama", {"model": "m", "messages": [{"role": "user", "content": "sky?"}]}
    )
    _, body = translator.translate_body(200, json.dumps(answer).encode())
    message = json.loads(body)["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("Blue.", "Hmm.")
