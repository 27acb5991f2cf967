"""Anthropic Messages dialect requests (`/v1/messages`, `/v1/messages/count_tokens`): client body → canonical.

An engine that serves the Messages API itself (vLLM's `/v1/messages` and `/v1/messages/count_tokens`,
Ollama's `/v1/messages` from 0.14) gets the caller's body (`native_body`): its own translation to its
chat template is the one its other clients get. Every other engine gets a canonical chat, which the
OpenAI codec writes for vLLM and the Ollama codec for Ollama, like any chat that crosses dialects. A
translated count_tokens request is that same chat generating a single token, so its count is exactly
the `input_tokens` the same messages would report (the chat template and the tools included).

Anthropic answers every malformed body with 400 `invalid_request_error`, so the 422s the shared
field readers raise become 400 here.
"""

from __future__ import annotations

import dataclasses
import re

from translators import ollama_request, openai_request
from translators.canonical import (
    OLLAMA_ENGINE,
    VLLM_ENGINE,
    CanonicalRequest,
    Image,
    Message,
    ResponseFormat,
    ToolCall,
)
from translators.errors import ANTHROPIC, GatewayError
from translators.framing import dumps
from translators.mapping import DROPPED, MAPPED, REJECTED, SAMPLING_PARAMETERS, FieldRule, dropped_field_notes
from translators.request_body import (
    invalid_value,
    is_integer,
    missing,
    optional_bool,
    optional_dict,
    optional_list,
    optional_str,
    required_str,
    wrong_type,
)
from translators.sampling import read_value
from translators.structured import check_schema
from translators.vision import decode_base64_image, sniff_media_type

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
ENDPOINTS = (MESSAGES, COUNT_TOKENS)
# Anthropic's API versions are dates, the first 2023-01-01; its SDKs send newer ones as they come out, and
# the Messages wire format has stayed compatible, so any version date from the first on is honoured.
FIRST_API_VERSION = "2023-01-01"
API_VERSION_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}")
ROLES = ("user", "assistant")
MIN_THINKING_BUDGET = 1024  # Anthropic's minimum, which vLLM's Messages API checks too
# Anthropic's tool_choice types → OpenAI's (a named tool becomes {"type": "function", ...}).
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# canonical sampling name → Anthropic's field
SAMPLING_FIELDS = {"max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                   "stop": "stop_sequences"}

_MESSAGES_ONLY = (MESSAGES,)
_NO_ENGINE_FIELD = "neither engine has an equivalent"

ANTHROPIC_FIELDS = (
    FieldRule("model", ENDPOINTS, MAPPED, "`model`"),
    FieldRule("max_tokens", _MESSAGES_ONLY, MAPPED,
              "`max_tokens` (vLLM) / `options.num_predict` (Ollama); required, as Anthropic requires it"),
    FieldRule("system", ENDPOINTS, MAPPED, "a first `system` message (a string, or text blocks joined by newlines)"),
    FieldRule("messages", ENDPOINTS, MAPPED,
              "chat messages: `text` blocks joined, `image` blocks (base64 or URL, fetched by the gateway) → "
              "images, `tool_use` → tool calls, each `tool_result` → a `tool` message (before the rest of its "
              "turn), `thinking` → the assistant's reasoning; `redacted_thinking` is dropped"),
    FieldRule("stop_sequences", _MESSAGES_ONLY, MAPPED, "`stop` (vLLM) / `options.stop` (Ollama)"),
    FieldRule("temperature", _MESSAGES_ONLY, MAPPED, "`temperature` / `options.temperature`"),
    FieldRule("top_p", _MESSAGES_ONLY, MAPPED, "`top_p` / `options.top_p`"),
    FieldRule("top_k", _MESSAGES_ONLY, MAPPED, "`top_k` / `options.top_k`"),
    FieldRule("stream", _MESSAGES_ONLY, MAPPED,
              "`stream`; the engine's stream becomes Anthropic's events (`message_start`, `ping`, "
              "`content_block_start`/`_delta`/`_stop`, `message_delta` with usage, `message_stop`)"),
    FieldRule("tools", ENDPOINTS, MAPPED, "function `tools` (`input_schema` → `parameters`); server tools are refused"),
    FieldRule("tool_choice", ENDPOINTS, MAPPED,
              "`auto`, `any` → `required`, `tool` → a named function, `none`; `disable_parallel_tool_use` → "
              "`parallel_tool_calls: false` (vLLM); Ollama cannot force a call or hold back parallel ones "
              "(dropped there)"),
    FieldRule("thinking", ENDPOINTS, MAPPED,
              "`enabled` or `adaptive` → `chat_template_kwargs.enable_thinking` (vLLM) / `think` (Ollama); "
              "`budget_tokens` (at least 1024 and below `max_tokens`, as Anthropic requires) is not enforced"),
    FieldRule("output_config", _MESSAGES_ONLY, MAPPED,
              "`format` (json_schema) → structured output, validated like chat; `effort` is dropped"),
    FieldRule("metadata", _MESSAGES_ONLY, DROPPED, "the gateway knows the user from the API key"),
    FieldRule("service_tier", _MESSAGES_ONLY, DROPPED, "the gateway's fair queue decides"),
    FieldRule("container", ENDPOINTS, REJECTED, _NO_ENGINE_FIELD),
    FieldRule("mcp_servers", ENDPOINTS, REJECTED, "the gateway connects to no MCP server"),
    FieldRule("context_management", ENDPOINTS, REJECTED, _NO_ENGINE_FIELD),
)
KNOWN_FIELDS = frozenset(rule.field for rule in ANTHROPIC_FIELDS)


def parse_request(endpoint: str, kind: str, body: dict, api_version: str | None = None) -> CanonicalRequest:
    try:
        return read_request(endpoint, kind, body, api_version)
    except GatewayError as error:
        if error.status == 422:
            raise dataclasses.replace(error, status=400) from None
        raise


def read_request(endpoint: str, kind: str, body: dict, api_version: str | None) -> CanonicalRequest:
    if api_version is not None and not (API_VERSION_FORMAT.fullmatch(api_version) and api_version >= FIRST_API_VERSION):
        raise GatewayError(400, f"anthropic-version: {api_version!r} is not an API version (a date from "
                                f"{FIRST_API_VERSION} on, e.g. 2023-06-01)", code="invalid_version")
    for rule in ANTHROPIC_FIELDS:
        if rule.treatment == REJECTED and endpoint in rule.endpoints and body.get(rule.field) is not None:
            raise GatewayError(400, f"'{rule.field}' is not supported by the gateway: {rule.becomes}")
    req = CanonicalRequest(client_dialect=ANTHROPIC, client_endpoint=endpoint, kind=kind,
                           model=required_str(body, "model"), stream=False, body=body)
    req.sampling = read_sampling(body, counting=endpoint == COUNT_TOKENS)
    if endpoint == MESSAGES:
        req.stream = optional_bool(body, "stream", False)
        req.response_format = read_output_format(body)
    if body.get("messages") is None:
        raise missing("messages")
    system = read_system(body.get("system"))
    req.messages = ([Message("system", system)] if system else []) + read_messages(optional_list(body, "messages"))
    if not any(message.role != "system" for message in req.messages):
        raise invalid_value("messages", "must contain at least one message")
    req.tools = read_tools(optional_list(body, "tools"))
    req.tool_choice = read_tool_choice(optional_dict(body, "tool_choice"), req.tools)
    req.think = read_thinking(optional_dict(body, "thinking"), req.sampling.get("max_tokens") if endpoint == MESSAGES else None)
    return req


def read_sampling(body: dict, counting: bool) -> dict:
    by_name = {parameter.canonical: parameter for parameter in SAMPLING_PARAMETERS}
    sampling = {canonical: read_value(by_name[canonical], body[field], field)
                for canonical, field in SAMPLING_FIELDS.items() if body.get(field) is not None}
    if counting:  # one generated token: the engine reports the prompt's exact count with it
        return {"max_tokens": 1}
    if "max_tokens" not in sampling:
        raise missing("max_tokens")
    if sampling["max_tokens"] < 1:
        raise invalid_value("max_tokens", f"must be at least 1, not {sampling['max_tokens']}")
    return sampling


def read_output_format(body: dict) -> ResponseFormat | None:
    spec = optional_dict(optional_dict(body, "output_config"), "format", "output_config.format")
    if not spec:
        return None
    if spec.get("type") != "json_schema":
        raise invalid_value("output_config.format.type", "must be json_schema")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise wrong_type("output_config.format.schema", "an object", schema)
    check_schema(schema, "output_config.format.schema")
    return ResponseFormat("json_schema", schema)


def read_system(value: object) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise wrong_type("system", "a string or an array of text blocks", value)
    texts = []
    for index, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid_value(f"system[{index}]", "must be a text block")
        texts.append(text_of(block, f"system[{index}]"))
    return "\n".join(texts)


def text_of(block: dict, where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise wrong_type(f"{where}.text", "a string", text)
    return text


def read_messages(raw_messages: list) -> list[Message]:
    """Anthropic turns → chat messages. A user turn's `tool_result` blocks become `tool` messages ahead of
    the rest of the turn, where both OpenAI and Ollama expect the answers to the previous calls."""
    messages: list[Message] = []
    tool_names_by_id: dict[str, str] = {}
    for index, raw in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(raw, dict):
            raise wrong_type(where, "an object", raw)
        role = required_str(raw, "role", f"{where}.role")
        if role not in ROLES:
            raise invalid_value(f"{where}.role", f"must be user or assistant, not '{role}'")
        content = raw.get("content")
        if isinstance(content, str):
            messages.append(Message(role, content))
            continue
        if not isinstance(content, list):
            raise wrong_type(f"{where}.content", "a string or an array of content blocks", content)
        message = Message(role)
        texts, thinking = [], []
        for block_index, block in enumerate(content):
            block_where = f"{where}.content[{block_index}]"
            if not isinstance(block, dict):
                raise wrong_type(block_where, "an object", block)
            kind = block.get("type")
            if kind == "text":
                texts.append(text_of(block, block_where))
            elif kind == "image" and role == "user":
                message.images.append(read_image(optional_dict(block, "source", f"{block_where}.source"),
                                                 f"{block_where}.source"))
            elif kind == "tool_result" and role == "user":
                messages.append(read_tool_result(block, block_where, tool_names_by_id, message))
            elif kind == "tool_use" and role == "assistant":
                call = read_tool_use(block, block_where)
                tool_names_by_id[call.id] = call.name
                message.tool_calls.append(call)
            elif kind == "thinking" and role == "assistant":
                thinking.append(optional_str(block, "thinking", f"{block_where}.thinking") or "")
            elif kind == "redacted_thinking" and role == "assistant":
                continue  # opaque to every engine; clients send it back as they got it
            else:
                raise GatewayError(400, f"'{block_where}' is a content block of type {kind!r}, which the gateway "
                                        f"does not accept in a {role} turn", code="unsupported_content_block")
        message.content = "\n".join(texts)
        message.thinking = "".join(thinking) or None
        if message.content or message.images or message.tool_calls or message.thinking or role == "assistant":
            messages.append(message)
    return messages


def read_image(source: dict, where: str) -> Image:
    kind = source.get("type")
    if kind == "base64":
        media_type = required_str(source, "media_type", f"{where}.media_type")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise invalid_value(f"{where}.media_type", f"must be one of {', '.join(IMAGE_MEDIA_TYPES)}")
        data = decode_base64_image(required_str(source, "data", f"{where}.data"), f"{where}.data")
        return Image(data=data, media_type=media_type or sniff_media_type(data))
    if kind == "url":
        url = required_str(source, "url", f"{where}.url")
        if not url.startswith(("http://", "https://")):
            raise invalid_value(f"{where}.url", "must be an http(s) URL")
        return Image(data=None, url=url)
    raise invalid_value(f"{where}.type", f"must be base64 or url, not {kind!r}")


def read_tool_use(block: dict, where: str) -> ToolCall:
    arguments = block.get("input")
    if arguments is not None and not isinstance(arguments, dict):
        raise wrong_type(f"{where}.input", "an object", arguments)
    return ToolCall(id=required_str(block, "id", f"{where}.id"), name=required_str(block, "name", f"{where}.name"),
                    arguments=dumps(arguments or {}).decode())


def read_tool_result(block: dict, where: str, tool_names_by_id: dict[str, str], turn: Message) -> Message:
    """A `tool` message; images in the result travel with the rest of the user turn (`turn`)."""
    call_id = required_str(block, "tool_use_id", f"{where}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for index, part in enumerate(content):
            part_where = f"{where}.content[{index}]"
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(text_of(part, part_where))
            elif isinstance(part, dict) and part.get("type") == "image":
                turn.images.append(read_image(optional_dict(part, "source", f"{part_where}.source"),
                                              f"{part_where}.source"))
            else:
                raise invalid_value(part_where, "must be a text or image block")
    elif content is not None:
        raise wrong_type(f"{where}.content", "a string or an array of blocks", content)
    return Message("tool", "\n".join(texts), tool_call_id=call_id, tool_name=tool_names_by_id.get(call_id))


def read_tools(raw_tools: list) -> list[dict]:
    """Anthropic's client tools as OpenAI function tools, the canonical form both engine codecs write."""
    tools = []
    for index, tool in enumerate(raw_tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise wrong_type(where, "an object", tool)
        if tool.get("type") not in (None, "custom"):
            raise GatewayError(400, f"'{where}' is a server tool of type {tool['type']!r}; the gateway passes "
                                    "client tools (name, description, input_schema) only", code="unsupported_tool")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise wrong_type(f"{where}.input_schema", "an object", schema)
        function = {"name": required_str(tool, "name", f"{where}.name"), "parameters": schema}
        if (description := optional_str(tool, "description", f"{where}.description")) is not None:
            function["description"] = description
        tools.append({"type": "function", "function": function})
    return tools


def read_tool_choice(choice: dict, tools: list[dict]) -> str | dict | None:
    if not choice:
        return None
    kind = choice.get("type")
    if kind == "tool":
        name = required_str(choice, "name", "tool_choice.name")
        if name not in {tool["function"]["name"] for tool in tools}:
            raise invalid_value("tool_choice.name", f"names no tool in 'tools': {name!r}")
        return {"type": "function", "function": {"name": name}}
    if not isinstance(kind, str) or kind not in TOOL_CHOICES:
        raise invalid_value("tool_choice.type", f"must be auto, any, tool or none, not {kind!r}")
    return TOOL_CHOICES[kind]


def one_call_at_most(body: dict) -> bool:
    choice = body.get("tool_choice")
    return isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True


def read_thinking(thinking: dict, max_tokens: int | None) -> bool | None:
    """Anthropic's rules for a budget (vLLM's Messages API checks them too): at least 1024, below `max_tokens`."""
    if not thinking:
        return None
    kind = thinking.get("type")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not is_integer(budget) or budget < MIN_THINKING_BUDGET:
            raise invalid_value("thinking.budget_tokens", f"must be an integer of at least {MIN_THINKING_BUDGET}")
        if max_tokens is not None and budget >= max_tokens:
            raise invalid_value("thinking.budget_tokens", f"must be less than max_tokens ({max_tokens})")
        return True
    if kind == "adaptive":
        return True
    if kind == "disabled":
        return False
    raise invalid_value("thinking.type", f"must be enabled, adaptive or disabled, not {kind!r}")


def build_request(req: CanonicalRequest, engine: str, path: str, request_id: str) -> tuple[dict, list[str]]:
    """The engine body for a Messages request: the chat the other codecs write, and notes on what could
    not cross (theirs about the chat, ours about Anthropic's fields)."""
    notes = dropped_field_notes(req.body, ANTHROPIC_FIELDS, req.client_endpoint, engine)
    chat = dataclasses.replace(req, body={})  # the other codecs' field notes are about their own dialects
    if engine == OLLAMA_ENGINE:
        body, chat_notes = ollama_request.build_request(chat)
    else:
        body, chat_notes = openai_request.build_request(chat, path, request_id)
        if req.tools and req.tool_choice is not None:
            body["tool_choice"] = req.tool_choice
        if req.tools and one_call_at_most(req.body):
            body["parallel_tool_calls"] = False
    output_config = req.body.get("output_config")
    if isinstance(output_config, dict) and output_config.get("effort") is not None:
        notes.append(f"output_config.effort: dropped for {engine} (no engine reads an effort level)")
    return body, notes + chat_notes


def native_gap(req: CanonicalRequest, engine: str) -> str | None:
    """What this request asks that the engine's own Messages API would ignore (its chat does not): such a
    request is translated. Ollama's reads no output format and no `adaptive` thinking (anthropic/anthropic.go)."""
    if engine != OLLAMA_ENGINE:
        return None
    if req.response_format is not None:
        return "output_config.format"
    if (req.body.get("thinking") or {}).get("type") == "adaptive":
        return "adaptive thinking"
    return None


def native_body(req: CanonicalRequest, engine: str) -> tuple[dict, list[str]]:
    """The body for an engine that serves `req.client_endpoint` itself: the caller's fields the gateway
    maps (what it drops is dropped, with the same notes, as on the translated path), image URLs replaced
    by the bytes the gateway fetched and audited, and vLLM's chat template told about `thinking` (vLLM's
    Messages API makes it a thinking-token budget only, and leaves the template's own switch alone)."""
    notes = dropped_field_notes(req.body, ANTHROPIC_FIELDS, req.client_endpoint, engine)
    mapped = {rule.field for rule in ANTHROPIC_FIELDS if req.client_endpoint in rule.endpoints and rule.treatment == MAPPED}
    body = {field: value for field, value in req.body.items() if field in mapped and value is not None}
    body["model"] = req.model
    fetched = {image.url: image for image in req.images if image.url and image.data is not None}
    if fetched:
        body["messages"] = [with_images_inlined(message, fetched) for message in body["messages"]]
    if engine == VLLM_ENGINE and req.think is not None:
        body["chat_template_kwargs"] = {"enable_thinking": req.think}
    return body, notes


def with_images_inlined(message: dict, fetched: dict[str, Image]) -> dict:
    """`message` with each URL image source the gateway fetched as a base64 source (tool results' too)."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    return {**message, "content": [inline_block(block, fetched) for block in content]}


def inline_block(block: dict, fetched: dict[str, Image]) -> dict:
    if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
        return {**block, "content": [inline_block(part, fetched) for part in block["content"]]}
    source = block.get("source")
    if block.get("type") != "image" or source.get("type") != "url" or source.get("url") not in fetched:
        return block
    image = fetched[source["url"]]
    return {**block, "source": {"type": "base64", "media_type": image.media_type, "data": image.base64}}
