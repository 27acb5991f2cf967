"""The translation facade the gateway calls: client body in, engine body out, engine answer back.

    req = parse_client_request(path, body)                                 # GatewayError 400 / 404 / 413 / 422
    native = serves_natively(req, engine, endpoints)  # the engine serves the caller's API itself, all it asks
    path, payload = build_backend_request(req, engine, request_id, native)  # engine "ollama" | "vllm"; GatewayError 422
    translator = response_translator(req, engine, request_id, created, native)
    streamed:  translator.feed(piece) for each piece of the engine's body, then translator.finish()
               (each returns a list of bytes chunks for the client, possibly empty, never b"")
    whole:     status, body = translator.translate_body(engine_status, engine_body)
    errors:    translate_backend_error(...) for an engine's error body; stream_error_event(...) after
               the first byte went out (finish() already adds one when the engine's stream breaks off)

`parse_client_request(path, body, max_body_bytes)` → `CanonicalRequest` (translators.canonical) with
`client_dialect` ("openai" | "ollama" | "anthropic"), `client_endpoint`, `kind` ("chat" | "completion" | "embedding"),
`model` (the gateway may rewrite it to the backend's name before building), `requested_model`,
`stream` (decided from the body, never from Accept), `images` (bytes + media type, for the audit log),
`image_urls_to_fetch()` / `supply_image(url, data)` (http(s) images the gateway fetches),
`max_tokens` and `estimated_prompt_tokens` (cost estimation), `notes` (what the caller policy
withheld and the last `build_backend_request` dropped, and why).

`ResponseTranslator` exposes for the audit log and the quota: `media_type`, `usage` (exact engine
counts), `output_text`, `thinking_text`, `tool_calls`, `finish_reason` (OpenAI's words), `validation`
(`{"valid", "errors"}` when structured output was asked for).

A request in the engine's own dialect (OpenAI → vLLM, Ollama → Ollama) goes through the same
machinery but is faithful: the engine sees the client's body, the client sees the engine's bytes,
except the usage chunk the gateway asked vLLM for, which is stripped when the client did not ask.
So does a Messages request to an engine that serves the Messages API itself (`native`): the engine
gets the caller's body less what the gateway drops, the caller gets the engine's events, and the
gateway reads the text, the tool calls and the usage from them on the way.
"""

from __future__ import annotations

import json

from translators import (
    anthropic_request,
    anthropic_response,
    caller_policy,
    ollama_request,
    ollama_response,
    openai_request,
    openai_response,
    pooling_request,
    responses_request,
    responses_response,
)
from translators.canonical import (
    EMBEDDING,
    ENGINES,
    OLLAMA_ENGINE,
    PASSTHROUGH_KINDS,
    VLLM_ENGINE,
    CanonicalRequest,
    ToolCall,
    Usage,
)
from translators.errors import ANTHROPIC, OLLAMA, OPENAI, GatewayError, error_body
from translators.events import EngineFailed, Finished, StreamEnded, StreamState
from translators.framing import (
    SSE_DONE_PAYLOAD,
    NDJSONDecoder,
    SSEDecoder,
    dumps,
    loads,
    ndjson_line,
    sse_event,
)
from translators.mapping import CLIENT_ENDPOINTS, ENGINE_PATHS, NATIVE_ENDPOINTS
from translators.request_body import DEFAULT_MAX_BODY_BYTES, load_json_object
from translators.structured import validate_output

JSON_MEDIA_TYPE = "application/json"
SSE_MEDIA_TYPE = "text/event-stream"
NDJSON_MEDIA_TYPE = "application/x-ndjson"

# The model answered, but not in the schema the caller made strict: a backend failure, not the caller's.
STRUCTURED_OUTPUT_ERROR_STATUS = 502


def normalize_endpoint(path: str) -> str:
    return path.split("?", 1)[0].rstrip("/") or "/"


def parse_client_request(
    path: str, body: bytes, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, anthropic_version: str | None = None
) -> CanonicalRequest:
    """`anthropic_version`: the caller's `anthropic-version` header, checked on /v1/messages."""
    endpoint = normalize_endpoint(path)
    if endpoint not in CLIENT_ENDPOINTS:
        known = ", ".join(CLIENT_ENDPOINTS)
        raise GatewayError(
            404, f"'{path}' is not an inference endpoint (known: {known})", code="unknown_endpoint"
        )
    dialect, kind = CLIENT_ENDPOINTS[endpoint]
    parsed = load_json_object(body, max_body_bytes)
    if dialect == ANTHROPIC:
        req = anthropic_request.parse_request(endpoint, kind, parsed, anthropic_version)
    elif endpoint == responses_request.ENDPOINT:
        req = responses_request.parse_request(endpoint, kind, parsed)
    elif kind in PASSTHROUGH_KINDS:
        req = pooling_request.parse_request(endpoint, kind, parsed)
    else:
        parse = openai_request.parse_request if dialect == OPENAI else ollama_request.parse_request
        req = parse(endpoint, kind, parsed)
    caller_policy.screen(req)
    return req


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}' (expected one of {', '.join(ENGINES)})")


def serves_natively(req: CanonicalRequest, engine: str, native_endpoints: frozenset[str] | tuple[str, ...]) -> bool:
    """Whether `engine`, which serves `native_endpoints` itself, takes this request as the caller sent it:
    not where its own API would ignore what the request asks (then the translation carries it)."""
    return (req.client_endpoint in NATIVE_ENDPOINTS and req.client_endpoint in native_endpoints
            and anthropic_request.native_gap(req, engine) is None)


def backend_path(req: CanonicalRequest, engine: str, native: bool = False) -> str:
    """The engine endpoint that keeps the client's meaning (see ENGINE_PATHS in translators.mapping)."""
    check_engine(engine)
    if native:
        return req.client_endpoint
    if req.kind in PASSTHROUGH_KINDS and engine != VLLM_ENGINE:
        raise GatewayError(422, f"{req.client_endpoint} is served by vLLM nodes only; model {req.model!r} is served "
                                f"by {engine}", code="unsupported")
    if engine == VLLM_ENGINE and req.client_endpoint == "/api/generate" and not req.raw_prompt:
        return "/v1/chat/completions"
    return ENGINE_PATHS[(engine, req.kind)]


def build_backend_request(req: CanonicalRequest, engine: str, request_id: str, native: bool = False) -> tuple[str, bytes]:
    path = backend_path(req, engine, native)
    notes: list[str] = []
    if native:
        body, notes = anthropic_request.native_body(req, engine)
    elif req.kind in PASSTHROUGH_KINDS:
        body = {**req.body, "model": req.model}
    elif req.client_dialect == ANTHROPIC:
        body, notes = anthropic_request.build_request(req, engine, path, request_id)
    elif req.client_endpoint == responses_request.ENDPOINT:
        body, notes = responses_request.build_request(req, engine, path, request_id)
    elif path == req.client_endpoint:
        if engine == VLLM_ENGINE:
            body = openai_request.passthrough_body(req, request_id)
        else:
            body = ollama_request.passthrough_body(req)
    elif req.client_dialect == OLLAMA and engine == OLLAMA_ENGINE:
        body = ollama_request.legacy_embeddings_body(req)
    elif engine == OLLAMA_ENGINE:
        body, notes = ollama_request.build_request(req)
    else:
        body, notes = openai_request.build_request(req, path, request_id)
    req.notes = req.withheld + notes
    return path, dumps(body)


def response_translator(
    req: CanonicalRequest, engine: str, request_id: str, created: int, native: bool = False
) -> ResponseTranslator:
    return ResponseTranslator(req, engine, request_id, created, native)


def translate_backend_error(engine: str, status: int, body: bytes, client_dialect: str) -> tuple[int, bytes]:
    """An engine's error answer in the caller's dialect: 4xx keep their status, everything else is 502."""
    check_engine(engine)
    client_status = status if 400 <= status < 500 else 502
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        value = None
    message = openai_response.error_message(value)
    if message is None:
        return client_status, error_body(
            client_dialect, GatewayError(client_status, unreadable_error(status, body))
        )
    error = value.get("error")
    if (client_dialect, engine) == (OPENAI, VLLM_ENGINE) and isinstance(error, dict):
        return client_status, body
    if (client_dialect, engine) == (OLLAMA, OLLAMA_ENGINE) and isinstance(error, str):
        return client_status, body
    return client_status, error_body(client_dialect, GatewayError(client_status, message))


def unreadable_error(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    if not text or text.startswith("<"):
        return f"backend answered HTTP {status}"
    return f"backend answered HTTP {status}: {text[:200]}"


def stream_error_event(client_dialect: str, message: str) -> bytes:
    """A clean end to a stream that already started: OpenAI and Anthropic clients raise APIError, Ollama's
    ResponseError."""
    error = GatewayError(502, message)
    if client_dialect == ANTHROPIC:
        return anthropic_response.named_event(json.loads(error_body(ANTHROPIC, error)))
    if client_dialect == OPENAI:
        return sse_event(error_body(OPENAI, error)) + sse_event(SSE_DONE_PAYLOAD)
    return ndjson_line(error_body(OLLAMA, error))


class ResponseTranslator:
    """Turns one engine answer (streamed or whole) into what the client's dialect expects."""

    def __init__(self, req: CanonicalRequest, engine: str, request_id: str, created: int, native: bool = False):
        self._req = req
        self._engine = engine
        self._native = native
        self._engine_path = backend_path(req, engine, native)
        self._passthrough = native or self._engine_path == req.client_endpoint or req.kind in PASSTHROUGH_KINDS
        self._request_id = request_id
        self._created = created
        self._state = StreamState(request_id)
        self._failed = False
        self._ended = False
        self.validation: dict | None = None
        streaming = req.stream and req.kind != EMBEDDING
        if not streaming:
            self.media_type = JSON_MEDIA_TYPE
        else:
            self.media_type = NDJSON_MEDIA_TYPE if req.client_dialect == OLLAMA else SSE_MEDIA_TYPE
        self._framing = SSEDecoder() if engine == VLLM_ENGINE or native else NDJSONDecoder()
        self._frame = sse_event if req.client_dialect == OPENAI else ndjson_line
        self._decoder = self._stream_decoder() if streaming else None
        self._encoder = self._stream_encoder() if streaming and not self._passthrough else None
        self._strip_usage_chunks = self._passthrough and not native and engine == VLLM_ENGINE and not req.include_usage

    @property
    def usage(self) -> Usage | None:
        return self._state.usage

    @property
    def output_text(self) -> str:
        return self._state.text

    @property
    def thinking_text(self) -> str:
        return self._state.thinking

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self._state.tool_calls

    @property
    def finish_reason(self) -> str | None:
        return self._state.finish_reason

    @property
    def created(self) -> int:
        return self._created

    @property
    def failed(self) -> bool:
        """The answer broke off or broke a strict schema: the caller got an error, not this response."""
        return self._failed

    # -- streams ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for payload in self._framing.feed(data):
            out.extend(self._on_payload(payload))
        return out

    def finish(self) -> list[bytes]:
        if self._decoder is None:
            return []  # not a stream: translate_body did the work
        out: list[bytes] = []
        for payload in self._framing.finish():
            out.extend(self._on_payload(payload))
        if not self._ended and not self._failed:
            out.extend(self._fail("backend stream ended before the response was complete"))
        return out

    def _on_payload(self, payload: bytes) -> list[bytes]:
        if self._ended:
            return []
        chunk, events = self._decode_payload(payload)
        out: list[bytes] = []
        for event in events:
            self._state.record(event)
            if isinstance(event, StreamEnded):
                self._ended = True
            if self._failed:
                continue
            if isinstance(event, EngineFailed):
                out.extend(self._fail(event.message))
            elif isinstance(event, Finished) and self._violates_strict_schema():
                out.extend(self._fail(self._schema_failure_message()))
            elif self._encoder is not None:
                out.extend(self._encoder.encode(event))
        stripped = (
            self._strip_usage_chunks and chunk is not None and openai_response.is_usage_only_chunk(chunk)
        )
        if self._passthrough and not self._failed and not stripped:
            out.append(anthropic_response.named_payload(chunk["type"], payload) if self._native else self._frame(payload))
        return out

    def _decode_payload(self, payload: bytes) -> tuple[dict | None, list]:
        if self._engine == VLLM_ENGINE and not self._native and payload == SSE_DONE_PAYLOAD:
            return None, [StreamEnded()]
        try:
            chunk = loads(payload)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            return None, [EngineFailed("backend sent a stream chunk that is not a JSON object")]
        return chunk, self._decoder.events(chunk)

    def _fail(self, message: str) -> list[bytes]:
        self._failed = True
        return [stream_error_event(self._req.client_dialect, message)]

    def _stream_decoder(self):
        if self._native:
            return anthropic_response.MessageStreamDecoder()
        decoders = {
            "/v1/chat/completions": openai_response.ChatStreamDecoder,
            "/v1/completions": openai_response.CompletionStreamDecoder,
            "/api/chat": lambda: ollama_response.StreamDecoder(chat=True),
            "/api/generate": lambda: ollama_response.StreamDecoder(chat=False),
        }
        return decoders[self._engine_path]()

    def _stream_encoder(self):
        model, created, include_usage = self._req.requested_model, self._created, self._req.include_usage
        timestamp = ollama_response.created_at(created)
        encoders = {
            "/v1/chat/completions": lambda: openai_response.ChatStreamEncoder(
                self._state, f"chatcmpl-{self._request_id}", created, model, include_usage
            ),
            "/v1/completions": lambda: openai_response.CompletionStreamEncoder(
                f"cmpl-{self._request_id}", created, model, include_usage
            ),
            "/api/chat": lambda: ollama_response.StreamEncoder(self._state, model, timestamp, chat=True),
            "/api/generate": lambda: ollama_response.StreamEncoder(self._state, model, timestamp, chat=False),
            "/v1/responses": lambda: responses_response.ResponsesStreamEncoder(
                self._state, self._req, f"resp_{self._request_id}", created
            ),
            "/v1/messages": lambda: anthropic_response.MessageStreamEncoder(
                self._state, f"msg_{self._request_id}", model
            ),
        }
        return encoders[self._req.client_endpoint]()

    # -- structured output -----------------------------------------------------------------------

    def _violates_strict_schema(self) -> bool:
        """Validates the assembled text (once, at the finish) and says whether the caller must get an error."""
        response_format = self._req.response_format
        if response_format is None or self._state.tool_calls:
            return False
        self.validation = validate_output(response_format, self._state.text)
        return response_format.strict and not self.validation["valid"]

    def _schema_failure_message(self) -> str:
        errors = "; ".join(self.validation["errors"][:3])
        return f"model output does not match the requested JSON schema: {errors}"

    # -- whole bodies ----------------------------------------------------------------------------

    def translate_body(self, status: int, body: bytes) -> tuple[int, bytes]:
        if status >= 400:
            return translate_backend_error(self._engine, status, body, self._req.client_dialect)
        try:
            value = loads(body)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            return self._error(502, "backend answered with a body that is not a JSON object")
        if (message := openai_response.error_message(value)) is not None:
            return self._error(502, message)
        if self._req.kind in PASSTHROUGH_KINDS:
            self._state.usage = openai_response.pooling_usage(value)
            return status, body
        if self._req.kind == EMBEDDING:
            return self._translate_embeddings(status, body, value)
        response = self._decode_whole(value)
        self._state.text_parts = [response.text]
        self._state.thinking_parts = [response.thinking]
        self._state.tool_calls_by_index = dict(enumerate(response.tool_calls))
        self._state.finish_reason = response.finish_reason
        self._state.usage = response.usage
        if self._violates_strict_schema():
            return self._error(
                STRUCTURED_OUTPUT_ERROR_STATUS, self._schema_failure_message(), "invalid_structured_output"
            )
        if self._passthrough:
            return status, body
        return 200, dumps(self._encode_whole(response))

    def _error(self, status: int, message: str, code: str | None = None) -> tuple[int, bytes]:
        return status, error_body(self._req.client_dialect, GatewayError(status, message, code=code))

    def _decode_whole(self, value: dict):
        if self._native:
            return anthropic_response.decode_message(value, self._request_id)
        if self._engine_path == "/v1/chat/completions":
            return openai_response.decode_chat_response(value, self._request_id)
        if self._engine_path == "/v1/completions":
            return openai_response.decode_completion_response(value)
        if self._engine_path == "/api/chat":
            return ollama_response.decode_chat_response(value, self._request_id)
        return ollama_response.decode_generate_response(value)

    def _encode_whole(self, response) -> dict:
        model = self._req.requested_model
        endpoint = self._req.client_endpoint
        if endpoint == "/v1/chat/completions":
            return openai_response.encode_chat_response(
                response, f"chatcmpl-{self._request_id}", self._created, model
            )
        if endpoint == "/v1/completions":
            return openai_response.encode_completion_response(
                response, f"cmpl-{self._request_id}", self._created, model
            )
        if endpoint == "/v1/responses":
            return responses_response.encode_response(self._req, response, f"resp_{self._request_id}", self._created)
        if endpoint == "/v1/messages":
            return anthropic_response.encode_message(response, f"msg_{self._request_id}", model)
        if endpoint == "/v1/messages/count_tokens":
            return anthropic_response.encode_token_count(response.usage)
        timestamp = ollama_response.created_at(self._created)
        if endpoint == "/api/chat":
            return ollama_response.encode_chat_response(response, model, timestamp)
        return ollama_response.encode_generate_response(response, model, timestamp)

    def _translate_embeddings(self, status: int, body: bytes, value: dict) -> tuple[int, bytes]:
        if self._engine == VLLM_ENGINE:
            result = openai_response.decode_embedding_response(value)
        else:
            result = ollama_response.decode_embed_response(value)
        self._state.usage = result.usage
        if self._passthrough:
            return status, body
        model = self._req.requested_model
        if self._req.client_endpoint == "/v1/embeddings":
            encoded = openai_response.encode_embedding_response(result, model, self._req.encoding_format)
        elif self._req.client_endpoint == "/api/embed":
            encoded = ollama_response.encode_embed_response(result, model)
        else:
            encoded = ollama_response.encode_legacy_embedding_response(result)
        return 200, dumps(encoded)
