"""Ollama dialect responses: reading Ollama's (whole and streamed) and writing the Ollama client's.

`/api/chat` carries text in `message.content`, `/api/generate` in `response`; both end with a
`done: true` object holding `done_reason`, `prompt_eval_count` and `eval_count`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from translators.canonical import CanonicalResponse, EmbeddingResult, ToolCall, Usage, stable_tool_call_id
from translators.events import (
    EngineFailed,
    Finished,
    StreamEnded,
    StreamState,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    UsageReported,
)
from translators.framing import dumps, ndjson_line
from translators.mapping import FINISH_REASONS_FROM_OLLAMA, OLLAMA_DONE_REASONS


def created_at(created: int) -> str:
    """Ollama's RFC 3339 timestamp for a Unix time."""
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error_message(value: object) -> str | None:
    if not isinstance(value, dict) or value.get("error") is None:
        return None
    error = value["error"]
    if isinstance(error, dict):
        return str(error.get("message") or "unknown error")
    return str(error)


def usage_from(value: dict) -> Usage | None:
    """Ollama leaves a count out when it is zero (a fully cached prompt), so one is enough."""
    if value.get("prompt_eval_count") is None and value.get("eval_count") is None:
        return None
    return Usage(int(value.get("prompt_eval_count") or 0), int(value.get("eval_count") or 0))


def finish_reason_from(value: dict, called_tools: bool) -> str:
    if called_tools:
        return "tool_calls"
    return FINISH_REASONS_FROM_OLLAMA.get(value.get("done_reason"), "stop")


def arguments_text(arguments: object) -> str:
    return arguments if isinstance(arguments, str) else dumps(arguments or {}).decode()


def decode_tool_calls(raw_calls: list, request_id: str, first_index: int = 0) -> list[ToolCall]:
    calls = []
    for offset, raw in enumerate(raw_calls):
        function = raw.get("function") or {}
        calls.append(
            ToolCall(
                id=raw.get("id") or stable_tool_call_id(request_id, first_index + offset),
                name=function.get("name") or "",
                arguments=arguments_text(function.get("arguments")),
            )
        )
    return calls


def decode_chat_response(value: dict, request_id: str) -> CanonicalResponse:
    message = value.get("message") or {}
    calls = decode_tool_calls(message.get("tool_calls") or [], request_id)
    return CanonicalResponse(
        text=message.get("content") or "",
        thinking=message.get("thinking") or "",
        tool_calls=calls,
        finish_reason=finish_reason_from(value, bool(calls)),
        usage=usage_from(value),
        model=value.get("model"),
    )


def decode_generate_response(value: dict) -> CanonicalResponse:
    return CanonicalResponse(
        text=value.get("response") or "",
        thinking=value.get("thinking") or "",
        finish_reason=finish_reason_from(value, False),
        usage=usage_from(value),
        model=value.get("model"),
    )


def decode_embed_response(value: dict) -> EmbeddingResult:
    usage = Usage(int(value.get("prompt_eval_count") or 0), 0)
    return EmbeddingResult(vectors=list(value.get("embeddings") or []), usage=usage, model=value.get("model"))


def tool_call_json(call: ToolCall) -> dict:
    return {"function": {"name": call.name, "arguments": call.arguments_object()}}


def done_fields(finish_reason: str | None, usage: Usage | None) -> dict:
    fields: dict = {"done": True, "done_reason": OLLAMA_DONE_REASONS.get(finish_reason or "stop", "stop")}
    if usage is not None:
        fields["prompt_eval_count"] = usage.prompt_tokens
        fields["eval_count"] = usage.completion_tokens
    return fields


def encode_chat_response(response: CanonicalResponse, model: str, timestamp: str) -> dict:
    message: dict = {"role": "assistant", "content": response.text}
    if response.thinking:
        message["thinking"] = response.thinking
    if response.tool_calls:
        message["tool_calls"] = [tool_call_json(call) for call in response.tool_calls]
    return {"model": model, "created_at": timestamp, "message": message} | done_fields(
        response.finish_reason, response.usage
    )


def encode_generate_response(response: CanonicalResponse, model: str, timestamp: str) -> dict:
    body: dict = {"model": model, "created_at": timestamp, "response": response.text}
    if response.thinking:
        body["thinking"] = response.thinking
    return body | done_fields(response.finish_reason, response.usage)


def encode_embed_response(result: EmbeddingResult, model: str) -> dict:
    body: dict = {"model": model, "embeddings": result.vectors}
    if result.usage is not None:
        body["prompt_eval_count"] = result.usage.prompt_tokens
    return body


def encode_legacy_embedding_response(result: EmbeddingResult) -> dict:
    return {"embedding": result.vectors[0] if result.vectors else []}


class StreamDecoder:
    """Ollama NDJSON objects (`/api/chat` when `chat`, else `/api/generate`) → events."""

    def __init__(self, chat: bool):
        self._chat = chat
        self._tool_calls_seen = 0

    def events(self, chunk: dict) -> list:
        if (message := error_message(chunk)) is not None:
            return [EngineFailed(message)]
        source = (chunk.get("message") or {}) if self._chat else chunk
        events: list = []
        if thinking := source.get("thinking"):
            events.append(ThinkingDelta(thinking))
        if text := source.get("content" if self._chat else "response"):
            events.append(TextDelta(text))
        raw_calls = (source.get("tool_calls") or []) if self._chat else []
        for raw in raw_calls:
            function = raw.get("function") or {}
            events.append(
                ToolCallDelta(
                    self._tool_calls_seen,
                    raw.get("id"),
                    function.get("name"),
                    arguments_text(function.get("arguments")),
                )
            )
            self._tool_calls_seen += 1
        if chunk.get("done"):
            events.append(Finished(finish_reason_from(chunk, self._tool_calls_seen > 0)))
            if usage := usage_from(chunk):
                events.append(UsageReported(usage))
            events.append(StreamEnded())
        return events


class StreamEncoder:
    """Events → Ollama NDJSON lines (`message` chunks when `chat`, `response` chunks otherwise).

    Ollama sends each tool call whole and its counts in the final object, so tool-call pieces wait
    in the stream state until the finish, and the final object waits for the end of the stream.
    """

    def __init__(self, state: StreamState, model: str, timestamp: str, chat: bool):
        self._state = state
        self._head = {"model": model, "created_at": timestamp}
        self._chat = chat

    def encode(self, event: object) -> list[bytes]:
        if isinstance(event, TextDelta):
            return [self._line(event.text)]
        if isinstance(event, ThinkingDelta):
            return [self._line("", thinking=event.text)]
        if isinstance(event, Finished) and self._chat and self._state.tool_calls:
            return [self._line("", tool_calls=[tool_call_json(call) for call in self._state.tool_calls])]
        if isinstance(event, StreamEnded):
            done = done_fields(self._state.finish_reason, self._state.usage)
            if self._chat:
                return [
                    ndjson_line(dumps({**self._head, "message": {"role": "assistant", "content": ""}} | done))
                ]
            return [ndjson_line(dumps({**self._head, "response": ""} | done))]
        return []

    def _line(self, text: str, thinking: str | None = None, tool_calls: list | None = None) -> bytes:
        if self._chat:
            message: dict = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            chunk = {**self._head, "message": message, "done": False}
        else:
            chunk = {**self._head, "response": text, "done": False}
            if thinking:
                chunk["thinking"] = thinking
        return ndjson_line(dumps(chunk))
