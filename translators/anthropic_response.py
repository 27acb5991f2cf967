"""Anthropic Messages dialect responses: the canonical answer (whole or as stream events) → a Message.

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

from translators.canonical import CanonicalResponse, ToolCall, Usage
from translators.events import (
    StreamEnded,
    StreamState,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
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


def named_event(event: dict) -> bytes:
    """One SSE event named by its type, as Anthropic frames every event."""
    return b"event: " + event["type"].encode() + b"\ndata: " + dumps(event) + b"\n\n"


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
