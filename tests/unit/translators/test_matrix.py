"""Every cell of the matrix: client endpoint × engine × stream mode.

Each cell answers in the client's dialect with the engine's text and exact token counts, and a
streamed answer is the same whatever the chunk boundaries of the engine's stream.
"""

import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.canonical import Usage
from translators.pipeline import build_backend_request, parse_client_request, response_translator

CREATED = 1700000000
REQUEST_ID = "req-1"


def sse(*chunks: dict) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    )


def ndjson(*chunks: dict) -> bytes:
    return b"".join(json.dumps(chunk).encode() + b"\n" for chunk in chunks)


def chat_chunk(delta: dict, finish_reason=None) -> dict:
    # Shape of the streaming example in the OpenAI API reference (Chat Completions, "chat.completion.chunk").
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "llama3.2",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def completion_chunk(text: str, finish_reason=None) -> dict:
    # Shape of vLLM's CompletionStreamResponse (vllm/entrypoints/openai/protocol.py).
    return {
        "id": "cmpl-123",
        "object": "text_completion",
        "created": 1694268190,
        "model": "llama3.2",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(head: dict, prompt: int, completion: int) -> dict:
    # The extra chunk vLLM sends for stream_options.include_usage: empty choices, usage filled.
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {**{key: head[key] for key in ("id", "object", "created", "model")}, "choices": [], "usage": usage}


@dataclass
class EngineAnswer:
    stream: bytes
    stream_text: str
    stream_usage: Usage
    body: dict
    body_text: str
    body_usage: Usage


ENGINE_ANSWERS = {
    "/v1/chat/completions": EngineAnswer(
        stream=sse(
            chat_chunk({"role": "assistant", "content": ""}),
            chat_chunk({"content": "Hello"}),
            chat_chunk({"content": " wörld ☀"}),
            chat_chunk({}, "stop"),
            usage_chunk(chat_chunk({}), 9, 12),
        ),
        stream_text="Hello wörld ☀",
        stream_usage=Usage(9, 12),
        # The chat completion object of the OpenAI API reference.
        body={
            "id": "chatcmpl-123",
            "object": "chat.completion",
            "created": 1677652288,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_44709d6fcb",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "\n\nHello there, how may I assist you today?",
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
        },
        body_text="\n\nHello there, how may I assist you today?",
        body_usage=Usage(9, 12),
    ),
    "/v1/completions": EngineAnswer(
        stream=sse(
            completion_chunk("This is"),
            completion_chunk(" indeed a test"),
            completion_chunk("", "length"),
            usage_chunk(completion_chunk(""), 5, 7),
        ),
        stream_text="This is indeed a test",
        stream_usage=Usage(5, 7),
        # The completion object of the OpenAI API reference (Completions, legacy).
        body={
            "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
            "object": "text_completion",
            "created": 1589478378,
            "model": "gpt-3.5-turbo-instruct",
            "system_fingerprint": "fp_44709d6fcb",
            "choices": [
                {"text": "\n\nThis is indeed a test", "index": 0, "logprobs": None, "finish_reason": "length"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        },
        body_text="\n\nThis is indeed a test",
        body_usage=Usage(5, 7),
    ),
    # Chunks and final objects of "Chat Request (Streaming)" / "Chat request (No streaming)" in ollama/ollama docs/api.md.
    "/api/chat": EngineAnswer(
        stream=ndjson(
            {
                "model": "llama3.2",
                "created_at": "2023-08-04T08:52:19.385406455-07:00",
                "message": {"role": "assistant", "content": "The", "images": None},
                "done": False,
            },
            {
                "model": "llama3.2",
                "created_at": "2023-08-04T08:52:19.385406455-07:00",
                "message": {"role": "assistant", "content": " sky is blue ☀"},
                "done": False,
            },
            {
                "model": "llama3.2",
                "created_at": "2023-08-04T19:22:45.499127Z",
                "done": True,
                "total_duration": 4883583458,
                "load_duration": 1334875,
                "prompt_eval_count": 26,
                "prompt_eval_duration": 342546000,
                "eval_count": 282,
                "eval_duration": 4535599000,
            },
        ),
        stream_text="The sky is blue ☀",
        stream_usage=Usage(26, 282),
        body={
            "model": "llama3.2",
            "created_at": "2023-12-12T14:13:43.416799Z",
            "message": {"role": "assistant", "content": "Hello! How are you today?"},
            "done": True,
            "total_duration": 5191566416,
            "load_duration": 2154458,
            "prompt_eval_count": 26,
            "prompt_eval_duration": 383809000,
            "eval_count": 298,
            "eval_duration": 4799921000,
        },
        body_text="Hello! How are you today?",
        body_usage=Usage(26, 298),
    ),
    # Chunks and final objects of "Generate request (Streaming)" / "Request (No streaming)" in ollama/ollama docs/api.md.
    "/api/generate": EngineAnswer(
        stream=ndjson(
            {
                "model": "llama3.2",
                "created_at": "2023-08-04T08:52:19.385406455-07:00",
                "response": "The",
                "done": False,
            },
            {
                "model": "llama3.2",
                "created_at": "2023-08-04T08:52:19.385406455-07:00",
                "response": " sky ☀",
                "done": False,
            },
            {
                "model": "llama3.2",
                "created_at": "2023-08-04T19:22:45.499127Z",
                "response": "",
                "done": True,
                "context": [1, 2, 3],
                "total_duration": 10706818083,
                "load_duration": 6338219291,
                "prompt_eval_count": 26,
                "prompt_eval_duration": 130079000,
                "eval_count": 259,
                "eval_duration": 4232710000,
            },
        ),
        stream_text="The sky ☀",
        stream_usage=Usage(26, 259),
        body={
            "model": "llama3.2",
            "created_at": "2023-08-04T19:22:45.499127Z",
            "response": "The sky is blue because it is the color of the sky.",
            "done": True,
            "context": [1, 2, 3],
            "total_duration": 5043500667,
            "load_duration": 5025959,
            "prompt_eval_count": 26,
            "prompt_eval_duration": 325953000,
            "eval_count": 290,
            "eval_duration": 4709213000,
        },
        body_text="The sky is blue because it is the color of the sky.",
        body_usage=Usage(26, 290),
    ),
}

CLIENT_REQUESTS = {
    "/v1/chat/completions": {"model": "llama3.2", "messages": [{"role": "user", "content": "Hello!"}]},
    "/v1/completions": {"model": "llama3.2", "prompt": "Say this is a test"},
    "/api/chat": {"model": "llama3.2", "messages": [{"role": "user", "content": "why is the sky blue?"}]},
    "/api/generate": {"model": "llama3.2", "prompt": "Why is the sky blue?"},
}
ENGINES = ("ollama", "vllm")
CELLS = [
    (endpoint, engine, stream)
    for endpoint in CLIENT_REQUESTS
    for engine in ENGINES
    for stream in (True, False)
]
STREAM_CELLS = [(endpoint, engine) for endpoint, engine, stream in CELLS if stream]


def start(endpoint: str, engine: str, stream: bool, include_usage: bool = False):
    body = {**CLIENT_REQUESTS[endpoint], "stream": stream}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    req = parse_client_request(endpoint, json.dumps(body).encode())
    path, _ = build_backend_request(req, engine, REQUEST_ID)
    return req, response_translator(req, engine, REQUEST_ID, CREATED), ENGINE_ANSWERS[path]


def feed_in_pieces(translator, data: bytes, cuts=()) -> list[bytes]:
    out: list[bytes] = []
    start_at = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += translator.feed(data[start_at:cut])
        start_at = cut
    return out + translator.finish()


def run(endpoint: str, engine: str, stream: bool, include_usage: bool = False):
    _, translator, answer = start(endpoint, engine, stream, include_usage)
    if stream:
        return translator, b"".join(feed_in_pieces(translator, answer.stream)), answer
    status, body = translator.translate_body(200, json.dumps(answer.body).encode())
    assert status == 200
    return translator, body, answer


def sse_events(data: bytes) -> list:
    events = []
    for block in data.decode().split("\n\n"):
        if block:
            assert block.startswith("data: ")
            payload = block[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def ndjson_lines(data: bytes) -> list[dict]:
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.decode().splitlines()]


def client_text_and_usage(endpoint: str, stream: bool, body: bytes) -> tuple[str, Usage | None]:
    """Reads the client's answer the way that dialect's client would, checking its shape on the way."""
    if endpoint.startswith("/v1") and stream:
        events = sse_events(body)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        expected_object = "chat.completion.chunk" if endpoint == "/v1/chat/completions" else "text_completion"
        assert {chunk["object"] for chunk in chunks} == {expected_object}
        choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
        if endpoint == "/v1/chat/completions":
            text = "".join(choice["delta"].get("content") or "" for choice in choices)
        else:
            text = "".join(choice["text"] for choice in choices)
        assert choices[-1]["finish_reason"] in ("stop", "length")
        usages = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
        return text, Usage(usages[0]["prompt_tokens"], usages[0]["completion_tokens"]) if usages else None
    if endpoint.startswith("/v1"):
        value = json.loads(body)
        choice = value["choices"][0]
        if endpoint == "/v1/chat/completions":
            assert value["object"] == "chat.completion"
            text = choice["message"]["content"]
        else:
            assert value["object"] == "text_completion"
            text = choice["text"]
        assert choice["finish_reason"] in ("stop", "length")
        usage = value["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        return text, Usage(usage["prompt_tokens"], usage["completion_tokens"])
    lines = ndjson_lines(body) if stream else [json.loads(body)]
    field = "message" if endpoint == "/api/chat" else "response"
    assert all(field in line for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and all(line["done"] is False for line in lines[:-1])
    if endpoint == "/api/chat":
        text = "".join(line.get("message", {}).get("content", "") for line in lines)
    else:
        text = "".join(line["response"] for line in lines)
    return text, Usage(final["prompt_eval_count"], final["eval_count"])


@pytest.mark.parametrize(("endpoint", "engine", "stream"), CELLS)
def test_every_cell_answers_in_the_clients_dialect_with_the_engines_text_and_counts(endpoint, engine, stream):
    translator, body, answer = run(endpoint, engine, stream)
    text, client_usage = client_text_and_usage(endpoint, stream, body)
    expected_text = answer.stream_text if stream else answer.body_text
    expected_usage = answer.stream_usage if stream else answer.body_usage
    assert text == expected_text
    assert translator.output_text == expected_text
    assert translator.usage == expected_usage
    if not (endpoint.startswith("/v1") and stream):
        assert client_usage == expected_usage


@pytest.mark.parametrize(("endpoint", "engine", "stream"), CELLS)
def test_every_cell_declares_the_media_type_of_its_dialect(endpoint, engine, stream):
    _, translator, _ = start(endpoint, engine, stream)
    if not stream:
        assert translator.media_type == "application/json"
    elif endpoint.startswith("/v1"):
        assert translator.media_type == "text/event-stream"
    else:
        assert translator.media_type == "application/x-ndjson"


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_streams_carry_a_usage_chunk_only_when_the_client_asked(endpoint, engine, include_usage):
    translator, body, answer = run(endpoint, engine, True, include_usage)
    _, client_usage = client_text_and_usage(endpoint, True, body)
    assert client_usage == (answer.stream_usage if include_usage else None)
    assert translator.usage == answer.stream_usage
    last_chunk = sse_events(body)[-2]
    assert (last_chunk["choices"] == []) == include_usage


def test_openai_to_vllm_stream_reaches_the_client_byte_for_byte_when_usage_was_asked():
    _, body, answer = run("/v1/chat/completions", "vllm", True, include_usage=True)
    assert body == answer.stream


def test_openai_to_vllm_stream_loses_only_the_usage_chunk_the_gateway_asked_for():
    _, body, answer = run("/v1/chat/completions", "vllm", True)
    usage_event = b"data: " + json.dumps(usage_chunk(chat_chunk({}), 9, 12)).encode() + b"\n\n"
    assert body == answer.stream.replace(usage_event, b"")


@pytest.mark.parametrize("endpoint", ["/api/chat", "/api/generate"])
def test_ollama_to_ollama_stream_reaches_the_client_byte_for_byte(endpoint):
    _, body, answer = run(endpoint, "ollama", True)
    assert body == answer.stream


@pytest.mark.parametrize(
    ("endpoint", "engine"),
    [
        ("/v1/chat/completions", "vllm"),
        ("/v1/completions", "vllm"),
        ("/api/chat", "ollama"),
        ("/api/generate", "ollama"),
    ],
)
def test_same_dialect_whole_bodies_reach_the_client_unchanged(endpoint, engine):
    _, translator, answer = start(endpoint, engine, False)
    raw = json.dumps(answer.body).encode()
    assert translator.translate_body(200, raw) == (200, raw)


def test_translated_openai_answers_use_ids_and_created_from_the_gateway():
    _, body, _ = run("/v1/chat/completions", "ollama", False)
    value = json.loads(body)
    assert (value["id"], value["created"], value["model"]) == ("chatcmpl-req-1", CREATED, "llama3.2")


def test_translated_ollama_answers_carry_the_requested_model_and_a_timestamp():
    req, translator, answer = start("/api/chat", "vllm", False)
    req.model = "meta-llama/Llama-3.2-3B-Instruct"
    _, body = translator.translate_body(200, json.dumps(answer.body).encode())
    value = json.loads(body)
    assert (value["model"], value["created_at"]) == ("llama3.2", "2023-11-14T22:13:20.000000Z")
    assert value["done_reason"] == "stop"


@pytest.mark.parametrize(("endpoint", "engine"), STREAM_CELLS)
def test_streamed_output_is_the_same_for_every_single_cut_of_the_engine_stream(endpoint, engine):
    _, reference_translator, answer = start(endpoint, engine, True)
    reference = b"".join(feed_in_pieces(reference_translator, answer.stream))
    for cut in range(len(answer.stream) + 1):
        _, translator, _ = start(endpoint, engine, True)
        pieces = feed_in_pieces(translator, answer.stream, [cut])
        assert b"" not in pieces
        assert b"".join(pieces) == reference, cut


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(STREAM_CELLS), st.booleans(), st.lists(st.floats(min_value=0, max_value=1), max_size=25)
)
def test_streamed_output_is_the_same_for_any_chunking_of_the_engine_stream(cell, include_usage, fractions):
    endpoint, engine = cell
    include_usage = include_usage and endpoint.startswith("/v1")
    _, reference_translator, answer = start(endpoint, engine, True, include_usage)
    reference = b"".join(feed_in_pieces(reference_translator, answer.stream))
    _, translator, _ = start(endpoint, engine, True, include_usage)
    cuts = [int(fraction * len(answer.stream)) for fraction in fractions]
    pieces = feed_in_pieces(translator, answer.stream, cuts)
    assert b"" not in pieces
    assert b"".join(pieces) == reference
