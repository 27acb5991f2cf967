"""Ollama dialect requests (`/api`): client body → canonical, canonical → Ollama body."""

from __future__ import annotations

from translators.canonical import (
    CHAT,
    COMPLETION,
    EMBEDDING,
    CanonicalRequest,
    Image,
    Message,
    ResponseFormat,
    ToolCall,
    stable_tool_call_id,
)
from translators.errors import OLLAMA, GatewayError
from translators.framing import dumps
from translators.mapping import OPENAI_FIELDS_FOR_OLLAMA, OPENAI_SAMPLING_FIELDS, dropped_field_notes
from translators.request_body import (
    invalid_value,
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
from translators.sampling import check_max_tokens, read_ollama_options, write_ollama_options
from translators.structured import check_schema
from translators.vision import decode_base64_image, sniff_media_type

ROLES = ("system", "user", "assistant", "tool")
THINK_LEVELS = ("low", "medium", "high")
LEGACY_EMBEDDINGS = "/api/embeddings"


def parse_request(endpoint: str, kind: str, body: dict) -> CanonicalRequest:
    req = CanonicalRequest(
        client_dialect=OLLAMA,
        client_endpoint=endpoint,
        kind=kind,
        model=required_str(body, "model"),
        stream=False,
        body=body,
    )
    req.keep_alive = optional_keep_alive(body)
    req.sampling, req.engine_options = read_ollama_options(optional_dict(body, "options"))
    check_max_tokens(req.sampling, "options.num_predict")
    if kind == EMBEDDING:
        parse_embedding_fields(req, body)
        return req
    req.stream = optional_bool(body, "stream", True)
    req.response_format = parse_format(body)
    req.think = parse_think(body)
    if kind == CHAT:
        if body.get("messages") is None:
            raise missing("messages")
        req.messages = parse_messages(optional_list(body, "messages"))
        req.tools = parse_tools(body)
    else:
        req.prompt = optional_str(body, "prompt") or ""
        req.system = optional_str(body, "system")
        req.suffix = optional_str(body, "suffix")
        req.raw_prompt = optional_bool(body, "raw", False)
        req.prompt_images = parse_images(optional_list(body, "images"), "images")
    return req


def parse_embedding_fields(req: CanonicalRequest, body: dict) -> None:
    if req.client_endpoint == LEGACY_EMBEDDINGS:
        prompt = body.get("prompt")
        if prompt is None:
            raise missing("prompt")
        if not isinstance(prompt, str):
            raise wrong_type("prompt", "a string", prompt)
        req.inputs = [prompt]
        return
    value = body.get("input")
    if value is None:
        raise missing("input")
    if isinstance(value, str):
        req.inputs = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        if not value:
            raise invalid_value("input", "must not be empty")
        req.inputs = list(value)
    else:
        raise wrong_type("input", "a string or an array of strings", value)
    optional_bool(body, "truncate", True)
    req.dimensions = optional_int(body, "dimensions")


def parse_format(body: dict) -> ResponseFormat | None:
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return ResponseFormat("json_object")
    if isinstance(value, dict):
        check_schema(value, "format")
        return ResponseFormat("json_schema", value)
    raise invalid_value("format", f'must be "json" or a JSON schema, not {dumps(value).decode()}')


def parse_think(body: dict) -> bool | str | None:
    value = body.get("think")
    if value is None or isinstance(value, bool):
        return value
    if value in THINK_LEVELS:
        return value
    raise invalid_value("think", f"must be true, false or one of {', '.join(THINK_LEVELS)}")


def parse_images(values: list, where: str) -> list[Image]:
    images: list[Image] = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise wrong_type(f"{where}[{index}]", "a base64 string", value)
        data = decode_base64_image(value, f"{where}[{index}]")
        images.append(Image(data=data, media_type=sniff_media_type(data)))
    return images


def parse_messages(raw_messages: list) -> list[Message]:
    """Ollama messages → canonical. Tool calls get stable ids; a tool result gets the id of the oldest
    unanswered call with its `tool_name` (or simply the oldest unanswered call)."""
    messages: list[Message] = []
    unanswered: list[ToolCall] = []
    calls_seen = 0
    for index, raw in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(raw, dict):
            raise wrong_type(where, "an object", raw)
        role = required_str(raw, "role", f"{where}.role")
        if role not in ROLES:
            raise invalid_value(f"{where}.role", f"must be one of {', '.join(ROLES)}, not '{role}'")
        message = Message(
            role=role,
            content=optional_str(raw, "content", f"{where}.content") or "",
            images=parse_images(optional_list(raw, "images", f"{where}.images"), f"{where}.images"),
            thinking=optional_str(raw, "thinking", f"{where}.thinking"),
        )
        for call_index, raw_call in enumerate(optional_list(raw, "tool_calls", f"{where}.tool_calls")):
            call = parse_tool_call(raw_call, f"{where}.tool_calls[{call_index}]", calls_seen)
            calls_seen += 1
            message.tool_calls.append(call)
            unanswered.append(call)
        if role == "tool":
            message.tool_name = optional_str(raw, "tool_name", f"{where}.tool_name")
            answered = next((call for call in unanswered if call.name == message.tool_name), None)
            answered = answered or (unanswered[0] if unanswered else None)
            if answered is not None:
                unanswered.remove(answered)
            message.tool_call_id = answered.id if answered else stable_tool_call_id("history-result", index)
            message.tool_name = message.tool_name or (answered.name if answered else None)
        messages.append(message)
    return messages


def parse_tool_call(raw: object, where: str, position: int) -> ToolCall:
    if not isinstance(raw, dict):
        raise wrong_type(where, "an object", raw)
    function = optional_dict(raw, "function", f"{where}.function")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = {}
    if isinstance(arguments, dict):
        arguments = dumps(arguments).decode()
    elif not isinstance(arguments, str):
        raise wrong_type(f"{where}.function.arguments", "an object", arguments)
    return ToolCall(
        id=optional_str(raw, "id", f"{where}.id") or stable_tool_call_id("history", position),
        name=required_str(function, "name", f"{where}.function.name"),
        arguments=arguments,
    )


def passthrough_body(req: CanonicalRequest) -> dict:
    """The client's own body for Ollama: model as resolved, nulls dropped (Ollama rejects null options)."""
    body = {key: value for key, value in req.body.items() if value is not None}
    body["model"] = req.model
    if isinstance(body.get("options"), dict):
        body["options"] = {key: value for key, value in body["options"].items() if value is not None}
    return body


def legacy_embeddings_body(req: CanonicalRequest) -> dict:
    """/api/embeddings → /api/embed with one input: same vectors (normalized), and a prompt count."""
    body = {"model": req.model, "input": req.inputs}
    if req.body.get("options") is not None:
        body["options"] = req.body["options"]
    return body


def build_request(req: CanonicalRequest) -> tuple[dict, list[str]]:
    """An OpenAI client's canonical request → Ollama body, and notes on what could not cross."""
    notes = dropped_field_notes(
        req.body, OPENAI_FIELDS_FOR_OLLAMA, req.client_endpoint, "ollama", OPENAI_SAMPLING_FIELDS
    )
    reject_unsupported(req)
    body: dict = {"model": req.model}
    if req.kind == EMBEDDING:
        body["input"] = req.inputs
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
    elif req.kind == CHAT:
        body["messages"] = [ollama_message(message) for message in req.messages]
        notes.extend(add_tools(req, body))
    else:
        body["prompt"] = req.prompt[0] if isinstance(req.prompt, list) else req.prompt
        body["raw"] = True  # OpenAI completions continue the prompt as written, no chat template
        if req.suffix is not None:
            body["suffix"] = req.suffix
    if req.kind != EMBEDDING:
        body["stream"] = req.stream
        options = write_ollama_options(req.sampling, req.engine_options)
        if options:
            body["options"] = options
        if req.response_format is not None:
            body["format"] = (
                "json" if req.response_format.type == "json_object" else req.response_format.schema
            )
        if req.think is not None:
            body["think"] = req.think
        extra_kwargs = set(optional_dict(req.body, "chat_template_kwargs")) - {"enable_thinking"}
        notes.extend(
            f"chat_template_kwargs.{key}: dropped for ollama (not a thinking switch)" for key in extra_kwargs
        )
    return body, notes


def reject_unsupported(req: CanonicalRequest) -> None:
    """Requests Ollama cannot answer in the shape the client expects are refused, not half-answered."""
    if req.body.get("n") not in (None, 1):
        raise GatewayError(
            422, "'n' must be 1 for models served by Ollama (it returns one choice)", code="unsupported"
        )
    if req.kind == COMPLETION and not (
        isinstance(req.prompt, str) or (len(req.prompt) == 1 and isinstance(req.prompt[0], str))
    ):
        raise GatewayError(
            422,
            "'prompt' must be one string for models served by Ollama (no batches, no token ids)",
            code="unsupported",
        )
    if req.kind == EMBEDDING and not all(isinstance(item, str) for item in req.inputs):
        raise GatewayError(
            422, "'input' must be text for models served by Ollama (no token ids)", code="unsupported"
        )
    unfetched = req.image_urls_to_fetch()
    if unfetched:
        raise GatewayError(
            422,
            f"image {unfetched[0]} must be fetched before an Ollama backend can see it",
            code="image_not_fetched",
        )


def add_tools(req: CanonicalRequest, body: dict) -> list[str]:
    if not req.tools:
        return []
    if req.tool_choice == "none":
        return ['tools: not sent to ollama (tool_choice "none")']
    body["tools"] = req.tools
    if req.tool_choice in (None, "auto"):
        return []
    return ["tool_choice: dropped for ollama (Ollama cannot force a tool call)"]


def ollama_message(message: Message) -> dict:
    out: dict = {"role": message.role, "content": message.content}
    if message.images:
        out["images"] = [image.base64 for image in message.images]
    if message.thinking:
        out["thinking"] = message.thinking
    if message.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": call.name, "arguments": call.arguments_object()}}
            for call in message.tool_calls
        ]
    if message.role == "tool" and message.tool_name:
        out["tool_name"] = message.tool_name
    return out
