"""Anthropic Messages dialect responses: the canonical answer (whole or as stream events) → a Message,
and, from an engine that serves the Messages API itself, a Message → the canonical answer the audit
log and the quota read (the caller gets the engine's own bytes).

A streamed Message is a sequence of named SSE events: `message_start` (the Message with no content),
`ping`, then per content block `content_block_start`, its deltas and `content_block_stop`, then
`message_delta` (stop reason and usage) and `message_stop`. Blocks come in the order the engine
produced them: thinking, text, tool calls, each tool call a block of its own.

Thinking blocks carry a `signature` that callers send back with the block. Engines sign nothing, so
the signature is a digest of the thinking text: the same text always gets the same signature, and
the gateway, which drops earlier reasoning anyway, never needs to check it.
"""

from __future__ import annotations

import hashlib

from translators.canonical import CanonicalResponse, ToolCall, Usage, stable_tool_call_id
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
from translators.framing import dumps

# canonical finish reason (OpenAI's words) → Anthropic's stop_reason
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# Anthropic's stop_reason → canonical finish reason; a stop sequence, a paused turn, end as `stop` does.
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter"}


def named_event(event: dict) -> bytes:
    """One SSE event named by its type, as Anthropic frames every event."""
    return named_payload(event["type"], dumps(event))


def named_payload(kind: str, payload: bytes) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


def thinking_signature(thinking: str) -> str:
    return hashlib.sha256(thinking.encode()).hexdigest()


def stop_reason(finish_reason: str | None, called_tools: bool) -> str:
    """vLLM finishes a forced (named) tool call with `stop`; Anthropic says `tool_use` whenever a tool was called."""
    return "tool_use" if called_tools else STOP_REASONS.get(finish_reason or "stop", "end_turn")


def usage_json(usage: Usage | None) -> dict:
    return {"input_tokens": usage.prompt_tokens if usage else 0,
            "output_tokens": usage.completion_tokens if usage else 0}


def tool_use_block(call: ToolCall, with_input: bool = True) -> dict:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments_object() if with_input else {}}


def encode_message(response: CanonicalResponse, message_id: str, model: str) -> dict:
    content: list[dict] = []
    if response.thinking:
        content.append({"type": "thinking", "thinking": response.thinking,
                        "signature": thinking_signature(response.thinking)})
    if response.text:
        content.append({"type": "text", "text": response.text})
    content.extend(tool_use_block(call) for call in response.tool_calls)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(response.finish_reason, bool(response.tool_calls)),
        "stop_sequence": None,
        "usage": usage_json(response.usage),
    }


def encode_token_count(usage: Usage | None) -> dict:
    return {"input_tokens": usage.prompt_tokens if usage else 0}


class MessageStreamEncoder:
    """Events → Anthropic's named SSE events. The usage arrives with the engine's last chunk, so
    `message_start` reports zero tokens and `message_delta` the exact counts, input included."""

    def __init__(self, state: StreamState, message_id: str, model: str):
        self._state = state
        self._message = {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
                         "stop_reason": None, "stop_sequence": None, "usage": usage_json(None)}
        self._started = False
        self._block: tuple[str, int] | None = None  # ("text" | "thinking" | "tool_use", tool index)
        self._block_count = 0
        self._block_thinking: list[str] = []

    def encode(self, event: object) -> list[bytes]:
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(named_event({"type": "message_start", "message": self._message}))
            out.append(named_event({"type": "ping"}))
        if isinstance(event, TextDelta) and event.text:
            out.extend(self._open(("text", 0), {"type": "text", "text": ""}))
            out.append(self._delta({"type": "text_delta", "text": event.text}))
        elif isinstance(event, ThinkingDelta) and event.text:
            out.extend(self._open(("thinking", 0), {"type": "thinking", "thinking": "", "signature": ""}))
            self._block_thinking.append(event.text)
            out.append(self._delta({"type": "thinking_delta", "thinking": event.text}))
        elif isinstance(event, ToolCallDelta):
            call = self._state.tool_call(event.index)
            out.extend(self._open(("tool_use", event.index), tool_use_block(call, with_input=False)))
            if event.arguments:
                out.append(self._delta({"type": "input_json_delta", "partial_json": event.arguments}))
        elif isinstance(event, StreamEnded):
            out.extend(self._close())
            delta = {"stop_reason": stop_reason(self._state.finish_reason, bool(self._state.tool_calls)),
                     "stop_sequence": None}
            out.append(named_event({"type": "message_delta", "delta": delta, "usage": usage_json(self._state.usage)}))
            out.append(named_event({"type": "message_stop"}))
        # Finished and UsageReported are in the state, read when the stream ends.
        return out

    def _open(self, block: tuple[str, int], content_block: dict) -> list[bytes]:
        if self._block == block:
            return []
        out = self._close()
        self._block = block
        out.append(named_event({"type": "content_block_start", "index": self._block_count, "content_block": content_block}))
        return out

    def _close(self) -> list[bytes]:
        if self._block is None:
            return []
        out = []
        if self._block[0] == "thinking":
            signature = thinking_signature("".join(self._block_thinking))
            out.append(self._delta({"type": "signature_delta", "signature": signature}))
            self._block_thinking = []
        out.append(named_event({"type": "content_block_stop", "index": self._block_count}))
        self._block = None
        self._block_count += 1
        return out

    def _delta(self, delta: dict) -> bytes:
        return named_event({"type": "content_block_delta", "index": self._block_count, "delta": delta})


# -- from an engine that serves the Messages API -----------------------------------------------------


def usage_of(usage: object, input_tokens: int = 0) -> Usage | None:
    """Anthropic's usage object; `input_tokens` from `message_start` when a `message_delta` leaves it out."""
    if not isinstance(usage, dict) or not isinstance(usage.get("output_tokens", 0), int):
        return None
    prompt = usage.get("input_tokens")
    return Usage(prompt if isinstance(prompt, int) else input_tokens, usage.get("output_tokens", 0))


def decode_message(value: dict, request_id: str) -> CanonicalResponse:
    """A whole Message (or a count_tokens answer, which has `input_tokens` alone)."""
    if "content" not in value and isinstance(value.get("input_tokens"), int):
        return CanonicalResponse(usage=Usage(value["input_tokens"], 0))
    response = CanonicalResponse(model=value.get("model"), usage=usage_of(value.get("usage")))
    texts, thinking = [], []
    for block in value.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use":
            response.tool_calls.append(ToolCall(id=block.get("id") or stable_tool_call_id(request_id, len(response.tool_calls)),
                                                name=block.get("name") or "", arguments=dumps(block.get("input") or {}).decode()))
    response.text, response.thinking = "".join(texts), "".join(thinking)
    response.finish_reason = FINISH_REASONS.get(value.get("stop_reason"), "stop")
    return response


class MessageStreamDecoder:
    """An engine's Message stream → canonical events (the caller gets the events themselves). Tool calls
    are numbered in the order their `tool_use` blocks open; the usage is `message_start`'s input count
    with `message_delta`'s output count (and its input count, where the engine repeats it there)."""

    def __init__(self) -> None:
        self._tool_index_by_block: dict[int, int] = {}
        self._input_tokens = 0

    def events(self, event: dict) -> list:
        kind = event.get("type")
        if not isinstance(kind, str):
            return [EngineFailed("backend sent a stream event without a type")]
        if kind == "message_start":
            self._input_tokens = (usage_of((event.get("message") or {}).get("usage")) or Usage(0, 0)).prompt_tokens
        elif kind == "content_block_start":
            return self._block_start(event.get("index"), event.get("content_block") or {})
        elif kind == "content_block_delta":
            return self._block_delta(event.get("index"), event.get("delta") or {})
        elif kind == "message_delta":
            found: list = []
            if (reason := (event.get("delta") or {}).get("stop_reason")) is not None:
                found.append(Finished(FINISH_REASONS.get(reason, "stop")))
            if (usage := usage_of(event.get("usage"), self._input_tokens)) is not None:
                found.append(UsageReported(usage))
            return found
        elif kind == "message_stop":
            return [StreamEnded()]
        elif kind == "error":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            return [EngineFailed(f"backend stream failed: {message or 'no reason given'}")]
        return []  # ping, content_block_stop, and event types added later

    def _block_start(self, block_index: object, block: dict) -> list:
        if block.get("type") != "tool_use":
            text = block.get("text") or block.get("thinking")
            return [ThinkingDelta(text) if block.get("type") == "thinking" else TextDelta(text)] if text else []
        tool_index = self._tool_index_by_block[block_index] = len(self._tool_index_by_block)
        arguments = dumps(block["input"]).decode() if block.get("input") else ""
        return [ToolCallDelta(tool_index, id=block.get("id"), name=block.get("name"), arguments=arguments)]

    def _block_delta(self, block_index: object, delta: dict) -> list:
        kind = delta.get("type")
        if kind == "text_delta":
            return [TextDelta(delta.get("text") or "")]
        if kind == "thinking_delta":
            return [ThinkingDelta(delta.get("thinking") or "")]
        if kind == "input_json_delta" and block_index in self._tool_index_by_block:
            return [ToolCallDelta(self._tool_index_by_block[block_index], arguments=delta.get("partial_json") or "")]
        return []  # signature_delta, citations
