"""What an engine's stream says, whatever its dialect.

Engine decoders turn each parsed chunk into these events; client encoders turn events into bytes.
`StreamState` accumulates them so encoders that must wait (Ollama wants whole tool calls and the
counts in its final object) and the audit log see the assembled response.
"""

from __future__ import annotations

from dataclasses import dataclass

from translators.canonical import ToolCall, Usage, stable_tool_call_id


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of tool call `index`: OpenAI streams arguments in fragments, Ollama sends whole calls."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Finished:
    reason: str  # canonical: OpenAI's stop | length | tool_calls | content_filter


@dataclass(slots=True)
class UsageReported:
    usage: Usage


@dataclass(slots=True)
class EngineFailed:
    message: str


@dataclass(slots=True)
class StreamEnded:
    """The engine said it is done (`data: [DONE]`, or Ollama's `done: true` object)."""


class StreamState:
    """The response so far: text, thinking, tool calls (arguments assembled), finish reason, usage."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.text_parts: list[str] = []
        self.thinking_parts: list[str] = []
        self.tool_calls_by_index: dict[int, ToolCall] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def record(self, event: object) -> None:
        if isinstance(event, TextDelta):
            self.text_parts.append(event.text)
        elif isinstance(event, ThinkingDelta):
            self.thinking_parts.append(event.text)
        elif isinstance(event, ToolCallDelta):
            self.add_tool_call_piece(event)
        elif isinstance(event, Finished):
            self.finish_reason = event.reason
        elif isinstance(event, UsageReported):
            self.usage = event.usage

    def add_tool_call_piece(self, piece: ToolCallDelta) -> None:
        call = self.tool_calls_by_index.get(piece.index)
        if call is None:
            call = ToolCall(
                id=piece.id or stable_tool_call_id(self.request_id, piece.index), name="", arguments=""
            )
            self.tool_calls_by_index[piece.index] = call
        if piece.name and not call.name:
            call.name = piece.name
        call.arguments += piece.arguments

    def tool_call(self, index: int) -> ToolCall:
        return self.tool_calls_by_index[index]

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [self.tool_calls_by_index[index] for index in sorted(self.tool_calls_by_index)]

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def thinking(self) -> str:
        return "".join(self.thinking_parts)
