"""An engine's chat answer as an OpenAI Response object, whole or as Responses stream events.

The output is a list of items: a `reasoning` item when the model thought, a `message` item with one
`output_text` part, and a `function_call` item per tool call. A stream opens with `response.created`
and `response.in_progress`, adds each item (`response.output_item.added`, its content part, its
deltas, then the matching `.done` events) and ends with `response.completed` (or
`response.incomplete` when the output was cut at `max_output_tokens`) carrying the whole response
with its usage. Every event has its `type` in the body and as the SSE `event:` name, and a
`sequence_number`. Shapes from OpenAI's API reference (Responses, "Streaming events").
"""

from __future__ import annotations

from translators.canonical import CanonicalRequest, ToolCall, Usage
from translators.events import Finished, StreamEnded, StreamState, TextDelta, ThinkingDelta, ToolCallDelta
from translators.framing import dumps
from translators.responses_request import input_items

COMPLETED, INCOMPLETE, IN_PROGRESS = "completed", "incomplete", "in_progress"


def usage_object(usage: Usage | None) -> dict | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def reasoning_item(response_id: str, thinking: str) -> dict:
    return {"id": f"rs_{response_id}", "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": thinking}], "status": COMPLETED}


def message_item(response_id: str, text: str, status: str = COMPLETED) -> dict:
    content = [text_part(text)] if status == COMPLETED else []
    return {"id": f"msg_{response_id}", "type": "message", "status": status, "role": "assistant", "content": content}


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(response_id: str, index: int, call: ToolCall, status: str = COMPLETED) -> dict:
    return {"id": f"fc_{response_id}_{index}", "type": "function_call", "status": status, "call_id": call.id,
            "name": call.name, "arguments": call.arguments if status == COMPLETED else ""}


def output_items(response_id: str, text: str, thinking: str, tool_calls: list[ToolCall]) -> list[dict]:
    items = [reasoning_item(response_id, thinking)] if thinking else []
    if text or not tool_calls:
        items.append(message_item(response_id, text))
    items.extend(function_call_item(response_id, index, call) for index, call in enumerate(tool_calls))
    return items


def response_object(req: CanonicalRequest, response_id: str, created: int, status: str, output: list[dict],
                    usage: Usage | None, finish_reason: str | None = None) -> dict:
    """The Response object; request fields echoed as OpenAI echoes them."""
    body = req.body
    if status == COMPLETED and finish_reason == "length":
        status = INCOMPLETE
    text_format = (body.get("text") or {}).get("format") or {"type": "text"}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == INCOMPLETE else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": req.requested_model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature"),
        "text": {"format": text_format},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "usage": usage_object(usage),
        "user": body.get("user"),
    }


def encode_response(req: CanonicalRequest, response, response_id: str, created: int) -> dict:
    """A whole answer (`CanonicalResponse`) as a Response object."""
    output = output_items(response_id, response.text, response.thinking, response.tool_calls)
    return response_object(req, response_id, created, COMPLETED, output, response.usage, response.finish_reason)


def stored_conversation(history: list, req: CanonicalRequest, output: list[dict]) -> list:
    """What a later `previous_response_id` continues from: the earlier turns, this input, this output."""
    return [*history, *input_items(req.body), *output]


def sse(event: dict) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + dumps(event) + b"\n\n"


class ResponsesStreamEncoder:
    """Canonical stream events → Responses events, each item opened, filled and closed in order."""

    def __init__(self, state: StreamState, req: CanonicalRequest, response_id: str, created: int):
        self.state, self.req, self.response_id, self.created = state, req, response_id, created
        self.sequence = 0
        self.started = False
        self.open_kind: str | None = None  # "reasoning" | "message" | "function_call"
        self.output: list[dict] = []  # the items closed so far, in order
        self.calls_open: dict[int, int] = {}  # tool call index → output index

    def encode(self, event: object) -> list[bytes]:
        out = [] if self.started else self._start()
        if isinstance(event, ThinkingDelta) and event.text:
            if self.open_kind != "reasoning":
                out += self._close() + self._open_reasoning()
            out.append(self._event("response.reasoning_text.delta", item_id=f"rs_{self.response_id}",
                                   output_index=len(self.output), content_index=0, delta=event.text))
        elif isinstance(event, TextDelta) and event.text:
            if self.open_kind != "message":
                out += self._close() + self._open_message()
            out.append(self._event("response.output_text.delta", item_id=f"msg_{self.response_id}",
                                   output_index=len(self.output), content_index=0, delta=event.text, logprobs=[]))
        elif isinstance(event, ToolCallDelta):
            if event.index not in self.calls_open:
                out += self._close() + self._open_call(event.index)
            if event.arguments:
                out.append(self._event("response.function_call_arguments.delta",
                                       item_id=f"fc_{self.response_id}_{event.index}",
                                       output_index=self.calls_open[event.index], delta=event.arguments))
        elif isinstance(event, StreamEnded):
            out += self._finish()
        elif isinstance(event, Finished):
            pass  # the reason shows in the final status
        return out

    def _event(self, kind: str, **fields) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(event)

    def _snapshot(self, status: str, usage: Usage | None = None) -> dict:
        return response_object(self.req, self.response_id, self.created, status, list(self.output), usage,
                               self.state.finish_reason)

    def _start(self) -> list[bytes]:
        self.started = True
        return [self._event("response.created", response=self._snapshot(IN_PROGRESS)),
                self._event("response.in_progress", response=self._snapshot(IN_PROGRESS))]

    def _open_reasoning(self) -> list[bytes]:
        self.open_kind = "reasoning"
        item = {**reasoning_item(self.response_id, ""), "content": [], "status": IN_PROGRESS}
        part = {"type": "reasoning_text", "text": ""}
        return [self._event("response.output_item.added", output_index=len(self.output), item=item),
                self._event("response.content_part.added", item_id=item["id"], output_index=len(self.output),
                            content_index=0, part=part)]

    def _open_message(self) -> list[bytes]:
        self.open_kind = "message"
        item = message_item(self.response_id, "", IN_PROGRESS)
        return [self._event("response.output_item.added", output_index=len(self.output), item=item),
                self._event("response.content_part.added", item_id=item["id"], output_index=len(self.output),
                            content_index=0, part=text_part(""))]

    def _open_call(self, index: int) -> list[bytes]:
        self.open_kind = "function_call"
        self.calls_open[index] = len(self.output)
        item = function_call_item(self.response_id, index, self.state.tool_call(index), IN_PROGRESS)
        return [self._event("response.output_item.added", output_index=len(self.output), item=item)]

    def _close(self) -> list[bytes]:
        """The `.done` events of the item being written, which joins the output."""
        kind, self.open_kind, index = self.open_kind, None, len(self.output)
        if kind == "reasoning":
            thinking = self.state.thinking
            item = reasoning_item(self.response_id, thinking)
            events = [self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=thinking),
                      self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                  content_index=0, part={"type": "reasoning_text", "text": thinking})]
        elif kind == "message":
            text = self.state.text
            item = message_item(self.response_id, text)
            events = [self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=text, logprobs=[]),
                      self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                  content_index=0, part=text_part(text))]
        elif kind == "function_call":
            call_index = next(i for i, output_index in self.calls_open.items() if output_index == index)
            item = function_call_item(self.response_id, call_index, self.state.tool_call(call_index))
            events = [self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  name=item["name"], arguments=item["arguments"])]
        else:
            return []
        self.output.append(item)
        return [*events, self._event("response.output_item.done", output_index=index, item=item)]

    def _finish(self) -> list[bytes]:
        out = self._close()
        if not self.output:  # the model said nothing at all: one empty message, as whole answers have
            out += self._open_message() + self._close()
        final = self._snapshot(COMPLETED, self.state.usage)
        kind = "response.incomplete" if final["status"] == INCOMPLETE else "response.completed"
        out.append(self._event(kind, response=final))
        return out
