"""What a simulated model answers and how many tokens it counts: pure, deterministic, importable by tests.

Both simulated engines answer from here, so a test (or a gateway test that translates between dialects)
computes the exact text, pieces and counts it should see without running a node.

Tokens, the documented contract:
- Text counts one token per whitespace-separated word (`count_text_tokens`).
- A chat prompt counts, per message, its words + `MESSAGE_OVERHEAD_TOKENS` + `IMAGE_TOKENS` per image,
  plus `TOKENS_PER_TOOL` per tool offered. Tool calls inside history messages are not counted.
  Ollama's `/api/generate` counts as a chat of an optional system message and one user message holding
  the prompt and its images; with `raw: true` only the prompt's words count.
- A completion prompt (`/v1/completions`) counts its words; a token-id prompt counts one per id.
- Generated tokens are the pieces a stream carries: each reply word with its leading space, each
  whitespace-led piece of JSON output, each reasoning word; a tool call counts 1 for its name plus one per
  piece of its arguments' JSON. A piece cut by a stop string still counts.
- Embedding inputs count their words.

Replies depend on the model name (an Ollama `:latest` tag dropped, so `llama3.2` and `llama3.2:latest`
agree) and the prompt text: the last message's text for a chat, the prompt otherwise. Sampling options
(temperature, seed, top_k ...) are accepted by the engines and change nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from sim.schema_instances import Draws, instance_for_schema

CONTEXT_LENGTH = 8192
EMBEDDING_DIMENSIONS = 384
MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKENS = 16
TOKENS_PER_TOOL = 16

# fmt: off
_PROSE = (
    "the", "sky", "light", "answer", "because", "river", "signal", "quiet", "model", "blue", "stream",
    "gateway", "token", "morning", "careful", "simple", "reason", "bright", "ocean", "window", "garden", "north",
    "steady", "little", "question", "clear", "warm", "field", "echo", "paper", "stone", "bridge",
)
# fmt: on
_TOKEN_PIECE = re.compile(r"\s*\S+")


@dataclass(frozen=True)
class Turn:
    """One chat message as the token count and the reply see it, whatever the dialect."""

    role: str
    text: str
    images: int = 0


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments)

    @property
    def argument_pieces(self) -> list[str]:
        return split_tokens(self.arguments_json)

    @property
    def tokens(self) -> int:
        return 1 + len(self.argument_pieces)


@dataclass(frozen=True)
class Completion:
    """Everything one generation emits, in stream order: reasoning, then content or a tool call."""

    reasoning_pieces: tuple[str, ...]
    content_pieces: tuple[str, ...]
    tool_call: ToolCall | None
    finish_reason: str  # "stop" or "length"; engines map a tool call to their own reason

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_pieces)

    @property
    def content(self) -> str:
        return "".join(self.content_pieces)

    @property
    def completion_tokens(self) -> int:
        tool_tokens = self.tool_call.tokens if self.tool_call else 0
        return len(self.reasoning_pieces) + len(self.content_pieces) + tool_tokens


def split_tokens(text: str) -> list[str]:
    """The pieces a stream carries: each run of non-space with the whitespace before it."""
    pieces = _TOKEN_PIECE.findall(text)
    trailing = text[len("".join(pieces)) :]
    if trailing and pieces:
        pieces[-1] += trailing
    return pieces


def count_text_tokens(text: str) -> int:
    return len(text.split())


def token_ids(text: str, vocabulary: int = 151_000) -> list[int]:
    """The ids a tokenizer would give `text`: one per whitespace-separated word, the same every time."""
    return [int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") % vocabulary for word in text.split()]


def similarity(model: str, first: str, second: str) -> float:
    """The cosine of two texts' embeddings: what a pooling model scores a pair (vLLM's score for embed models)."""
    return sum(a * b for a, b in zip(embedding_for(model, first), embedding_for(model, second)))


def count_chat_prompt_tokens(turns: Iterable[Turn], tools: int = 0) -> int:
    words = sum(count_text_tokens(t.text) + MESSAGE_OVERHEAD_TOKENS + IMAGE_TOKENS * t.images for t in turns)
    return words + TOKENS_PER_TOOL * tools


def turns_from_openai(messages: Sequence[dict]) -> list[Turn]:
    """OpenAI chat messages: content is a string, null, or parts (text joined by newlines, images counted)."""
    turns = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = [part.get("text", "") for part in content if part.get("type") == "text"]
            images = sum(1 for part in content if part.get("type") == "image_url")
            turns.append(Turn(message.get("role", "user"), "\n".join(texts), images))
        else:
            turns.append(Turn(message.get("role", "user"), content or ""))
    return turns


def turns_from_ollama(messages: Sequence[dict]) -> list[Turn]:
    """Ollama chat messages: text in `content`, raw base64 images in `images`."""
    return [Turn(m.get("role", "user"), m.get("content") or "", len(m.get("images") or [])) for m in messages]


def prompt_text_of(turns: Sequence[Turn]) -> str:
    """The text a chat reply is derived from: the last message's."""
    return turns[-1].text if turns else ""


def model_seed(model: str) -> str:
    return model.removesuffix(":latest")


def reply_pieces(model: str, prompt_text: str, count: int | None = None) -> list[str]:
    """The natural reply (two to four sentences), or exactly `count` pieces of the same word stream."""
    sentences = _sentences(Draws("reply", model_seed(model), prompt_text))
    if count is None:
        total = Draws("length", model_seed(model), prompt_text).between(2, 4)
        words = [word for _, sentence in zip(range(total), sentences) for word in sentence]
    else:
        words = [word for sentence in _until(sentences, count) for word in sentence][:count]
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def reply_text(model: str, prompt_text: str, max_tokens: int | None = None) -> str:
    """The plain-text answer, cut at `max_tokens` pieces when given."""
    return "".join(reply_pieces(model, prompt_text)[:max_tokens])


def thinking_text(model: str, prompt_text: str) -> str:
    """The reasoning a thinking request streams before its answer."""
    sentences = _sentences(Draws("thinking", model_seed(model), prompt_text))
    count = Draws("thinking-length", model_seed(model), prompt_text).between(1, 2)
    return " ".join(" ".join(sentence) for _, sentence in zip(range(count), sentences))


def json_text(model: str, prompt_text: str, schema: dict | None = None) -> str:
    """JSON mode answer: an instance of `schema`, or `{"response": <reply>}` for schema-less JSON mode."""
    if schema is None:
        return json.dumps({"response": reply_text(model, prompt_text)})
    return json.dumps(instance_for_schema(schema, Draws("json", model_seed(model), prompt_text)))


def tool_arguments(model: str, prompt_text: str, function: dict) -> dict:
    """Arguments for a call of `function` (an OpenAI/Ollama function definition), valid for its parameters."""
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    draws = Draws("tool", model_seed(model), prompt_text, function.get("name", ""))
    arguments = instance_for_schema(parameters, draws)
    return arguments if isinstance(arguments, dict) else {}


def complete(
    model: str,
    prompt_text: str,
    *,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    output_format: str | dict | None = None,
    think: bool = False,
    tool: dict | None = None,
    ignore_eos: bool = False,
) -> Completion:
    """One generation.

    `output_format` is None (prose), "json" (JSON mode) or a JSON schema. `tool` is the function
    definition to call instead of answering (its call ignores `max_tokens`). `ignore_eos` keeps generating
    the reply's word stream until `max_tokens`, as vLLM's benchmark flag does. `stop` strings cut the
    content before their first occurrence.
    """
    budget = math.inf if max_tokens is None or max_tokens < 0 else max_tokens
    reasoning = split_tokens(thinking_text(model, prompt_text)) if think else []
    if len(reasoning) >= budget:
        return Completion(tuple(reasoning[: int(budget)]), (), None, "length")
    budget -= len(reasoning)
    if tool is not None:
        call = ToolCall(tool.get("name", ""), tool_arguments(model, prompt_text, tool))
        return Completion(tuple(reasoning), (), call, "stop")
    endless = ignore_eos and output_format is None and budget != math.inf
    if endless:
        pieces = reply_pieces(model, prompt_text, int(budget))
    elif output_format is None:
        pieces = reply_pieces(model, prompt_text)
    else:
        schema = output_format if isinstance(output_format, dict) else None
        pieces = split_tokens(json_text(model, prompt_text, schema))
    finish_reason = "length" if endless else "stop"
    if len(pieces) > budget:
        pieces, finish_reason = pieces[: int(budget)], "length"
    cut = _cut_at_stop(pieces, [s for s in stop if s])
    if cut is not None:
        pieces, finish_reason = cut, "stop"
    return Completion(tuple(reasoning), tuple(pieces), None, finish_reason)


def embedding_for(model: str, text: str, dimensions: int | None = None) -> list[float]:
    """A unit-length vector for `text`, each value exactly representable as float32 (so base64 round-trips)."""
    size = dimensions or EMBEDDING_DIMENSIONS
    draws = Draws("embedding", model_seed(model), text)
    raw = [draws.below(20001) / 10000 - 1 for _ in range(size)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return list(struct.unpack(f"<{size}f", struct.pack(f"<{size}f", *(v / norm for v in raw))))


def _sentences(draws: Draws) -> Iterator[list[str]]:
    while True:
        length = draws.between(4, 10)
        words = [draws.choice(_PROSE) for _ in range(length)]
        words[0] = words[0].capitalize()
        words[-1] += "."
        yield words


def _until(sentences: Iterator[list[str]], count: int) -> Iterator[list[str]]:
    produced = 0
    while produced < count:
        sentence = next(sentences)
        produced += len(sentence)
        yield sentence


def _cut_at_stop(pieces: list[str], stops: list[str]) -> list[str] | None:
    """The pieces generated until a stop string appeared, its text and everything after it removed.

    Pieces the cut empties stay (as "") because they were generated and count, the way vLLM withholds
    a stop string's text from a stream while still counting its tokens. None when no stop occurs.
    """
    text = ""
    for index, piece in enumerate(pieces):
        before = len(text)
        text += piece
        found = [p for s in stops if (p := text.find(s, max(0, before - len(s) + 1))) >= 0]
        if found:
            cut, offset, kept = min(found), 0, []
            for generated in pieces[: index + 1]:
                kept.append(generated[: max(0, cut - offset)])
                offset += len(generated)
            return kept
    return None
