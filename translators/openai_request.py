"""OpenAI dialect requests (`/v1`), with vLLM's extensions: client body → canonical, canonical → vLLM body."""

from __future__ import annotations

import copy

from translators.canonical import (
    CHAT,
    EMBEDDING,
    CanonicalRequest,
    Image,
    Message,
    ResponseFormat,
    ToolCall,
    stable_tool_call_id,
)
from translators.errors import OPENAI, GatewayError
from translators.framing import dumps
from translators.mapping import ACCEPTED_CONTENT_PARTS, OLLAMA_FIELDS_FOR_VLLM, dropped_field_notes
from translators.request_body import (
    invalid_value,
    is_integer,
    missing,
    optional_bool,
    optional_dict,
    optional_int,
    optional_keep_alive,
    optional_list,
    optional_str,
    parse_tools,
    required_str,
    wrong_type,
)
from translators.sampling import (
    check_max_tokens,
    ollama_option_notes,
    read_openai_sampling,
    write_vllm_sampling,
)
from translators.structured import check_schema
from translators.vision import parse_data_url

ROLES = ("system", "developer", "user", "assistant", "tool")
# reasoning_effort → Ollama's think; other values stay in the body for vLLM.
THINK_FOR_REASONING_EFFORT = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
}
ENCODING_FORMATS = ("float", "base64")


def parse_request(endpoint: str, kind: str, body: dict) -> CanonicalRequest:
    req = CanonicalRequest(
        client_dialect=OPENAI,
        client_endpoint=endpoint,
        kind=kind,
        model=required_str(body, "model"),
        stream=False,
        body=body,
    )
    req.keep_alive = optional_keep_alive(body)
    if kind == EMBEDDING:
        parse_embedding_fields(req, body)
        return req
    req.stream = optional_bool(body, "stream", False)
    stream_options = optional_dict(body, "stream_options")
    req.include_usage = req.stream and optional_bool(
        stream_options, "include_usage", False, "stream_options.include_usage"
    )
    req.sampling = read_openai_sampling(body)
    check_max_tokens(req.sampling, "max_tokens")
    req.response_format = parse_response_format(body)
    req.think = parse_thinking(body)
    if kind == CHAT:
        if body.get("messages") is None:
            raise missing("messages")
        req.messages = parse_messages(optional_list(body, "messages"))
        if not req.messages:
            raise invalid_value("messages", "must contain at least one message")
        req.tools = parse_tools(body)
        req.tool_choice = body.get("tool_choice")
    else:
        req.prompt = parse_prompt(body)
        req.suffix = optional_str(body, "suffix")
    return req


def parse_embedding_fields(req: CanonicalRequest, body: dict) -> None:
    value = body.get("input")
    if value is None:
        raise missing("input")
    if isinstance(value, str):
        req.inputs = [value]
    elif (
        isinstance(value, list)
        and value
        and (
            all(isinstance(item, str) for item in value)
            or all(is_integer(item) for item in value)
            or all(isinstance(item, list) and all(is_integer(token) for token in item) for item in value)
        )
    ):
        req.inputs = [value] if is_integer(value[0]) else list(value)
    elif isinstance(value, list) and not value:
        raise invalid_value("input", "must not be empty")
    else:
        raise wrong_type("input", "a string, an array of strings or an array of token ids", value)
    req.encoding_format = optional_str(body, "encoding_format") or "float"
    if req.encoding_format not in ENCODING_FORMATS:
        raise invalid_value("encoding_format", f"must be float or base64, not '{req.encoding_format}'")
    req.dimensions = optional_int(body, "dimensions")


def parse_prompt(body: dict) -> str | list:
    value = body.get("prompt")
    if value is None:
        raise missing("prompt")
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(item, (str, list, int)) for item in value):
        return value
    raise wrong_type("prompt", "a string, an array of strings or token ids", value)


def parse_response_format(body: dict) -> ResponseFormat | None:
    spec = optional_dict(body, "response_format")
    if not spec:
        return None
    kind = required_str(spec, "type", "response_format.type")
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind != "json_schema":
        return None  # "text", or an engine-specific type (vLLM's structural_tag) left in the body
    json_schema = optional_dict(spec, "json_schema", "response_format.json_schema")
    schema = json_schema.get("schema")
    if schema is None:
        raise missing("response_format.json_schema.schema")
    if not isinstance(schema, dict):
        raise wrong_type("response_format.json_schema.schema", "an object", schema)
    check_schema(schema, "response_format.json_schema.schema")
    return ResponseFormat(
        "json_schema",
        schema,
        name=optional_str(json_schema, "name", "response_format.json_schema.name") or "response",
        strict=optional_bool(json_schema, "strict", False, "response_format.json_schema.strict"),
    )


def parse_thinking(body: dict) -> bool | str | None:
    """`reasoning_effort` (a level) or vLLM's `chat_template_kwargs.enable_thinking` → Ollama's `think`."""
    template_kwargs = optional_dict(body, "chat_template_kwargs")
    enabled = template_kwargs.get("enable_thinking")
    if enabled is not None and not isinstance(enabled, bool):
        raise wrong_type("chat_template_kwargs.enable_thinking", "a boolean", enabled)
    effort = optional_str(body, "reasoning_effort")
    if effort in THINK_FOR_REASONING_EFFORT and enabled is not False:
        return THINK_FOR_REASONING_EFFORT[effort]
    return enabled


def parse_messages(raw_messages: list) -> list[Message]:
    messages: list[Message] = []
    tool_names_by_id: dict[str, str] = {}
    for index, raw in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(raw, dict):
            raise wrong_type(where, "an object", raw)
        role = required_str(raw, "role", f"{where}.role")
        if role not in ROLES:
            raise invalid_value(f"{where}.role", f"must be one of {', '.join(ROLES)}, not '{role}'")
        text, images = parse_content(raw.get("content"), f"{where}.content")
        message = Message(role="system" if role == "developer" else role, content=text, images=images)
        thinking = raw.get("reasoning_content") or raw.get("reasoning")
        message.thinking = thinking if isinstance(thinking, str) else None
        message.tool_calls = parse_tool_calls(
            optional_list(raw, "tool_calls", f"{where}.tool_calls"), where, index
        )
        tool_names_by_id.update((call.id, call.name) for call in message.tool_calls)
        if role == "tool":
            message.tool_call_id = optional_str(raw, "tool_call_id", f"{where}.tool_call_id")
            message.tool_name = tool_names_by_id.get(message.tool_call_id or "") or optional_str(raw, "name")
        messages.append(message)
    return messages


def parse_content(content: object, where: str) -> tuple[str, list[Image]]:
    """A string or a list of parts → (text parts joined by newlines, images). Other part types are refused:
    vLLM would fetch `video_url`, `audio_url` or `file` parts itself."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise wrong_type(where, "a string or an array of content parts", content)
    texts: list[str] = []
    images: list[Image] = []
    for index, part in enumerate(content):
        if not isinstance(part, dict):
            raise wrong_type(f"{where}[{index}]", "an object", part)
        if part.get("type") == "text":
            text = part.get("text") or ""
            if not isinstance(text, str):
                raise wrong_type(f"{where}[{index}].text", "a string", text)
            texts.append(text)
        elif part.get("type") == "image_url":
            images.append(parse_image_part(part, f"{where}[{index}].image_url"))
        else:
            accepted = ", ".join(ACCEPTED_CONTENT_PARTS)
            raise GatewayError(
                400,
                f"'{where}[{index}]' is a content part of type {part.get('type')!r}; "
                f"the gateway accepts {accepted}",
                code="unsupported_content_part",
            )
    return "\n".join(texts), images


def parse_image_part(part: dict, where: str) -> Image:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise missing(f"{where}.url")
    if url.startswith("data:"):
        media_type, data = parse_data_url(url, f"{where}.url")
        return Image(data=data, media_type=media_type)
    if url.startswith(("http://", "https://")):
        return Image(data=None, url=url)
    raise invalid_value(f"{where}.url", "must be a data: URL or an http(s) URL")


def parse_tool_calls(raw_calls: list, where: str, message_index: int) -> list[ToolCall]:
    calls: list[ToolCall] = []
    for index, raw in enumerate(raw_calls):
        call_where = f"{where}.tool_calls[{index}]"
        if not isinstance(raw, dict):
            raise wrong_type(call_where, "an object", raw)
        function = optional_dict(raw, "function", f"{call_where}.function")
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            arguments = dumps(arguments).decode()
        elif arguments is not None and not isinstance(arguments, str):
            raise wrong_type(f"{call_where}.function.arguments", "a JSON string", arguments)
        calls.append(
            ToolCall(
                id=optional_str(raw, "id", f"{call_where}.id")
                or stable_tool_call_id(f"history-{message_index}", index),
                name=required_str(function, "name", f"{call_where}.function.name"),
                arguments=arguments or "{}",
            )
        )
    return calls


def passthrough_body(req: CanonicalRequest, request_id: str) -> dict:
    """The client's own body for vLLM: model as resolved, usage asked for in streams, fetched images inlined."""
    body = dict(req.body)
    body["model"] = req.model
    body["request_id"] = request_id  # the gateway's id always wins (the caller's is withheld)
    if req.stream and req.kind != EMBEDDING:
        body["stream_options"] = {**(req.body.get("stream_options") or {}), "include_usage": True}
    fetched = {image.url: image.data_url for image in req.images if image.url and image.data is not None}
    if fetched and isinstance(body.get("messages"), list):
        body["messages"] = [inline_fetched_images(message, fetched) for message in body["messages"]]
    return body


def inline_fetched_images(message: object, fetched: dict[str, str]) -> object:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    message = copy.deepcopy(message)
    for part in message["content"]:
        spec = part.get("image_url") if isinstance(part, dict) else None
        if isinstance(spec, dict) and spec.get("url") in fetched:
            spec["url"] = fetched[spec["url"]]
        elif isinstance(spec, str) and spec in fetched:
            part["image_url"] = {"url": fetched[spec]}
    return message


def build_request(req: CanonicalRequest, path: str, request_id: str) -> tuple[dict, list[str]]:
    """An Ollama client's canonical request → vLLM body, and notes on what could not cross."""
    notes = dropped_field_notes(req.body, OLLAMA_FIELDS_FOR_VLLM, req.client_endpoint, "vllm")
    body: dict = {"model": req.model, "request_id": request_id}
    if path == "/v1/embeddings":
        body["input"] = req.inputs
        body["encoding_format"] = "float"
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        return body, notes
    notes.extend(ollama_option_notes(req.engine_options))
    if path == "/v1/chat/completions":
        body["messages"] = [vllm_message(message) for message in generation_messages(req)]
        if any(message.thinking for message in req.messages):
            notes.append("messages.thinking: dropped for vllm (chat templates drop earlier reasoning)")
        if req.tools:
            body["tools"] = req.tools
        if req.think is not None:
            body["chat_template_kwargs"] = {"enable_thinking": req.think is not False}
            if isinstance(req.think, str):
                body["reasoning_effort"] = req.think
    else:
        body["prompt"] = req.prompt or ""
        if req.prompt_images:
            notes.append(
                "images: dropped for vllm (a raw prompt goes to /v1/completions, which takes no images)"
            )
        if req.think is not None:
            notes.append(
                "think: dropped for vllm (a raw prompt goes to /v1/completions, which has no thinking switch)"
            )
    body["stream"] = req.stream
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    write_vllm_sampling(req.sampling, body)
    if path == "/v1/completions":
        # vLLM's completions default to 16 tokens; Ollama's default is no limit.
        body.setdefault("max_tokens", None)
    if req.response_format is not None:
        body["response_format"] = vllm_response_format(req.response_format)
    return body, notes


def generation_messages(req: CanonicalRequest) -> list[Message]:
    """The chat an Ollama /api/generate request amounts to once its template is applied."""
    if req.kind == CHAT:
        return req.messages
    messages = [Message(role="system", content=req.system)] if req.system else []
    prompt = req.prompt if isinstance(req.prompt, str) else ""
    messages.append(Message(role="user", content=prompt, images=req.prompt_images))
    return messages


def vllm_message(message: Message) -> dict:
    content: str | list = message.content
    if message.images:
        content = [{"type": "text", "text": message.content}] if message.content else []
        content.extend(
            {"type": "image_url", "image_url": {"url": image.data_url}} for image in message.images
        )
    out: dict = {"role": message.role, "content": content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    return out


def vllm_response_format(response_format: ResponseFormat) -> dict:
    if response_format.type == "json_object":
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": response_format.name,
            "schema": response_format.schema,
            "strict": response_format.strict,
        },
    }
