"""OpenAI Responses requests (`POST /v1/responses`) → the canonical chat every engine answers.

A Responses request is a chat in other words: `instructions` is the system message, `input` a string
(one user turn) or a list of items (messages, the model's earlier `function_call`s and the caller's
`function_call_output`s), `tools` are flat function definitions, `text.format` the structured output,
`reasoning.effort` the thinking switch and `max_output_tokens` the cap. A stored conversation named by
`previous_response_id` is read by the gateway (addons/responses.py) and comes in as `history`: items
in the same shape, placed after the instructions and before this request's input, as OpenAI does
(earlier instructions are not carried over).
"""

from __future__ import annotations

from translators import ollama_request, openai_request
from translators.canonical import (
    CHAT,
    OLLAMA_ENGINE,
    CanonicalRequest,
    Image,
    Message,
    ResponseFormat,
    ToolCall,
)
from translators.errors import OPENAI, GatewayError
from translators.mapping import ANSWERED, DROPPED, MAPPED, REJECTED, FieldRule
from translators.request_body import (
    invalid_value,
    missing,
    optional_bool,
    optional_dict,
    optional_list,
    optional_str,
    parse_tools,
    required_str,
    wrong_type,
)
from translators.sampling import check_max_tokens, read_openai_sampling
from translators.structured import check_schema

ENDPOINT = "/v1/responses"
MESSAGE_ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text", "text", "refusal")
# What each field of a Responses request becomes (docs/translation.md is rendered from this table).
RESPONSES_FIELDS = (
    FieldRule("model", (ENDPOINT,), MAPPED, "`model` (an admin's alias resolves to the model it names)"),
    FieldRule("input", (ENDPOINT,), MAPPED,
              "chat messages: a string is one user turn; `message` items (`input_text`, `output_text`, "
              "`input_image`) → messages, `function_call` → the assistant's tool calls, `function_call_output` "
              "→ a `tool` message; `reasoning` items are dropped (chat templates drop earlier reasoning)"),
    FieldRule("instructions", (ENDPOINT,), MAPPED, "a first `system` message (not carried over to later turns)"),
    FieldRule("previous_response_id", (ENDPOINT,), ANSWERED,
              "the stored conversation of that response (its owner's alone, else 404) goes before `input`"),
    FieldRule("store", (ENDPOINT,), ANSWERED,
              "unless false, the answer is kept for `GET /v1/responses/{id}` and later turns, pruned with the audit log"),
    FieldRule("max_output_tokens", (ENDPOINT,), MAPPED, "`max_tokens` (vLLM) / `options.num_predict` (Ollama)"),
    FieldRule("temperature", (ENDPOINT,), MAPPED, "`temperature` / `options.temperature`"),
    FieldRule("top_p", (ENDPOINT,), MAPPED, "`top_p` / `options.top_p`"),
    FieldRule("stream", (ENDPOINT,), MAPPED,
              "`stream`; the engine's stream becomes Responses events (`response.created`, `response.in_progress`, "
              "`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`, "
              "reasoning and function-call deltas, the `.done` events, `response.completed` with usage)"),
    FieldRule("tools", (ENDPOINT,), MAPPED, "function tools → chat `tools`; hosted tools (web search, file search, "
                                            "computer use, MCP ...) are refused"),
    FieldRule("tool_choice", (ENDPOINT,), MAPPED, "`auto`, `none`, `required` or a named function"),
    FieldRule("text", (ENDPOINT,), MAPPED, "`format` (`json_schema`, `json_object`) → structured output, validated "
                                           "like chat's"),
    FieldRule("reasoning", (ENDPOINT,), MAPPED, "`effort` → thinking, as chat's `reasoning_effort`"),
    FieldRule("metadata", (ENDPOINT,), DROPPED, "echoed in the response, never sent to an engine"),
    FieldRule("user", (ENDPOINT,), DROPPED, "echoed in the response; the gateway knows the user from the API key"),
    FieldRule("background", (ENDPOINT,), REJECTED, "background responses are not served: ask without it"),
    FieldRule("conversation", (ENDPOINT,), REJECTED,
              "conversation objects are not served: chain turns with previous_response_id"),
    FieldRule("prompt", (ENDPOINT,), REJECTED,
              "stored prompt templates are not served: send the instructions and input themselves"),
)


def parse_request(endpoint: str, kind: str, body: dict) -> CanonicalRequest:
    for rule in RESPONSES_FIELDS:
        if rule.treatment == REJECTED and body.get(rule.field) not in (None, False):
            raise GatewayError(400, f"'{rule.field}' is not accepted on {ENDPOINT}: {rule.becomes}", code="unsupported")
    req = CanonicalRequest(
        client_dialect=OPENAI,
        client_endpoint=endpoint,
        kind=CHAT,
        model=required_str(body, "model"),
        stream=optional_bool(body, "stream", False),
        body=body,
    )
    if body.get("input") is None:
        raise missing("input")
    optional_str(body, "previous_response_id")
    req.sampling = read_openai_sampling(
        {"temperature": body.get("temperature"), "top_p": body.get("top_p"), "max_tokens": body.get("max_output_tokens")}
    )
    check_max_tokens(req.sampling, "max_output_tokens")
    req.response_format = parse_text_format(body)
    req.think = parse_reasoning(body)
    req.tools = parse_function_tools(body)
    req.tool_choice = parse_tool_choice(body.get("tool_choice"))
    req.messages = conversation(body, [])
    return req


def build_request(req: CanonicalRequest, engine: str, path: str, request_id: str) -> tuple[dict, list[str]]:
    """The engine body: the chat the other codecs write, with the tool choice vLLM can honour."""
    if engine == OLLAMA_ENGINE:
        return ollama_request.build_request(req)  # Ollama cannot force a call: its codec says so in a note
    body, notes = openai_request.build_request(req, path, request_id)
    if req.tools and req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    if req.tools and req.body.get("parallel_tool_calls") is False:
        body["parallel_tool_calls"] = False
    return body, notes


def conversation(body: dict, history: list) -> list[Message]:
    """The chat: instructions, then the stored conversation, then this request's input."""
    instructions = optional_str(body, "instructions")
    messages = [Message(role="system", content=instructions)] if instructions else []
    messages.extend(parse_items(history, "previous_response_id"))
    messages.extend(parse_items(input_items(body), "input"))
    if not any(message.role != "system" for message in messages):
        raise invalid_value("input", "must contain at least one message")
    return messages


def with_history(req: CanonicalRequest, history: list) -> None:
    """Put a stored conversation (items, as `stored_items` wrote them) before this request's input."""
    req.messages = conversation(req.body, history)


def input_items(body: dict) -> list:
    """`input` as items: a string is one user message."""
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise wrong_type("input", "a string or an array of input items", value)
    return value


def parse_items(items: list, where: str) -> list[Message]:
    messages: list[Message] = []
    tool_names: dict[str, str] = {}
    for index, item in enumerate(items):
        item_where = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise wrong_type(item_where, "an object", item)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(parse_message(item, item_where))
        elif kind == "function_call":
            call = ToolCall(
                id=required_str(item, "call_id", f"{item_where}.call_id"),
                name=required_str(item, "name", f"{item_where}.name"),
                arguments=optional_str(item, "arguments", f"{item_where}.arguments") or "{}",
            )
            tool_names[call.id] = call.name
            if messages and messages[-1].role == "assistant":  # one assistant turn: its text and its calls
                messages[-1].tool_calls.append(call)
            else:
                messages.append(Message(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            call_id = required_str(item, "call_id", f"{item_where}.call_id")
            output, _ = text_and_images(item.get("output"), f"{item_where}.output")
            messages.append(Message(role="tool", content=output, tool_call_id=call_id, tool_name=tool_names.get(call_id)))
        elif kind == "reasoning":
            continue  # earlier reasoning: chat templates drop it, as they drop reasoning_content
        else:
            raise GatewayError(
                400, f"'{item_where}' is an item of type {kind!r}; the gateway accepts message, function_call, "
                     "function_call_output and reasoning items", code="unsupported_input_item")
    return messages


def parse_message(item: dict, where: str) -> Message:
    role = required_str(item, "role", f"{where}.role")
    if role not in MESSAGE_ROLES:
        raise invalid_value(f"{where}.role", f"must be one of {', '.join(MESSAGE_ROLES)}, not '{role}'")
    text, images = text_and_images(item.get("content"), f"{where}.content")
    return Message(role="system" if role == "developer" else role, content=text, images=images)


def text_and_images(content: object, where: str) -> tuple[str, list[Image]]:
    """A string or a list of content parts → (text parts joined by newlines, images)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise wrong_type(where, "a string or an array of content parts", content)
    texts: list[str] = []
    images: list[Image] = []
    for index, part in enumerate(content):
        part_where = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise wrong_type(part_where, "an object", part)
        kind = part.get("type")
        if kind in TEXT_PARTS:
            text = part.get("text", part.get("refusal")) or ""
            if not isinstance(text, str):
                raise wrong_type(f"{part_where}.text", "a string", text)
            texts.append(text)
        elif kind == "input_image":
            if part.get("file_id") is not None:
                raise invalid_value(f"{part_where}.file_id", "uploaded files are not served: send image_url")
            images.append(openai_request.parse_image_part({"image_url": part.get("image_url")}, f"{part_where}"))
        else:
            raise GatewayError(
                400, f"'{part_where}' is a content part of type {kind!r}; the gateway accepts input_text, "
                     "output_text and input_image", code="unsupported_content_part")
    return "\n".join(texts), images


def parse_text_format(body: dict) -> ResponseFormat | None:
    spec = optional_dict(optional_dict(body, "text"), "format", "text.format")
    kind = spec.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind != "json_schema":
        raise invalid_value("text.format.type", f"must be text, json_object or json_schema, not {kind!r}")
    schema = spec.get("schema")
    if schema is None:
        raise missing("text.format.schema")
    if not isinstance(schema, dict):
        raise wrong_type("text.format.schema", "an object", schema)
    check_schema(schema, "text.format.schema")
    return ResponseFormat(
        "json_schema", schema,
        name=optional_str(spec, "name", "text.format.name") or "response",
        strict=bool(optional_bool(spec, "strict", False, "text.format.strict")),
    )


def parse_reasoning(body: dict) -> bool | str | None:
    effort = optional_str(optional_dict(body, "reasoning"), "effort", "reasoning.effort")
    if effort is None:
        return None
    if effort not in openai_request.THINK_FOR_REASONING_EFFORT:
        raise invalid_value("reasoning.effort", f"must be one of {', '.join(openai_request.THINK_FOR_REASONING_EFFORT)}, "
                                              f"not {effort!r}")
    return openai_request.THINK_FOR_REASONING_EFFORT[effort]


def parse_function_tools(body: dict) -> list[dict]:
    """Responses' flat function tools → chat's `{"type": "function", "function": {...}}`; hosted tools
    (web search, file search, computer use ...) have no engine behind them and are refused."""
    chat_tools = []
    for index, tool in enumerate(optional_list(body, "tools")):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise GatewayError(
                400, f"'tools[{index}]' is a tool of type {kind!r}; the gateway serves function tools only",
                code="unsupported_tool")
        function = {"name": required_str(tool, "name", f"tools[{index}].name")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        chat_tools.append({"type": "function", "function": function})
    return parse_tools({"tools": chat_tools})


def parse_tool_choice(choice: object) -> str | dict | None:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": required_str(choice, "name", "tool_choice.name")}}
    raise invalid_value("tool_choice", 'must be "auto", "none", "required" or {"type": "function", "name": ...}')
