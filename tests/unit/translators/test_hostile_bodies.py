"""Whatever a caller sends: a 4xx in its dialect, or a request both engines can be sent and answered with."""

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from translators.errors import GatewayError
from translators.mapping import CLIENT_ENDPOINTS
from translators.pipeline import (
    backend_path,
    build_backend_request,
    parse_client_request,
    response_translator,
)
from translators.request_body import MAX_NESTING_DEPTH

CHAT_MESSAGES = [{"role": "user", "content": "hi"}]
BASE_BODIES = {
    "/v1/chat/completions": {"model": "m", "messages": CHAT_MESSAGES},
    "/v1/completions": {"model": "m", "prompt": "hi"},
    "/v1/embeddings": {"model": "m", "input": "hi"},
    "/api/chat": {"model": "m", "messages": CHAT_MESSAGES},
    "/api/generate": {"model": "m", "prompt": "hi"},
    "/api/embed": {"model": "m", "input": "hi"},
    "/api/embeddings": {"model": "m", "prompt": "hi"},
    "/v1/responses": {"model": "m", "input": [{"role": "user", "content": "hi"}], "instructions": "be brief"},
    "/v1/rerank": {"model": "m", "query": "q", "documents": ["a", "b"]},
    "/rerank": {"model": "m", "query": "q", "documents": [{"text": "a"}]},
    "/v1/score": {"model": "m", "text_1": "q", "text_2": ["a", "b"]},
    "/score": {"model": "m", "text_1": ["q"], "text_2": ["a"]},
    "/v1/tokenize": {"model": "m", "prompt": "hi"},
    "/tokenize": {"model": "m", "messages": CHAT_MESSAGES},
    "/v1/messages": {"model": "m", "max_tokens": 16, "messages": CHAT_MESSAGES},
    "/v1/messages/count_tokens": {"model": "m", "messages": CHAT_MESSAGES},
}


def gateway_error(path: str, body: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse_client_request(path, body)
    return caught.value


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "ok \\udfff ok"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "\\ud83d": 1}',
        b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
    ],
    ids=["high", "low", "in-a-key", "in-the-model"],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_lone_surrogate_escape_is_400_naming_where(path, body):
    error = gateway_error(path, body)
    assert error.status == 400
    assert "surrogate" in error.message


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
        '{"model": "m", "messages": [{"role": "user", "content": "\ud800"}]}'.encode(
            "utf-16-le", "surrogatepass"
        ),
        '{"model": "m", "messages": [{"role": "user", "content": "\udfff"}]}'.encode(
            "utf-32", "surrogatepass"
        ),
    ],
    ids=["utf-8-encoded-surrogate", "utf-16", "utf-32"],
)
def test_a_lone_surrogate_in_raw_bytes_of_any_json_encoding_is_400(body):
    """json.loads decodes bytes with 'surrogatepass', so no escape is needed to smuggle one in."""
    error = gateway_error("/api/chat", body)
    assert error.status == 400
    assert "surrogate" in error.message


def test_a_body_in_utf_16_with_valid_text_is_still_accepted():
    body = '{"model": "m", "messages": [{"role": "user", "content": "h\u00e9 \U0001f999"}]}'.encode("utf-16")
    assert parse_client_request("/api/chat", body).messages[0].content == "hé \U0001f999"


def test_a_surrogate_pair_written_as_escapes_is_an_ordinary_character():
    req = parse_client_request(
        "/api/chat", b'{"model": "m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    )
    assert req.messages[0].content == "\U0001f600"


@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH + 1, 100_000])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_body_nested_deeper_than_the_bound_is_400(path, depth):
    nested = b"[" * depth + b"]" * depth
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": ' + nested + b"}"
    error = gateway_error(path, body)
    assert error.status == 400
    assert "nest" in error.message


def test_nesting_inside_strings_does_not_count():
    text = json.dumps("[" * 10_000)
    req = parse_client_request(
        "/api/chat", f'{{"model": "m", "messages": [{{"role": "user", "content": {text}}}]}}'.encode()
    )
    assert req.messages[0].content == "[" * 10_000


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_numbers_json_cannot_carry_are_400(number):
    error = gateway_error(
        "/v1/chat/completions",
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": ' + number + b"}",
    )
    assert error.status == 400


# -- any body ------------------------------------------------------------------------------------

# Engine answers in the smallest shape each engine path produces.
ENGINE_BODIES = {
    # vLLM's Re-rank, Score and Tokenizer APIs (vLLM docs, "OpenAI-Compatible Server")
    "/rerank": {"id": "rerank-1", "model": "m", "usage": {"total_tokens": 3},
                "results": [{"index": 0, "document": {"text": "a"}, "relevance_score": 0.5}]},
    "/score": {"id": "score-1", "object": "list", "model": "m", "data": [{"index": 0, "object": "score", "score": 0.5}],
               "usage": {"prompt_tokens": 3, "total_tokens": 3}},
    "/tokenize": {"count": 1, "max_model_len": 8192, "tokens": [9], "token_strs": None},
    "/v1/chat/completions": {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    },
    "/v1/completions": {
        "choices": [{"index": 0, "text": "{}", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    },
    "/v1/embeddings": {
        "data": [{"index": 0, "embedding": [0.5]}],
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    },
    "/api/chat": {
        "message": {"role": "assistant", "content": "{}"},
        "done": True,
        "prompt_eval_count": 1,
        "eval_count": 1,
    },
    "/api/generate": {"response": "{}", "done": True, "prompt_eval_count": 1, "eval_count": 1},
    "/api/embed": {"embeddings": [[0.5]], "prompt_eval_count": 1},
}
ENGINE_STREAMS = {
    "/v1/chat/completions": b'data: {"choices": [{"index": 0, "delta": {"content": "{}"}, "finish_reason": "stop"}]}\n\n'
    b"data: [DONE]\n\n",
    "/v1/completions": b'data: {"choices": [{"index": 0, "text": "{}", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n',
    "/api/chat": b'{"message": {"role": "assistant", "content": "{}"}, "done": true, "eval_count": 1}\n',
    "/api/generate": b'{"response": "{}", "done": true, "eval_count": 1}\n',
}

# Where a hostile value may land: top-level fields of every dialect, and the nested places parsers read.
FIELD_PATHS = [
    ("model",),
    ("messages",),
    ("prompt",),
    ("input",),
    ("stream",),
    ("stream_options",),
    ("stream_options", "include_usage"),
    ("options",),
    ("options", "temperature"),
    ("options", "num_predict"),
    ("options", "stop"),
    ("options", "num_ctx"),
    ("format",),
    ("format", "properties"),
    ("format", "pattern"),
    ("format", "$ref"),
    ("response_format",),
    ("response_format", "type"),
    ("response_format", "json_schema"),
    ("response_format", "json_schema", "schema"),
    ("response_format", "json_schema", "strict"),
    ("tools",),
    ("tools", 0),
    ("tools", 0, "function"),
    ("tools", 0, "function", "parameters"),
    ("tool_choice",),
    ("messages", 0),
    ("messages", 0, "role"),
    ("messages", 0, "content"),
    ("messages", 0, "content", 0),
    ("messages", 0, "content", 0, "type"),
    ("messages", 0, "content", 0, "image_url"),
    ("messages", 0, "images"),
    ("messages", 0, "tool_calls"),
    ("messages", 0, "tool_calls", 0, "function"),
    ("messages", 0, "tool_calls", 0, "function", "arguments"),
    ("messages", 0, "tool_call_id"),
    ("messages", 0, "thinking"),
    ("messages", 0, "reasoning_content"),
    ("system",),
    ("system", 0),
    ("system", 0, "text"),
    ("stop_sequences",),
    ("top_k",),
    ("thinking",),
    ("thinking", "type"),
    ("thinking", "budget_tokens"),
    ("tools", 0, "name"),
    ("tools", 0, "input_schema"),
    ("tool_choice", "type"),
    ("tool_choice", "name"),
    ("messages", 0, "content", 0, "text"),
    ("messages", 0, "content", 0, "source"),
    ("messages", 0, "content", 0, "source", "type"),
    ("messages", 0, "content", 0, "source", "url"),
    ("messages", 0, "content", 0, "source", "data"),
    ("messages", 0, "content", 0, "id"),
    ("messages", 0, "content", 0, "input"),
    ("messages", 0, "content", 0, "tool_use_id"),
    ("messages", 0, "content", 0, "content"),
    ("output_config",),
    ("output_config", "format"),
    ("output_config", "format", "schema"),
    ("query",),
    ("documents",),
    ("documents", 0),
    ("text_1",),
    ("text_2", 0),
    ("input",),
    ("input", 0, "type"),
    ("input", 0, "content"),
    ("input", 0, "call_id"),
    ("input", 0, "output"),
    ("instructions",),
    ("text", "format"),
    ("text", "format", "type"),
    ("text", "format", "schema"),
    ("reasoning", "effort"),
    ("max_output_tokens",),
    ("previous_response_id",),
    ("tools", 0, "type"),
    ("suffix",),
    ("raw",),
    ("images",),
    ("think",),
    ("keep_alive",),
    ("max_tokens",),
    ("max_completion_tokens",),
    ("temperature",),
    ("stop",),
    ("seed",),
    ("n",),
    ("best_of",),
    ("request_id",),
    ("reasoning_effort",),
    ("chat_template_kwargs",),
    ("chat_template_kwargs", "enable_thinking"),
    ("encoding_format",),
    ("dimensions",),
    ("truncate",),
    ("guided_json",),
    ("structured_outputs",),
    ("priority",),
    ("template",),
    ("context",),
    ("prompt_embeds",),
    ("\ud800",),
    ("",),
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(
        [
            "\ud800",
            "a\udfffb",
            "",
            "json",
            "json_schema",
            "json_object",
            "user",
            "tool",
            "text",
            "image_url",
            "video_url",
            "http://127.0.0.1:9/x",
            "data:image/png;base64,AAAA",
            "#",
            "#/x",
            "(a+)+$",
            "none",
            "auto",
            "required",
            "high",
            "float",
            "base64",
            "5m",
            "-1",
            "\x00",
        ]
    ),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.text(max_size=5) | st.sampled_from(["$ref", "type", "\ud800"]), children, max_size=3
        ),
    ),
    max_leaves=8,
)
nesting = st.integers(min_value=1, max_value=MAX_NESTING_DEPTH + 3).map(
    lambda depth: "[" * depth + "]" * depth
)


def put(body: dict, path: tuple, value) -> None:
    """Sets `value` at `path`, making the containers on the way (a list index past the end appends)."""
    container = body
    for key, next_key in zip(path, path[1:]):
        child_kind = list if isinstance(next_key, int) else dict
        if isinstance(container, list):
            key = min(key, len(container))
            if key == len(container):
                container.append(child_kind())
        elif not isinstance(container.get(key), (list, dict)):
            container[key] = child_kind()
        if not isinstance(container[key], child_kind):
            container[key] = child_kind()
        container = container[key]
    last = path[-1]
    if isinstance(container, list):
        if last >= len(container):
            container.append(value)
        else:
            container[last] = value
    else:
        container[last] = value


def encode(body: dict, raw_nesting: str | None) -> bytes:
    text = json.dumps(body)  # ensure_ascii: lone surrogates become \ud800 escapes, non-finite floats NaN
    if raw_nesting is not None:
        text = text[:-1] + (", " if len(text) > 2 else "") + f'"deep": {raw_nesting}' + "}"
    return text.encode()


def answer_for(path: str, engine_path: str, translator, stream: bool) -> None:
    if stream and engine_path in ENGINE_STREAMS:
        data = ENGINE_STREAMS[engine_path]
        chunks = [data[:7], data[7:]]
        out = [piece for chunk in chunks for piece in translator.feed(chunk)] + translator.finish()
        assert all(isinstance(piece, bytes) and piece for piece in out)
    else:
        status, body = translator.translate_body(200, json.dumps(ENGINE_BODIES[engine_path]).encode())
        assert isinstance(status, int) and isinstance(body, bytes)
    status, body = translator.translate_body(400, b'{"error": "\\ud800"}')
    assert 400 <= status < 600


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(list(CLIENT_ENDPOINTS)),
    changes=st.lists(st.tuples(st.sampled_from(FIELD_PATHS), json_values), max_size=4),
    raw_nesting=st.none() | nesting,
)
def test_any_body_is_refused_with_a_4xx_or_built_and_answered_for_both_engines(path, changes, raw_nesting):
    body = copy.deepcopy(BASE_BODIES[path])
    for field_path, value in changes:
        put(body, field_path, value)
    try:
        req = parse_client_request(path, encode(body, raw_nesting))
    except GatewayError as error:
        assert 400 <= error.status < 500, error
        return
    assert req.estimated_prompt_tokens >= 0 and (req.max_tokens is None or req.max_tokens >= 0)
    assert all(isinstance(url, str) for url in req.image_urls_to_fetch())
    for engine in ("ollama", "vllm"):
        try:
            engine_path, payload = build_backend_request(req, engine, "req-1")
        except GatewayError as error:
            assert 400 <= error.status < 500, error
            continue
        assert engine_path == backend_path(req, engine)
        assert isinstance(json.loads(payload.decode("utf-8")), dict)
        answer_for(path, engine_path, response_translator(req, engine, "req-1", 1700000000), req.stream)
