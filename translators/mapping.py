"""Dialects as data: which field becomes which, what passes through, what is dropped and why.

The codecs read these tables and `python -m translators.doc` renders them into
docs/translation.md, so the documentation cannot drift from the behaviour.

A request in the engine's own dialect (OpenAI client → vLLM, Ollama client → Ollama) passes through
whole, engine-specific fields included; these tables govern the crossings.
"""

from __future__ import annotations

from dataclasses import dataclass

from translators.canonical import (
    CHAT,
    COMPLETION,
    EMBEDDING,
    OLLAMA_ENGINE,
    RERANK,
    SCORE,
    TOKENIZE,
    VLLM_ENGINE,
)
from translators.errors import ANTHROPIC, OLLAMA, OPENAI

# Client paths the gateway translates: path → (dialect, kind).
CLIENT_ENDPOINTS = {
    "/v1/chat/completions": (OPENAI, CHAT),
    "/v1/completions": (OPENAI, COMPLETION),
    "/v1/embeddings": (OPENAI, EMBEDDING),
    "/v1/responses": (OPENAI, CHAT),  # OpenAI's Responses: a chat in other words (translators.responses_request)
    # vLLM's rerank, score and tokenize APIs, under /v1 and at vLLM's own paths (translators.pooling_request)
    "/v1/rerank": (OPENAI, RERANK),
    "/rerank": (OPENAI, RERANK),
    "/v1/score": (OPENAI, SCORE),
    "/score": (OPENAI, SCORE),
    "/v1/tokenize": (OPENAI, TOKENIZE),
    "/tokenize": (OPENAI, TOKENIZE),
    "/api/chat": (OLLAMA, CHAT),
    "/api/generate": (OLLAMA, COMPLETION),
    "/api/embed": (OLLAMA, EMBEDDING),
    "/api/embeddings": (OLLAMA, EMBEDDING),
    # Anthropic's Messages are chats on every engine; count_tokens is a chat that generates one token.
    "/v1/messages": (ANTHROPIC, CHAT),
    "/v1/messages/count_tokens": (ANTHROPIC, CHAT),
}

# Where each kind of request goes on each engine. Two exceptions, chosen so each client dialect keeps
# its own meaning whichever engine answers (see `backend_path` in translators.pipeline):
#   /api/generate without `raw` → vLLM /v1/chat/completions, because Ollama applies the chat template;
#   /api/embeddings (legacy) → Ollama /api/embed, the only Ollama embedding endpoint that reports counts.
ENGINE_PATHS = {
    (OLLAMA_ENGINE, CHAT): "/api/chat",
    (OLLAMA_ENGINE, COMPLETION): "/api/generate",
    (OLLAMA_ENGINE, EMBEDDING): "/api/embed",
    (VLLM_ENGINE, CHAT): "/v1/chat/completions",
    (VLLM_ENGINE, COMPLETION): "/v1/completions",
    (VLLM_ENGINE, EMBEDDING): "/v1/embeddings",
    (VLLM_ENGINE, RERANK): "/rerank",
    (VLLM_ENGINE, SCORE): "/score",
    (VLLM_ENGINE, TOKENIZE): "/tokenize",
}

# Client APIs an engine may serve itself, taken as the caller sent them (translators.pipeline.serves_natively):
# vLLM lists them in its OpenAPI document where it routes them; Ollama serves them from the release given.
NATIVE_ENDPOINTS = ("/v1/messages", "/v1/messages/count_tokens")
OLLAMA_NATIVE_SINCE = {"/v1/messages": (0, 14, 0)}

# finish_reason (canonical, OpenAI's words) → Ollama done_reason. Ollama says "stop" after tool calls.
OLLAMA_DONE_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "stop",
    "content_filter": "stop",
    "function_call": "stop",
}
# Ollama done_reason → finish_reason; anything else ("stop", "load", "unload") is "stop".
FINISH_REASONS_FROM_OLLAMA = {"length": "length"}


@dataclass(frozen=True)
class SamplingParameter:
    """A sampling or limit parameter: top level in OpenAI/vLLM bodies, under `options` for Ollama."""

    canonical: str
    openai: tuple[
        str, ...
    ]  # names read from OpenAI/vLLM bodies, preferred first; the last is written to vLLM
    ollama: str
    value_type: str  # "integer" | "number" | "stop"
    note: str = ""


SAMPLING_PARAMETERS = (
    SamplingParameter(
        "max_tokens",
        ("max_completion_tokens", "max_tokens"),
        "num_predict",
        "integer",
        "a negative num_predict (no limit) sends no max_tokens",
    ),
    SamplingParameter("temperature", ("temperature",), "temperature", "number"),
    SamplingParameter("top_p", ("top_p",), "top_p", "number"),
    SamplingParameter("top_k", ("top_k",), "top_k", "integer", "vLLM extension to OpenAI's API"),
    SamplingParameter("min_p", ("min_p",), "min_p", "number", "vLLM extension to OpenAI's API"),
    SamplingParameter("seed", ("seed",), "seed", "integer"),
    SamplingParameter("stop", ("stop",), "stop", "stop", "OpenAI takes a string or a list, Ollama a list"),
    SamplingParameter("frequency_penalty", ("frequency_penalty",), "frequency_penalty", "number"),
    SamplingParameter("presence_penalty", ("presence_penalty",), "presence_penalty", "number"),
    SamplingParameter(
        "repetition_penalty",
        ("repetition_penalty",),
        "repeat_penalty",
        "number",
        "vLLM extension to OpenAI's API",
    ),
)

_NO_VLLM_SAMPLER = "vLLM has no such sampler"

# Ollama sampler options outside SAMPLING_PARAMETERS: passed through to Ollama, dropped for vLLM because:
OLLAMA_ONLY_OPTIONS = {
    "num_keep": "vLLM keeps no token prefix on context shift",
    "repeat_last_n": "vLLM's repetition_penalty always looks at the whole sequence",
    "typical_p": _NO_VLLM_SAMPLER,
    "tfs_z": _NO_VLLM_SAMPLER,
    "mirostat": _NO_VLLM_SAMPLER,
    "mirostat_tau": _NO_VLLM_SAMPLER,
    "mirostat_eta": _NO_VLLM_SAMPLER,
    "penalize_newline": _NO_VLLM_SAMPLER,
}
UNKNOWN_OLLAMA_OPTION = "not an option vLLM knows"

_RELOADS = "a load-time setting of the Ollama runner: a value other than the loaded one reloads the model"

# Ollama options a caller may not set, for either engine: they size or place the model, so a caller
# could force reloads for everyone or take more memory than the operator planned. Options that are
# neither here, in SAMPLING_PARAMETERS nor in OLLAMA_ONLY_OPTIONS are dropped as unknown.
WITHHELD_OLLAMA_OPTIONS = {
    "num_ctx": "the context length is the operator's (Modelfile or OLLAMA_CONTEXT_LENGTH): another one "
    "reloads the model with a KV cache of that size",
    "num_batch": _RELOADS,
    "num_gpu": _RELOADS,
    "main_gpu": _RELOADS,
    "low_vram": _RELOADS,
    "f16_kv": _RELOADS,
    "logits_all": _RELOADS,
    "vocab_only": _RELOADS,
    "use_mmap": _RELOADS,
    "use_mlock": _RELOADS,
    "embedding_only": _RELOADS,
    "num_thread": _RELOADS,
    "numa": _RELOADS,
}
UNKNOWN_OPTION = "not an option the gateway knows"

MAPPED = "mapped"
DROPPED = "dropped"
REJECTED = "rejected"
ANSWERED = "answered by the gateway"
# Treatments of the caller policy (CALLER_FIELD_POLICY).
REPLACED = "replaced"
REFUSED = "refused (400)"
BOUNDED = "refused (400) above the bound"
CHECKED = "checked (400 if unsafe)"
FILTERED = "filtered"


@dataclass(frozen=True)
class FieldRule:
    """What a top-level field of the client's dialect becomes on the other engine."""

    field: str
    endpoints: tuple[str, ...]
    treatment: str  # MAPPED | DROPPED | REJECTED | ANSWERED
    becomes: str  # the engine's field(s), or why it is dropped or rejected


_V1_GENERATION = ("/v1/chat/completions", "/v1/completions")
_V1_CHAT = ("/v1/chat/completions",)
_V1_COMPLETION = ("/v1/completions",)
_V1_EMBEDDING = ("/v1/embeddings",)
_V1_ALL = _V1_GENERATION + _V1_EMBEDDING
_NO_OLLAMA_FIELD = "Ollama has no equivalent"

OPENAI_FIELDS_FOR_OLLAMA = (
    FieldRule("model", _V1_ALL, MAPPED, "`model`"),
    FieldRule(
        "messages",
        _V1_CHAT,
        MAPPED,
        "`messages`: text parts joined, `image_url` data → `images` (raw base64), tool-call arguments → "
        "objects, `tool_call_id` → `tool_name`, `developer` → `system`, `reasoning_content` → `thinking`",
    ),
    FieldRule(
        "prompt",
        _V1_COMPLETION,
        MAPPED,
        "`prompt` with `raw: true` (one string; batches and token ids are rejected)",
    ),
    FieldRule("suffix", _V1_COMPLETION, MAPPED, "`suffix`"),
    FieldRule("stream", _V1_GENERATION, MAPPED, "`stream` (always sent explicitly)"),
    FieldRule(
        "stream_options",
        _V1_GENERATION,
        ANSWERED,
        "`include_usage`: a usage chunk from Ollama's final counts",
    ),
    FieldRule(
        "response_format",
        _V1_GENERATION,
        MAPPED,
        '`format`: `"json"` for json_object, the schema for json_schema',
    ),
    FieldRule("tools", _V1_CHAT, MAPPED, "`tools`"),
    FieldRule(
        "tool_choice",
        _V1_CHAT,
        MAPPED,
        '`"none"` sends no tools; `"auto"` is Ollama\'s behaviour; `"required"` and named tools are dropped '
        "(Ollama cannot force a call)",
    ),
    FieldRule("reasoning_effort", _V1_CHAT, MAPPED, "`think` with that level"),
    FieldRule("chat_template_kwargs", _V1_CHAT, MAPPED, "`enable_thinking` → `think`; other keys dropped"),
    FieldRule("n", _V1_GENERATION, REJECTED, "unless 1: Ollama returns one choice"),
    FieldRule("input", _V1_EMBEDDING, MAPPED, "`input` (strings; token ids are rejected)"),
    FieldRule(
        "encoding_format",
        _V1_EMBEDDING,
        ANSWERED,
        "`base64` is little-endian float32, encoded by the gateway",
    ),
    FieldRule("dimensions", _V1_EMBEDDING, MAPPED, "`dimensions`"),
    FieldRule("logprobs", _V1_GENERATION, DROPPED, "log-probabilities are not translated"),
    FieldRule("top_logprobs", _V1_GENERATION, DROPPED, "log-probabilities are not translated"),
    FieldRule("logit_bias", _V1_GENERATION, DROPPED, _NO_OLLAMA_FIELD),
    FieldRule("echo", _V1_COMPLETION, DROPPED, _NO_OLLAMA_FIELD),
    FieldRule("best_of", _V1_COMPLETION, DROPPED, _NO_OLLAMA_FIELD),
    FieldRule("parallel_tool_calls", _V1_CHAT, DROPPED, "Ollama decides by itself"),
    FieldRule("user", _V1_ALL, DROPPED, "the gateway knows the user from the API key"),
    FieldRule("service_tier", _V1_GENERATION, DROPPED, _NO_OLLAMA_FIELD),
    FieldRule("store", _V1_CHAT, DROPPED, "the gateway's audit log is the store"),
    FieldRule("metadata", _V1_CHAT, DROPPED, _NO_OLLAMA_FIELD),
    FieldRule("modalities", _V1_CHAT, DROPPED, "Ollama answers text only"),
    FieldRule("audio", _V1_CHAT, DROPPED, "Ollama answers text only"),
    FieldRule("prediction", _V1_CHAT, DROPPED, _NO_OLLAMA_FIELD),
    FieldRule("web_search_options", _V1_CHAT, DROPPED, _NO_OLLAMA_FIELD),
)

_API_CHAT = ("/api/chat",)
_API_GENERATE = ("/api/generate",)
_API_GENERATION = _API_CHAT + _API_GENERATE
_API_EMBED = ("/api/embed",)
_API_LEGACY_EMBEDDINGS = ("/api/embeddings",)
_API_EMBEDDING = _API_EMBED + _API_LEGACY_EMBEDDINGS
_API_ALL = _API_GENERATION + _API_EMBEDDING

OLLAMA_FIELDS_FOR_VLLM = (
    FieldRule("model", _API_ALL, MAPPED, "`model`"),
    FieldRule(
        "messages",
        _API_CHAT,
        MAPPED,
        "`messages`: `images` → `image_url` data-URL parts, tool calls get stable ids and JSON-text arguments, "
        "`tool_name` → `tool_call_id` of the matching call; `thinking` in history is dropped",
    ),
    FieldRule(
        "prompt",
        _API_GENERATE,
        MAPPED,
        "a user message on /v1/chat/completions (the chat template applies, as in Ollama); "
        "with `raw`, `prompt` on /v1/completions",
    ),
    FieldRule("system", _API_GENERATE, MAPPED, "a system message"),
    FieldRule(
        "images", _API_GENERATE, MAPPED, "`image_url` data-URL parts of the user message (not with `raw`)"
    ),
    FieldRule("raw", _API_GENERATE, MAPPED, "`true` routes to /v1/completions with the prompt as written"),
    FieldRule("suffix", _API_GENERATE, DROPPED, "vLLM rejects `suffix`"),
    FieldRule(
        "template", _API_GENERATE, DROPPED, "a Go template; vLLM renders the model's Jinja chat template"
    ),
    FieldRule("context", _API_GENERATE, DROPPED, "Ollama's deprecated token context means nothing to vLLM"),
    FieldRule(
        "format",
        _API_GENERATION,
        MAPPED,
        '`response_format`: json_object for `"json"`, json_schema for a schema',
    ),
    FieldRule("options", _API_GENERATION, MAPPED, "top-level sampling fields (table below)"),
    FieldRule(
        "stream", _API_GENERATION, MAPPED, "`stream`, plus `stream_options.include_usage` so counts arrive"
    ),
    FieldRule(
        "think",
        _API_GENERATION,
        MAPPED,
        "`chat_template_kwargs.enable_thinking`; a level (low/medium/high) also sets `reasoning_effort`",
    ),
    FieldRule("tools", _API_CHAT, MAPPED, "`tools`"),
    FieldRule("logprobs", _API_GENERATION, DROPPED, "log-probabilities are not translated"),
    FieldRule("top_logprobs", _API_GENERATION, DROPPED, "log-probabilities are not translated"),
    FieldRule("input", _API_EMBED, MAPPED, "`input` (floats requested)"),
    FieldRule(
        "prompt", _API_LEGACY_EMBEDDINGS, MAPPED, "`input` with one string; the answer is `{embedding}`"
    ),
    FieldRule("truncate", _API_EMBED, DROPPED, "vLLM has no truncate switch: over-long input fails"),
    FieldRule("dimensions", _API_EMBED, MAPPED, "`dimensions`"),
    FieldRule("options", _API_EMBEDDING, DROPPED, "embedding models take no sampling options"),
)


# Most choices one request may ask for (`n`, `best_of`): each is a whole generation on the engine.
MAX_CHOICES = 8
# Content parts of OpenAI chat messages the gateway reads; any other type is refused (vLLM would
# fetch `video_url`, `audio_url` and `file` parts itself, past the gateway's image fetcher).
ACCEPTED_CONTENT_PARTS = ("text", "image_url")

_V1_AND_API = _V1_ALL + _API_ALL

# What a caller may set, whichever engine answers (same-dialect pass-through included): nothing that
# steers engine-side fetching, request ids, model residency or resource size. Checked when the
# request arrives (refusals) and applied to the body every engine request is built from (the rest).
CALLER_FIELD_POLICY = (
    FieldRule(
        "request_id",
        _V1_ALL,
        REPLACED,
        "by the gateway's request id, which names the request in the audit log, the engine and cancellation",
    ),
    FieldRule(
        "keep_alive",
        _V1_AND_API,
        DROPPED,
        "model residency is the operator's (OLLAMA_KEEP_ALIVE): a caller could pin a model in memory "
        "or unload it under everyone else",
    ),
    FieldRule(
        "options",
        _API_ALL,
        FILTERED,
        "sampling options pass; options that reload or resize the model, and unknown ones, are dropped "
        "(table below)",
    ),
    FieldRule("priority", _V1_ALL, DROPPED, "vLLM's scheduling priority: the gateway's fair queue decides"),
    FieldRule(
        "logits_processors", _V1_GENERATION, DROPPED, "vLLM loads logits processors by qualified name: code"
    ),
    FieldRule("vllm_xargs", _V1_ALL, DROPPED, "free-form arguments for vLLM plugins"),
    FieldRule("kv_transfer_params", _V1_GENERATION, DROPPED, "vLLM's disaggregated-serving internals"),
    FieldRule(
        "mm_processor_kwargs",
        _V1_CHAT + _V1_EMBEDDING,
        DROPPED,
        "sets how large vLLM makes images and videos",
    ),
    FieldRule(
        "chat_template", _V1_CHAT, DROPPED, "a Jinja template for the engine to render; the model's applies"
    ),
    FieldRule("prompt_embeds", _V1_COMPLETION, REFUSED, "tensors vLLM deserializes; send text or token ids"),
    FieldRule(
        "messages",
        _V1_EMBEDDING,
        REFUSED,
        "chat-style embedding input may carry media vLLM fetches; send `input`",
    ),
    FieldRule("n", _V1_GENERATION, BOUNDED, f"at most {MAX_CHOICES} choices: each is a whole generation"),
    FieldRule(
        "best_of", _V1_COMPLETION, BOUNDED, f"at most {MAX_CHOICES}: each candidate is a whole generation"
    ),
    FieldRule(
        "messages[].content[]",
        _V1_CHAT,
        CHECKED,
        f"parts of type {', '.join(ACCEPTED_CONTENT_PARTS)} pass (images are fetched by the gateway); any other "
        "type is refused naming it",
    ),
    FieldRule(
        "tools[].function.parameters",
        _V1_CHAT + _API_CHAT,
        CHECKED,
        "a JSON schema the engine may compile: `$ref` only within it (`#...`), bounded size",
    ),
    FieldRule("guided_json", _V1_GENERATION, CHECKED, "as tool parameters (a JSON object or JSON text)"),
    FieldRule("structured_outputs", _V1_GENERATION, CHECKED, "`json`: as tool parameters"),
    FieldRule(
        "response_format",
        _V1_GENERATION,
        CHECKED,
        "a json_schema is validated as structured output (below); vLLM's structural_tag "
        "`structures[].schema`: as tool parameters",
    ),
)

OPENAI_SAMPLING_FIELDS = frozenset(name for parameter in SAMPLING_PARAMETERS for name in parameter.openai)


def dropped_field_notes(
    body: dict, rules: tuple[FieldRule, ...], endpoint: str, engine: str, also_known: frozenset = frozenset()
) -> list[str]:
    """Notes for the fields the client sent that `rules` drop on the way to `engine`, and for unknown ones."""
    known = {rule.field for rule in rules if endpoint in rule.endpoints} | also_known
    notes = [
        f"{rule.field}: dropped for {engine} ({rule.becomes})"
        for rule in rules
        if endpoint in rule.endpoints and rule.treatment == DROPPED and body.get(rule.field) is not None
    ]
    notes.extend(
        f"{field}: dropped for {engine} (unknown field)"
        for field, value in body.items()
        if field not in known and value is not None
    )
    return notes
