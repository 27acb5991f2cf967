"""The canonical request and response every dialect is translated into and out of (DESIGN section 4).

Codecs read a client's body into a `CanonicalRequest` and write one out in an engine's dialect;
responses travel back as `CanonicalResponse` (whole bodies) or as stream events (`translators.events`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from translators.vision import sniff_media_type

CHAT = "chat"
COMPLETION = "completion"
EMBEDDING = "embedding"
# vLLM's own APIs, served only by vLLM nodes whose runner routes them, passed through as the caller wrote them.
RERANK = "rerank"
SCORE = "score"
TOKENIZE = "tokenize"
PASSTHROUGH_KINDS = (RERANK, SCORE, TOKENIZE)

OLLAMA_ENGINE = "ollama"
VLLM_ENGINE = "vllm"
ENGINES = (OLLAMA_ENGINE, VLLM_ENGINE)

# A llava-style vision encoder turns one image into 576 tokens; close enough to charge a prompt up front.
IMAGE_TOKEN_ESTIMATE = 576
# Roughly four characters of English text per token for the tokenizers these engines serve.
CHARS_PER_TOKEN = 4


def stable_tool_call_id(seed: str, index: int) -> str:
    """An OpenAI-looking tool-call id that is the same every time for the same seed and position.

    Ollama carries no ids; deriving them keeps retries and audit records consistent, and the hex
    tail satisfies templates (Mistral) that require alphanumeric ids.
    """
    return "call_" + hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:24]


@dataclass
class Image:
    """An image in a prompt. `data` stays None until the gateway fetches the remote `url`."""

    data: bytes | None
    media_type: str | None = None
    url: str | None = None

    @property
    def base64(self) -> str:
        if self.data is None:
            raise ValueError(f"image {self.url} has not been fetched")
        return base64.b64encode(self.data).decode("ascii")

    @property
    def data_url(self) -> str:
        return f"data:{self.media_type or 'image/png'};base64,{self.base64}"


@dataclass
class ToolCall:
    """A function call the model made. `arguments` is JSON text, as OpenAI carries it."""

    id: str
    name: str
    arguments: str = "{}"

    def arguments_object(self) -> dict:
        """The arguments as Ollama carries them: an object (`{}` when the model wrote no valid object)."""
        try:
            value = json.loads(self.arguments) if self.arguments.strip() else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass
class Message:
    role: str
    content: str = ""
    images: list[Image] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    tool_name: str | None = None
    thinking: str | None = None


@dataclass
class ResponseFormat:
    """Structured output the caller asked for: any JSON object, or JSON matching `schema`."""

    type: str  # "json_object" | "json_schema"
    schema: dict | None = None
    name: str = "response"
    strict: bool = False


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_openai(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class CanonicalRequest:
    """One inference request, whichever dialect it arrived in.

    `body` keeps the client's parsed JSON so a same-dialect backend gets everything the client sent,
    engine-specific fields included, less what the caller policy withholds (translators.caller_policy;
    `withheld` says what and why). `model` may be rewritten by the gateway (e.g. to the backend's
    tag); `requested_model` stays as the client typed it and is what translated responses report.
    """

    client_dialect: str
    client_endpoint: str
    kind: str
    model: str
    stream: bool
    body: dict
    requested_model: str = ""
    messages: list[Message] = field(default_factory=list)
    prompt: str | list | None = None
    system: str | None = None
    suffix: str | None = None
    raw_prompt: bool = False
    prompt_images: list[Image] = field(default_factory=list)
    inputs: list = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)
    engine_options: dict[str, Any] = field(default_factory=dict)
    response_format: ResponseFormat | None = None
    tools: list[dict] = field(default_factory=list)
    tool_choice: str | dict | None = None
    think: bool | str | None = None
    # Never sent: residency is the operator's, and the caller policy withholds the caller's value.
    keep_alive: str | int | float | None = None
    include_usage: bool = False
    encoding_format: str = "float"
    dimensions: int | None = None
    notes: list[str] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.requested_model = self.requested_model or self.model

    @property
    def generates(self) -> bool:
        """Whether the engine generates tokens for it (embeddings, scores and tokenizations do not)."""
        return self.kind in (CHAT, COMPLETION)

    @property
    def max_tokens(self) -> int | None:
        """The completion cap the caller set (None: up to the engine), for cost estimation."""
        value = self.sampling.get("max_tokens")
        return value if isinstance(value, int) and value >= 0 else None

    @property
    def images(self) -> list[Image]:
        """Every image in the prompt, in order (for the audit log and for fetching)."""
        found = list(self.prompt_images)
        for message in self.messages:
            found.extend(message.images)
        return found

    @property
    def estimated_prompt_tokens(self) -> int:
        """A deterministic guess at the prompt's size, for charging a request before it runs."""
        characters = 0
        tokens = IMAGE_TOKEN_ESTIMATE * len(self.images)
        for piece in self._prompt_pieces():
            if isinstance(piece, str):
                characters += len(piece)
            elif isinstance(piece, list):
                tokens += len(piece)  # token ids
            else:
                tokens += 1
        return tokens + math.ceil(characters / CHARS_PER_TOKEN)

    def _prompt_pieces(self) -> list:
        pieces: list = [self.system or "", self.suffix or ""]
        pieces.extend(self.prompt if isinstance(self.prompt, list) else [self.prompt or ""])
        for message in self.messages:
            pieces.append(message.content)
            pieces.extend(call.arguments for call in message.tool_calls)
        pieces.extend(self.inputs)
        return pieces

    def image_urls_to_fetch(self) -> list[str]:
        """http(s) image URLs whose bytes the gateway must fetch before an Ollama backend can see them."""
        urls: list[str] = []
        for image in self.images:
            if image.data is None and image.url not in urls:
                urls.append(image.url)
        return urls

    def supply_image(self, url: str, data: bytes, media_type: str | None = None) -> None:
        """Attach fetched bytes to every image that points at `url`."""
        media_type = media_type or sniff_media_type(data)
        for image in self.images:
            if image.url == url:
                image.data = data
                image.media_type = media_type


@dataclass
class CanonicalResponse:
    """A whole (non-streamed) chat or completion answer."""

    text: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None


@dataclass
class EmbeddingResult:
    vectors: list[list[float]]
    usage: Usage | None = None
    model: str | None = None
