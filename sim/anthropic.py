"""vLLM's Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`) on the simulated vLLM node.

As vLLM does it (vllm/entrypoints/anthropic/serving.py): the Message becomes a chat request (system
text blocks joined, images as `image_url` parts, `tool_use` → tool calls, a user turn's `tool_result`
→ a `tool` message, `thinking` → the assistant's reasoning, tools → function tools with
`tool_choice` "auto" by default, `output_config.format` → a json_schema response format), the chat
runs, and its answer comes back as a Message. A stream is named SSE events: `message_start` (with the
input count), per content block `content_block_start`, its deltas (a thinking block ends with a
`signature_delta`) and `content_block_stop`, then `message_delta` (stop reason, input and output
counts) and `message_stop`; vLLM sends no `ping`. Errors of the chat handler come back as
`{"type": "error", "error": {"type", "message"}}` with the chat's status; a body that fails
validation gets the server-wide OpenAI-shaped 400, as in vLLM.
"""

from __future__ import annotations

import json
import uuid

from aiohttp import web

from sim.node import BadRequest, ChunkStream, json_body, send_json

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def chat_body(body: dict) -> dict:
    """The chat request vLLM runs for a Message (or a count: no sampling, no stream)."""
    messages: list[dict] = []
    system = body.get("system")
    if isinstance(system, list):
        system = "".join(block.get("text", "") for block in system if block.get("type") == "text")
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages") or []:
        messages.extend(chat_messages(message))
    chat = {"model": body.get("model"), "messages": messages}
    for field, chat_field in (("max_tokens", "max_tokens"), ("stop_sequences", "stop"), ("temperature", "temperature"),
                              ("top_p", "top_p"), ("top_k", "top_k"), ("chat_template_kwargs", "chat_template_kwargs")):
        if body.get(field) is not None:
            chat[chat_field] = body[field]
    schema = ((body.get("output_config") or {}).get("format") or {}).get("schema")
    if schema is not None:
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "json_schema", "schema": schema}}
    if body.get("tools"):
        chat["tools"] = [{"type": "function", "function": {"name": tool.get("name"), "description": tool.get("description"),
                                                           "parameters": tool.get("input_schema")}}
                         for tool in body["tools"]]
        chat["tool_choice"] = "auto"
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif isinstance(choice, dict) and choice.get("type") in TOOL_CHOICES:
        chat["tool_choice"] = TOOL_CHOICES[choice["type"]]
    return chat


def chat_messages(message: dict) -> list[dict]:
    """One Anthropic turn → chat messages: a user turn's tool results go first, as `tool` messages."""
    role, content = message.get("role"), message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    out: list[dict] = []
    parts: list[dict] = []
    chat: dict = {"role": role}
    for block in content or []:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": image_url(block.get("source") or {})}})
        elif kind == "thinking":
            chat["reasoning"] = chat.get("reasoning", "") + (block.get("thinking") or "")
        elif kind == "tool_use":
            chat.setdefault("tool_calls", []).append({
                "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}})
        elif kind == "tool_result" and role == "user":
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": tool_text(block)})
    if len(parts) == 1 and parts[0]["type"] == "text":
        chat["content"] = parts[0]["text"]
    elif parts:
        chat["content"] = parts
    if "content" in chat or role != "user":
        out.append(chat)
    return out


def image_url(source: dict) -> str:
    if source.get("type") == "url":
        return source.get("url", "")
    return f"data:{source.get('media_type', 'image/jpeg')};base64,{source.get('data', '')}"


def tool_text(block: dict) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content or ""


def named_event(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def validation_error(message: str) -> web.Response:
    """vLLM's server-wide answer to a body that fails validation (OpenAI-shaped, on every route)."""
    return web.json_response({"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}},
                             status=400)


class MessagesApi:
    def __init__(self, node) -> None:
        self.node = node  # the VllmNode: its chat plan, its slots, its errors

    async def read(self, request: web.Request, counting: bool) -> dict | web.Response:
        body = await json_body(request)
        if body is None:
            return validation_error("the request body must be a JSON object")
        for field in ("model", "messages") if counting else ("model", "messages", "max_tokens"):
            if body.get(field) is None:
                return validation_error(f"{field}: Field required")
        return body

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await self.read(request, counting=True)
        if isinstance(body, web.Response):
            return body
        try:
            count = self.node.count_chat_tokens(chat_body(body))
        except BadRequest as refused:
            return anthropic_error(refused.status, refused.message)
        return web.json_response({"input_tokens": count, "context_management": {"original_input_tokens": count}})

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await self.read(request, counting=False)
        if isinstance(body, web.Response):
            return body
        try:
            plan = self.node.plan_chat(chat_body(body))
        except BadRequest as refused:
            return anthropic_error(refused.status, refused.message)
        message_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.get("stream"):
            return await self.stream(request, body, plan, message_id)
        async with self.node.generating(plan.model, plan.prompt_tokens) as run:
            await run.tokens(plan.completion.completion_tokens)
            run.finish_reason = plan.finish_reason
        completion = plan.completion
        content: list[dict] = []
        if completion.reasoning:
            content.append({"type": "thinking", "thinking": completion.reasoning, "signature": uuid.uuid4().hex})
        if completion.content and not completion.tool_call:
            content.append({"type": "text", "text": completion.content})
        if completion.tool_call:
            content.append({"type": "tool_use", "id": plan.tool_call_id, "name": completion.tool_call.name,
                            "input": json.loads(completion.tool_call.arguments_json)})
        return await send_json(request, {
            "id": message_id, "type": "message", "role": "assistant", "content": content, "model": body["model"],
            "stop_reason": STOP_REASONS.get(plan.finish_reason, "end_turn"),
            "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": completion.completion_tokens}})

    async def stream(self, request: web.Request, body: dict, plan, message_id: str) -> web.StreamResponse:
        out = ChunkStream(request, "text/event-stream; charset=utf-8")
        await out.open()
        completion = plan.completion
        # (block type, what opens it, the deltas it carries)
        blocks: list[tuple[str, dict, list[dict]]] = []
        if completion.reasoning_pieces:
            blocks.append(("thinking", {"type": "thinking", "thinking": ""},
                           [{"type": "thinking_delta", "thinking": piece} for piece in completion.reasoning_pieces]))
        if completion.content_pieces and not completion.tool_call:
            blocks.append(("text", {"type": "text", "text": ""},
                           [{"type": "text_delta", "text": piece} for piece in completion.content_pieces]))
        if completion.tool_call:
            call = completion.tool_call
            blocks.append(("tool_use", {"type": "tool_use", "id": plan.tool_call_id, "name": call.name, "input": {}},
                           [{"type": "input_json_delta", "partial_json": piece} for piece in call.argument_pieces]))
        async with self.node.generating(plan.model, plan.prompt_tokens) as run:
            await out.send(named_event("message_start", {"type": "message_start", "message": {
                "id": message_id, "type": "message", "role": "assistant", "content": [], "model": body["model"],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": 0}}}))
            for index, (kind, opening, deltas) in enumerate(blocks):
                await out.send(named_event("content_block_start",
                                           {"type": "content_block_start", "index": index, "content_block": opening}))
                for delta in deltas:
                    await run.tokens(1)
                    await out.send(named_event("content_block_delta",
                                               {"type": "content_block_delta", "index": index, "delta": delta}))
                if kind == "thinking":
                    await out.send(named_event("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "signature_delta", "signature": uuid.uuid4().hex}}))
                await out.send(named_event("content_block_stop", {"type": "content_block_stop", "index": index}))
            if completion.tool_call:
                await run.tokens(1)  # the call's name
            run.finish_reason = plan.finish_reason
            await out.send(named_event("message_delta", {
                "type": "message_delta", "delta": {"stop_reason": STOP_REASONS.get(plan.finish_reason, "end_turn")},
                "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": run.generated}}), finishing=True)
            await out.send(named_event("message_stop", {"type": "message_stop"}))
        return await out.close()


def anthropic_error(status: int, message: str) -> web.Response:
    kinds = {400: "BadRequestError", 404: "NotFoundError"}
    return web.json_response({"type": "error", "error": {"type": kinds.get(status, "InternalServerError"),
                                                         "message": message}}, status=status)
