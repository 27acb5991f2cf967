"""Anthropic's Messages API as the simulated engines serve it: vLLM's (`/v1/messages`, `/v1/messages/count_tokens`)
and, below it, Ollama's (`/v1/messages`, from Ollama 0.14).

As vLLM does it (vllm/entrypoints/anthropic/serving.py): the Message becomes a chat request (system
text blocks joined, images as `image_url` parts, `tool_use` → tool calls, a user turn's `tool_result`
→ a `tool` message, `thinking` → the assistant's reasoning, tools → function tools with
`tool_choice` "auto" by default, `output_config.format` → a json_schema response format), the chat
runs, and its answer comes back as a Message. A stream is named SSE events: `message_start` (with the
input count), per content block `content_block_start`, its deltas (a thinking block ends with a
`signature_delta`) and `content_block_stop`, then `message_delta` (stop reason, input and output
counts) and `message_stop`; vLLM sends no `ping`. `thinking` becomes a thinking-token budget (this node
stands for a vLLM with a reasoning parser, so it takes one); the chat template's own thinking switch is
`chat_template_kwargs`, as on the chat. Errors of the chat handler come back as
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
MIN_THINKING_BUDGET = 1024


def chat_body(body: dict) -> dict:
    """The chat request vLLM runs for a Message (or a count: no sampling, no stream)."""
    messages = system_messages(body)
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


def system_messages(body: dict) -> list[dict]:
    """Both engines make `system` one system message, its text blocks joined as they are."""
    system = body.get("system")
    if isinstance(system, list):
        system = "".join(block.get("text", "") for block in system if block.get("type") == "text")
    return [{"role": "system", "content": system}] if system else []


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
    """Both engines write compact JSON (pydantic's model_dump_json, Go's json.Marshal)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Invalid(Exception):
    """A body vLLM's request validation refuses: answered OpenAI-shaped, as vLLM's app answers it on every route."""


def validation_error(message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}},
                             status=400)


def answering_errors(handler):
    """Validation failures as vLLM's app answers them; what the chat handler refuses, Anthropic-shaped."""

    async def answering(api: MessagesApi, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(api, request)
        except Invalid as invalid:
            return validation_error(str(invalid))
        except BadRequest as refused:
            return anthropic_error(refused.status, refused.message)

    return answering


class MessagesApi:
    def __init__(self, node) -> None:
        self.node = node  # the VllmNode: its chat plan, its slots, its errors

    @staticmethod
    async def read(request: web.Request, counting: bool) -> dict:
        body = await json_body(request)
        if body is None:
            raise Invalid("the request body must be a JSON object")
        for field in ("model", "messages") if counting else ("model", "messages", "max_tokens"):
            if body.get(field) is None:
                raise Invalid(f"{field}: Field required")
        thinking = body.get("thinking") or {}
        budget = thinking.get("budget_tokens")
        if thinking.get("type") == "enabled" and not (isinstance(budget, int) and budget >= MIN_THINKING_BUDGET):
            raise Invalid(f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}")
        if thinking.get("type") == "enabled" and not counting and budget >= body["max_tokens"]:
            raise Invalid("Value error, thinking.budget_tokens must be less than max_tokens")
        return body

    @answering_errors
    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        count = self.node.count_chat_tokens(chat_body(await self.read(request, counting=True)))
        return web.json_response({"input_tokens": count, "context_management": {"original_input_tokens": count}})

    @answering_errors
    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await self.read(request, counting=False)
        plan = self.node.plan_chat(chat_body(body))
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
        # (what opens a block, the deltas it carries)
        blocks: list[tuple[dict, list[dict]]] = []
        if completion.reasoning_pieces:
            blocks.append(({"type": "thinking", "thinking": ""},
                           [{"type": "thinking_delta", "thinking": piece} for piece in completion.reasoning_pieces]))
        if completion.content_pieces and not completion.tool_call:
            blocks.append(({"type": "text", "text": ""},
                           [{"type": "text_delta", "text": piece} for piece in completion.content_pieces]))
        if completion.tool_call:
            call = completion.tool_call
            blocks.append(({"type": "tool_use", "id": plan.tool_call_id, "name": call.name, "input": {}},
                           [{"type": "input_json_delta", "partial_json": piece} for piece in call.argument_pieces]))
        async with self.node.generating(plan.model, plan.prompt_tokens) as run:
            await out.send(named_event("message_start", {"type": "message_start", "message": {
                "id": message_id, "type": "message", "role": "assistant", "content": [], "model": body["model"],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": 0}}}))
            for index, (opening, deltas) in enumerate(blocks):
                await out.send(named_event("content_block_start",
                                           {"type": "content_block_start", "index": index, "content_block": opening}))
                for delta in deltas:
                    await run.tokens(1)
                    await out.send(named_event("content_block_delta",
                                               {"type": "content_block_delta", "index": index, "delta": delta}))
                if opening["type"] == "thinking":
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


# -- Ollama ------------------------------------------------------------------------------------------
#
# As Ollama does it (anthropic/anthropic.go): the Message becomes an /api/chat request (system text blocks
# joined; per turn the text blocks joined, base64 images only, `tool_use` → tool calls, `thinking` → the
# message's thinking, and a user turn's `tool_result`s first, as `tool` messages; `max_tokens` →
# `num_predict`; `thinking` enabled or disabled → `think`, else `output_config.effort` → `think`), the chat
# runs, and each of its NDJSON objects becomes Message events: `message_start` (the input count estimated
# as a quarter of the characters until the engine has counted), blocks opened and closed as the answer
# moves from thinking to text to tool calls (each call's input in one `input_json_delta`, no signatures),
# then `message_delta` with the engine's counts and `message_stop`; no `ping`. Errors are Anthropic's
# types by status, with a `request_id`. Its count_tokens is that estimate, so the gateway never uses it.

OLLAMA_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
OLLAMA_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                      404: "not_found_error", 429: "rate_limit_error", 503: "overloaded_error"}


def ollama_error(status: int, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": OLLAMA_ERROR_TYPES.get(status, "api_error"),
                                                         "message": message},
                              "request_id": f"req_{uuid.uuid4().hex[:24]}"}, status=status)


def ollama_chat_body(body: dict) -> dict:
    messages = system_messages(body)
    for message in body.get("messages") or []:
        messages.extend(ollama_messages(message))
    options = {"num_predict": body.get("max_tokens") or 0}
    for field, option in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                          ("stop_sequences", "stop")):
        if body.get(field):
            options[option] = body[field]
    chat = {"model": body.get("model"), "messages": messages, "options": options, "stream": bool(body.get("stream"))}
    if body.get("tools"):
        chat["tools"] = [{"type": "function", "function": {"name": tool.get("name"), "description": tool.get("description", ""),
                                                           "parameters": tool.get("input_schema") or {}}}
                         for tool in body["tools"]]
    thinking = (body.get("thinking") or {}).get("type")
    effort = str((body.get("output_config") or {}).get("effort") or "").strip().lower().replace("xhigh", "high")
    if thinking in ("enabled", "disabled"):
        chat["think"] = thinking == "enabled"
    elif effort in ("high", "medium", "low", "max"):
        chat["think"] = effort
    return chat


def ollama_messages(message: dict) -> list[dict]:
    """One Anthropic turn → Ollama chat messages; ValueError for an image that is not base64."""
    role, content = str(message.get("role", "")).lower(), message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    text, images, calls, thinking, results = "", [], [], "", []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            text += block.get("text") or ""
        elif kind == "image":
            images.append(base64_image(block.get("source") or {}))
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "function": {"name": block.get("name"), "arguments": block.get("input") or {}}})
        elif kind == "tool_result":
            result_text, result_images = ollama_tool_result(block.get("content"))
            results.append({"role": "tool", "content": result_text, "images": result_images or None,
                            "tool_call_id": block.get("tool_use_id")})
        elif kind == "thinking":
            thinking = block.get("thinking") or ""
    out = results if role == "user" else []
    if text or images or calls or thinking:
        out.append({"role": role, "content": text, "images": images or None, "tool_calls": calls or None,
                    "thinking": thinking or None})
    return out + ([] if role == "user" else results)


def base64_image(source: dict) -> str:
    if source.get("type") != "base64":
        raise ValueError(f"invalid image source type: {source.get('type')}. Only base64 images are supported.")
    return source.get("data", "")


def ollama_tool_result(content: object) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    texts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
    images = [base64_image(part.get("source") or {}) for part in content if isinstance(part, dict) and part.get("type") == "image"]
    return "".join(texts), images


def estimated_input_tokens(body: dict) -> int:
    """Ollama's stand-in count before the engine has counted: a quarter of the characters."""
    characters = len(json.dumps(body.get("system") or "")) + sum(
        len(message.get("role", "")) + len(json.dumps(message.get("content"))) for message in body.get("messages") or [])
    return max(characters // 4, 1)


class OllamaMessageFrames:
    """Writes each of the chat's answer objects as Message events (or the whole answer as a Message)."""

    def __init__(self, model: str, estimated_input: int) -> None:
        self.message_id = f"msg_{uuid.uuid4().hex[:24]}"
        self.model, self.estimated_input = model, estimated_input
        self.out: ChunkStream | None = None
        self.started = self.thinking_open = self.thinking_done = self.text_open = False
        self.index = 0
        self.calls_sent = 0

    async def whole(self, request: web.Request, answer: dict) -> web.StreamResponse:
        message = answer.get("message") or {}
        content: list[dict] = []
        if message.get("thinking"):
            content.append({"type": "thinking", "thinking": message["thinking"]})
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        calls = [self.tool_use(call) for call in message.get("tool_calls") or []]
        return await send_json(request, {
            "id": self.message_id, "type": "message", "role": "assistant", "model": answer.get("model"),
            "content": content + calls, "stop_reason": self.stop_reason(answer.get("done_reason"), bool(calls)),
            "usage": {"input_tokens": answer.get("prompt_eval_count", 0), "output_tokens": answer.get("eval_count", 0)}})

    async def open(self, request: web.Request) -> None:
        self.out = ChunkStream(request, "text/event-stream")
        await self.out.open()

    async def send(self, answer: dict) -> None:
        for kind, data in self.events(answer):
            await self.out.send(named_event(kind, data), finishing=kind == "message_delta")

    async def close(self) -> web.StreamResponse:
        return await self.out.close()

    @staticmethod
    def tool_use(call: dict) -> dict:
        return {"type": "tool_use", "id": call.get("id") or f"call_{uuid.uuid4().hex[:8]}",
                "name": call["function"]["name"], "input": call["function"].get("arguments") or {}}

    @staticmethod
    def stop_reason(done_reason: str | None, called: bool) -> str:
        return "tool_use" if called else OLLAMA_STOP_REASONS.get(done_reason or "", "stop_sequence")

    def events(self, answer: dict) -> list[tuple[str, dict]]:
        message = answer.get("message") or {}
        events: list[tuple[str, dict]] = []
        if not self.started:
            self.started = True
            events.append(("message_start", {"type": "message_start", "message": {
                "id": self.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                "usage": {"input_tokens": answer.get("prompt_eval_count") or self.estimated_input, "output_tokens": 0}}}))
        if message.get("thinking") and not self.thinking_done:
            if not self.thinking_open:
                self.thinking_open = True
                events.append(self.start({"type": "thinking", "thinking": ""}))
            events.append(self.delta({"type": "thinking_delta", "thinking": message["thinking"]}))
        if message.get("content"):
            events.extend(self.close_thinking())
            if not self.text_open:
                self.text_open = True
                events.append(self.start({"type": "text", "text": ""}))
            events.append(self.delta({"type": "text_delta", "text": message["content"]}))
        for call in message.get("tool_calls") or []:
            events.extend(self.close_thinking())
            if self.text_open:
                events.append(self.stop())
                self.text_open = False
            block = self.tool_use(call)
            events.append(self.start({**block, "input": {}}))
            events.append(self.delta({"type": "input_json_delta", "partial_json": json.dumps(block["input"], separators=(",", ":"))}))
            events.append(self.stop())
            self.calls_sent += 1
        if answer.get("done"):
            if self.text_open or (self.thinking_open and not self.thinking_done):
                events.append(("content_block_stop", {"type": "content_block_stop", "index": self.index}))
            events.append(("message_delta", {
                "type": "message_delta", "delta": {"stop_reason": self.stop_reason(answer.get("done_reason"), self.calls_sent > 0)},
                "usage": {"input_tokens": answer.get("prompt_eval_count", 0), "output_tokens": answer.get("eval_count", 0)}}))
            events.append(("message_stop", {"type": "message_stop"}))
        return events

    def start(self, block: dict) -> tuple[str, dict]:
        return "content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}

    def delta(self, delta: dict) -> tuple[str, dict]:
        return "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}

    def stop(self) -> tuple[str, dict]:
        """Closes the open block; the next one takes the next index."""
        self.index += 1
        return "content_block_stop", {"type": "content_block_stop", "index": self.index - 1}

    def close_thinking(self) -> list[tuple[str, dict]]:
        if not self.thinking_open or self.thinking_done:
            return []
        self.thinking_done = True
        return [self.stop()]


class OllamaMessagesApi:
    def __init__(self, node) -> None:
        self.node = node  # the OllamaNode: its chat

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        if body is None:
            return ollama_error(400, "invalid request: the body must be a JSON object")
        try:
            chat = ollama_chat_body(body)
        except ValueError as error:
            return ollama_error(400, str(error))
        frames = OllamaMessageFrames(str(body.get("model")), estimated_input_tokens(body))
        answer = await self.node.run_chat(request, chat, frames)
        if isinstance(answer, web.Response) and answer.status >= 400:  # the chat refused: Anthropic's shape
            return ollama_error(answer.status, json.loads(answer.body)["error"])
        return answer
