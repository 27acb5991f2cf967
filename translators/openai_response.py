"""OpenAI dialect responses: reading vLLM's (whole and streamed) and writing the OpenAI client's."""

from __future__ import annotations

import base64
import struct

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
from translators.framing import SSE_DONE, dumps, sse_event


def error_message(value: object) -> str | None:
    """The message of a vLLM/OpenAI error object (`{"error": {...}}` or vLLM's older `{"object": "error"}`),
    or of what vLLM's FastAPI answers itself (`{"detail": ...}`)."""
    if not isinstance(value, dict):
        return None
    if "detail" in value and len(value) == 1:
        return fastapi_detail_message(value["detail"])
    error = value.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or "unknown error")
    if isinstance(error, str):
        return error
    if value.get("object") == "error":
        return str(value.get("message") or "unknown error")
    return None


def pooling_usage(value: dict) -> Usage | None:
    """What vLLM's rerank, score and tokenize answers count: `usage.prompt_tokens` (score), only
    `usage.total_tokens` (rerank), or the token `count` (tokenize); all of it prompt."""
    usage = value.get("usage")
    if isinstance(usage, dict):
        tokens = usage.get("prompt_tokens", usage.get("total_tokens"))
        if isinstance(tokens, int):
            return Usage(tokens, 0)
    count = value.get("count")
    return Usage(count, 0) if isinstance(count, int) else None


def fastapi_detail_message(detail: object) -> str:
    """FastAPI's `detail`: a message (404 Not Found, 405, 415), or its request validation errors
    (`[{"loc": ["body", "messages"], "msg": "Field required", ...}]`) as `messages: Field required`."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        problems = []
        for item in detail[:5]:
            if not isinstance(item, dict):
                problems.append(str(item))
                continue
            location = [str(part) for part in item.get("loc") or [] if part != "body"]
            message = str(item.get("msg") or item.get("type") or "invalid")
            problems.append(f"{'.'.join(location)}: {message}" if location else message)
        if problems:
            return "invalid request: " + "; ".join(problems)
    return "invalid request"


def usage_from(value: dict) -> Usage | None:
    usage = value.get("usage")
    if not isinstance(usage, dict) or usage.get("prompt_tokens") is None:
        return None
    return Usage(int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0))


def first_choice(value: dict) -> dict:
    for choice in value.get("choices") or []:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return {}


def reasoning_of(message: dict) -> str:
    """vLLM calls it `reasoning_content`; newer releases `reasoning`."""
    return message.get("reasoning_content") or message.get("reasoning") or ""


def decode_chat_response(value: dict, request_id: str) -> CanonicalResponse:
    choice = first_choice(value)
    message = choice.get("message") or {}
    calls = []
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        calls.append(
            ToolCall(
                id=call.get("id") or stable_tool_call_id(request_id, index),
                name=function.get("name") or "",
                arguments=function.get("arguments") or "{}",
            )
        )
    return CanonicalResponse(
        text=message.get("content") or "",
        thinking=reasoning_of(message),
        tool_calls=calls,
        finish_reason=choice.get("finish_reason"),
        usage=usage_from(value),
        model=value.get("model"),
    )


def decode_completion_response(value: dict) -> CanonicalResponse:
    choice = first_choice(value)
    return CanonicalResponse(
        text=choice.get("text") or "",
        finish_reason=choice.get("finish_reason"),
        usage=usage_from(value),
        model=value.get("model"),
    )


def encode_float32_base64(vector: list[float]) -> str:
    """What the OpenAI SDK expects for `encoding_format: "base64"`: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def decode_float32_base64(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def decode_embedding_response(value: dict) -> EmbeddingResult:
    data = sorted(
        (item for item in value.get("data") or [] if isinstance(item, dict)), key=lambda i: i.get("index", 0)
    )
    vectors = [
        decode_float32_base64(item["embedding"])
        if isinstance(item.get("embedding"), str)
        else item.get("embedding")
        for item in data
    ]
    return EmbeddingResult(vectors=vectors, usage=usage_from(value), model=value.get("model"))


def tool_call_json(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def encode_chat_response(response: CanonicalResponse, completion_id: str, created: int, model: str) -> dict:
    message: dict = {"role": "assistant", "content": response.text or (None if response.tool_calls else "")}
    if response.thinking:
        message["reasoning_content"] = response.thinking
    if response.tool_calls:
        message["tool_calls"] = [tool_call_json(call) for call in response.tool_calls]
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": response.finish_reason or "stop",
            }
        ],
    }
    if response.usage is not None:
        body["usage"] = response.usage.as_openai()
    return body


def encode_completion_response(
    response: CanonicalResponse, completion_id: str, created: int, model: str
) -> dict:
    body = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": response.text,
                "logprobs": None,
                "finish_reason": response.finish_reason or "stop",
            }
        ],
    }
    if response.usage is not None:
        body["usage"] = response.usage.as_openai()
    return body


def encode_embedding_response(result: EmbeddingResult, model: str, encoding_format: str) -> dict:
    encode = encode_float32_base64 if encoding_format == "base64" else list
    prompt_tokens = result.usage.prompt_tokens if result.usage else 0
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encode(vector)}
            for index, vector in enumerate(result.vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def is_usage_only_chunk(chunk: dict) -> bool:
    """The extra chunk `stream_options.include_usage` adds: no choices, just usage."""
    return not chunk.get("choices") and isinstance(chunk.get("usage"), dict)


class ChatStreamDecoder:
    """vLLM `chat.completion.chunk` objects → events."""

    def events(self, chunk: dict) -> list:
        if (message := error_message(chunk)) is not None:
            return [EngineFailed(message)]
        events: list = []
        choice = first_choice(chunk)
        delta = choice.get("delta") or {}
        if reasoning := reasoning_of(delta):
            events.append(ThinkingDelta(reasoning))
        if content := delta.get("content"):
            events.append(TextDelta(content))
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            events.append(
                ToolCallDelta(
                    call.get("index", 0),
                    call.get("id"),
                    function.get("name"),
                    function.get("arguments") or "",
                )
            )
        if reason := choice.get("finish_reason"):
            events.append(Finished(reason))
        if usage := usage_from(chunk):
            events.append(UsageReported(usage))
        return events


class CompletionStreamDecoder:
    """vLLM `text_completion` chunks → events."""

    def events(self, chunk: dict) -> list:
        if (message := error_message(chunk)) is not None:
            return [EngineFailed(message)]
        events: list = []
        choice = first_choice(chunk)
        if text := choice.get("text"):
            events.append(TextDelta(text))
        if reason := choice.get("finish_reason"):
            events.append(Finished(reason))
        if usage := usage_from(chunk):
            events.append(UsageReported(usage))
        return events


class ChatStreamEncoder:
    """Events → `chat.completion.chunk` SSE events, as OpenAI streams them."""

    def __init__(self, state: StreamState, completion_id: str, created: int, model: str, include_usage: bool):
        self._state = state
        self._head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._include_usage = include_usage
        self._started = False
        self._announced_calls: set[int] = set()

    def encode(self, event: object) -> list[bytes]:
        if isinstance(event, StreamEnded):
            return [SSE_DONE]
        if isinstance(event, UsageReported):
            return [self._usage_chunk(event.usage)] if self._include_usage else []
        out = []
        if not self._started:
            self._started = True
            out.append(self._delta_chunk({"role": "assistant", "content": ""}))
        if isinstance(event, TextDelta):
            out.append(self._delta_chunk({"content": event.text}))
        elif isinstance(event, ThinkingDelta):
            out.append(self._delta_chunk({"reasoning_content": event.text}))
        elif isinstance(event, ToolCallDelta):
            out.append(self._delta_chunk({"tool_calls": [self._tool_call_piece(event)]}))
        elif isinstance(event, Finished):
            out.append(self._delta_chunk({}, event.reason))
        return out

    def _tool_call_piece(self, event: ToolCallDelta) -> dict:
        if event.index in self._announced_calls:
            return {"index": event.index, "function": {"arguments": event.arguments}}
        self._announced_calls.add(event.index)
        call = self._state.tool_call(event.index)
        return {
            "index": event.index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": event.arguments},
        }

    def _delta_chunk(self, delta: dict, finish_reason: str | None = None) -> bytes:
        chunk = {
            **self._head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self._include_usage:
            chunk["usage"] = None  # OpenAI marks every chunk but the last when usage was asked for
        return sse_event(dumps(chunk))

    def _usage_chunk(self, usage: Usage) -> bytes:
        return sse_event(dumps({**self._head, "choices": [], "usage": usage.as_openai()}))


class CompletionStreamEncoder:
    """Events → `text_completion` SSE events. Thinking and tool calls have no place here."""

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool):
        self._head = {"id": completion_id, "object": "text_completion", "created": created, "model": model}
        self._include_usage = include_usage

    def encode(self, event: object) -> list[bytes]:
        if isinstance(event, StreamEnded):
            return [SSE_DONE]
        if isinstance(event, UsageReported):
            if not self._include_usage:
                return []
            return [sse_event(dumps({**self._head, "choices": [], "usage": event.usage.as_openai()}))]
        if isinstance(event, TextDelta):
            return [self._choice_chunk(event.text, None)]
        if isinstance(event, Finished):
            return [self._choice_chunk("", event.reason)]
        return []

    def _choice_chunk(self, text: str, finish_reason: str | None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return sse_event(dumps({**self._head, "choices": [choice]}))
